//! segtune: fine-tune and deploy DeepLabv3+ semantic-segmentation models through ONNX.
//!
//! Pipeline stages, one module each: [`model`] (build-time import, parameter map, checkpoints),
//! [`onnx`] (protobuf reading and inspection), [`runtime`] (onnxruntime), [`validate`] (parity
//! against onnxruntime). `main.rs` only parses the command line and dispatches here.

pub mod backbone;
pub mod config;
pub mod data;
pub mod demo;
pub mod device;
pub mod doctor;
pub mod error;
pub mod export;
pub mod glob;
pub mod graph;
pub mod imaging;
pub mod infer;
pub mod inspect;
pub mod labels;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod onnx;
pub mod runtime;
pub mod train;
pub mod validate;

pub use error::{Error, Result};

/// The label that marks pixels no loss or metric counts (VOC's object boundaries and "void").
pub const IGNORE_INDEX: u8 = 255;
