//! The frozen backbone in onnxruntime: whether it can serve, the session over the backbone's
//! graph, and each epoch's batches taken through it on a thread of its own one batch ahead of
//! the step, with the head's inputs built from its outputs.

use std::sync::mpsc;

use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{BackboneRuntime, BnMode, DeviceKind, TrainConfig};
use crate::data::{Batch, Loader};
use crate::error::{Error, Result};
use crate::model::{self, Checkpoint, ModelInfo, SegModel};
use crate::setup::{backbone_paths, frozen_paths};
use crate::tensors::{batch_view, image_tensor};

/// Whether the frozen backbone runs in onnxruntime (see [`BackboneRuntime`]).
pub(super) fn onnxruntime_backbone(cfg: &TrainConfig, ckpt: &Checkpoint) -> Result<bool> {
    let info = ckpt.info;
    let frozen = frozen_paths(cfg, ckpt)?;
    let backbone_frozen = backbone_paths(info).is_ok_and(|b| !b.is_empty() && b.is_subset(&frozen));
    let unfit = if !backbone_frozen {
        Some("the backbone trains (it runs in onnxruntime only when --freeze freezes all of it)".to_string())
    } else if cfg.bn != BnMode::Frozen && info.has_batchnorm() {
        Some("--bn train updates the backbone's BatchNorm statistics, which onnxruntime cannot".to_string())
    } else if cfg.device != DeviceKind::Cpu {
        Some(format!("the device is {:?}; onnxruntime serves the CPU device only", cfg.device))
    } else if info.split.is_none() {
        Some(format!("build.rs found no backbone/head split in {} (see split_head in build.rs)", info.name))
    } else {
        None
    };
    match (cfg.backbone_runtime, unfit) {
        (BackboneRuntime::Burn, _) | (BackboneRuntime::Auto, Some(_)) => Ok(false),
        (BackboneRuntime::Onnxruntime, Some(why)) => {
            Err(Error::BadArgument(format!("--backbone-runtime onnxruntime: {why}")))
        }
        (BackboneRuntime::Onnxruntime, None) => crate::runtime::environment().map(|_| true),
        (BackboneRuntime::Auto, None) => match crate::runtime::environment() {
            Ok(_) => Ok(true),
            Err(e) => {
                eprintln!("segtune: the frozen backbone runs in burn ({e})");
                Ok(false)
            }
        },
    }
}

/// The frozen backbone in onnxruntime: the image batch in, the head's inputs out.
pub(super) struct OrtBackbone {
    session: crate::runtime::OrtModel,
}

/// A frozen backbone's outputs for one batch, as onnxruntime gives them: `(shape, values)` each.
pub(super) type BackboneOutputs = Vec<(Vec<usize>, Vec<f32>)>;

impl OrtBackbone {
    pub(super) fn new<M: SegModel>(model: &M, info: &ModelInfo, split: &model::Split) -> Result<Self> {
        let bytes = crate::graph::backbone_onnx(model, info, split)?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Not spinning: between batches the cores belong to burn's head and the loader.
        let session =
            crate::runtime::OrtModel::with_options(&bytes, &format!("the backbone of {}", info.name), threads, false)?;
        Ok(OrtBackbone { session })
    }

    /// The backbone's outputs for `batch`.
    fn run(&mut self, batch: &Batch) -> Result<BackboneOutputs> {
        self.session.run_outputs(batch_view(batch)?)
    }
}

/// The head's inputs: the backbone's outputs for `batch`, then its image where the head reads it
/// ([`model::Split::reads_image`]).
pub(super) fn head_inputs(
    outputs: BackboneOutputs,
    reads_image: bool,
    batch: &Batch,
    device: &Device,
) -> Vec<Tensor<4>> {
    let mut features: Vec<Tensor<4>> = outputs
        .into_iter()
        .map(|(shape, values)| {
            let dims: [usize; 4] = shape.try_into().expect("the split checks 4-D boundaries");
            Tensor::from_data(TensorData::new(values, dims), device)
        })
        .collect();
    if reads_image {
        features.push(image_tensor(batch, device));
    }
    features
}

/// One epoch's training batches. With a frozen backbone in onnxruntime, a thread of its own takes
/// each loaded batch through the backbone while the head trains on the one before (the two
/// overlap: 7–14 % more images/s on 2 cores, `bench/backbone_runtime.sh`; the outputs are the
/// same), and hands the backbone back at the end.
pub(super) enum Batches {
    /// The loader's batches as they are (the whole model trains in burn).
    Plain(Loader),
    Ahead {
        rx: mpsc::Receiver<Result<(Batch, BackboneOutputs)>>,
        thread: std::thread::JoinHandle<OrtBackbone>,
    },
}

impl Batches {
    pub(super) fn start(loader: Loader, backbone: Option<OrtBackbone>) -> Batches {
        let Some(mut backbone) = backbone else {
            return Batches::Plain(loader);
        };
        // One batch ahead: the step trains on one while the thread computes the next.
        let (tx, rx) = mpsc::sync_channel(1);
        let thread = std::thread::spawn(move || {
            for batch in loader {
                let item = batch.and_then(|b| backbone.run(&b).map(|outputs| (b, outputs)));
                let failed = item.is_err();
                if tx.send(item).is_err() || failed {
                    break;
                }
            }
            backbone
        });
        Batches::Ahead { rx, thread }
    }

    /// The backbone back, for evaluation and the next epoch.
    pub(super) fn finish(self) -> Result<Option<OrtBackbone>> {
        match self {
            Batches::Plain(_) => Ok(None),
            Batches::Ahead { rx, thread } => {
                drop(rx);
                let backbone =
                    thread.join().map_err(|_| Error::Runtime("the frozen backbone's thread panicked".into()))?;
                Ok(Some(backbone))
            }
        }
    }
}

impl Iterator for Batches {
    type Item = Result<(Batch, Option<BackboneOutputs>)>;
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Batches::Plain(loader) => loader.next().map(|b| b.map(|b| (b, None))),
            Batches::Ahead { rx, .. } => rx.recv().ok().map(|item| item.map(|(b, outputs)| (b, Some(outputs)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{self, Dataset, LoaderSpec};

    /// The backbone's thread passes a failure on as the next item, stops, and still hands the
    /// backbone back: here the Keras (NHWC) backbone is given NCHW batches, which onnxruntime refuses.
    #[test]
    fn a_failing_backbone_ends_the_batches_with_its_error() {
        use crate::model::generated::keras_deeplabv3plus_mobilenetv2::Model as Keras;
        let dir = tempfile::tempdir().unwrap();
        let options = data::SynthOptions { classes: 4, train: 4, val: 1, size: 64, seed: 3, ..Default::default() };
        data::synth(dir.path(), &options).unwrap();
        let keras = Checkpoint::open(Some("keras_deeplabv3plus_mobilenetv2"), None).unwrap();
        let model: Keras = keras.load(&model::cpu_device()).unwrap();
        let backbone = OrtBackbone::new(&model, keras.info, &keras.info.split.unwrap()).unwrap();
        let nchw = Checkpoint::open(None, None).unwrap().normalization;
        let spec = LoaderSpec {
            items: Dataset::open(dir.path(), "train").unwrap().items,
            batches: vec![vec![0, 1], vec![2, 3]],
            classes: 4,
            norm: nchw,
            augment: None,
            resize: None,
            seed: 0,
            epoch: 0,
        };
        let mut batches = Batches::start(Loader::start(spec, 2), Some(backbone));
        let err = batches.next().unwrap().expect_err("onnxruntime refuses NCHW batches").to_string();
        assert!(err.contains("running the backbone of keras_deeplabv3plus_mobilenetv2"), "{err}");
        assert!(batches.next().is_none(), "the thread stops at the first failure");
        assert!(batches.finish().unwrap().is_some(), "the backbone comes back");
    }
}
