//! segtune: fine-tune and deploy DeepLabv3+ semantic-segmentation models through ONNX.
//!
//! The commands, side by side, each on the layers below and none on another (demo runs the
//! others in order, as a user would): [`train`], [`export`], [`validate`] (also `parity`),
//! [`infer`], [`quantize`], [`inspect`], [`doctor`], [`demo`]. `main.rs` only parses and dispatches.
//!
//! The layers:
//! - [`config`]: a run's configuration, the train/doctor flags in one with their defaults;
//! - [`rundir`]: a run's directory (config.json, checkpoints, metrics, the trained model);
//! - [`setup`]: the model a run trains (freezing, a new classifier, BatchNorm, optimizer, schedule);
//! - [`model`]: the compiled-in models, parameter map, architecture matching, checkpoints, BatchNorm;
//! - [`backbone`]: which part of a graph is the backbone and where it is cut (shared with build.rs);
//! - [`onnx`]: ONNX files, tensor data, graph facts; [`graph`]: ONNX graph editing;
//!   [`final_resize`]: a graph's final Resize taken out for the mask's upsampling;
//!   [`shape_values`]: a graph's shape arithmetic evaluated for given shapes; [`qdq`]: the
//!   int8 QDQ rewrite (BatchNorm folding, activation merging, Q/DQ insertion); [`fp16`]: the
//!   float16 rewrite (fp32 inputs and outputs kept);
//! - [`runtime`]: onnxruntime (the library, sessions, the sizes a graph runs at, opened models);
//! - [`device`]: the burn device and what a GPU needs;
//! - [`data`]: dataset layouts, masks, synth, transforms, the loader; [`labels`]: label maps and
//!   class lists; [`layout`]: tensor layout and normalization; [`pipeline`]: the test-time
//!   pipeline validate and infer share, as the export records it; [`predict`]: sliding-window
//!   tiles and test-time augmentation (scales, flips); [`imaging`]: letterbox, resize,
//!   normalize; [`upsample`]: logits to a mask (bilinear upsampling fused with the argmax, a
//!   graph's final Resize folded in); [`tensors`]: tensor and array helpers; [`rng`]: the seeded RNG;
//! - [`loss`], [`metrics`], [`plots`], [`report`] (validation's HTML report), [`tensorboard`]
//!   (event files), [`inputs`] (the image files named by files, folders, globs), [`glob`], [`error`].

pub mod backbone;
pub mod config;
pub mod data;
pub mod demo;
pub mod device;
pub mod doctor;
pub mod error;
pub mod export;
pub mod final_resize;
pub mod fp16;
pub mod glob;
pub mod graph;
pub mod imaging;
pub mod infer;
pub mod inputs;
pub mod inspect;
pub mod labels;
pub mod layout;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod onnx;
pub mod pipeline;
pub mod plots;
pub mod predict;
pub mod qdq;
pub mod quantize;
pub mod report;
pub mod rng;
pub mod rundir;
pub mod runtime;
pub mod setup;
pub mod shape_values;
pub mod tensorboard;
pub mod tensors;
pub mod train;
pub mod upsample;
pub mod validate;

pub use error::{Error, Result};

/// The label that marks pixels no loss or metric counts (VOC's object boundaries and "void").
pub const IGNORE_INDEX: u8 = 255;
