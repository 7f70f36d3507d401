//! Each epoch's evaluation (and the starting one): val loss, confusion-matrix scores and the
//! snapshot, with the model in onnxruntime on the CPU (its weights written into its graph as
//! `segtune export` writes them) or in burn on a GPU.

use std::path::Path;

use burn::store::ModuleSnapshot;
use burn::tensor::{Device, Tensor};

use crate::config::{DeviceKind, TrainConfig};
use crate::data::{Batch, Dataset, Loader, LoaderSpec};
use crate::device::training_device;
use crate::error::Result;
use crate::loss;
use crate::metrics::{ConfusionMatrix, Scores};
use crate::model::{self, Checkpoint, SegModel};
use crate::tensors::{argmax_labels, batch_view, image_tensor, target_tensor};

/// Whether evaluation runs in onnxruntime: on the CPU where onnxruntime loads (else burn, said
/// once on stderr), unless `SEGTUNE_EVAL_IN_BURN=1` (burn's forward, as before; for
/// `bench/eval_runtime.sh`).
fn evaluates_in_onnxruntime(cfg: &TrainConfig) -> bool {
    if cfg.device != DeviceKind::Cpu || std::env::var_os("SEGTUNE_EVAL_IN_BURN").is_some_and(|v| v == "1") {
        return false;
    }
    match crate::runtime::environment() {
        Ok(_) => true,
        Err(e) => {
            static TOLD: std::sync::Once = std::sync::Once::new();
            TOLD.call_once(|| eprintln!("segtune: evaluation runs in burn ({e})"));
            false
        }
    }
}

/// `model` in onnxruntime, for evaluation on the CPU (its forward is 2.3–2.8× faster than burn's,
/// `bench/forward.sh`): the checkpoint's graph with the model's weights and BN statistics written
/// in, as `segtune export` writes them.
fn onnxruntime_model<M: SegModel>(model: &M, ckpt: &Checkpoint, classes: usize) -> Result<crate::runtime::OrtModel> {
    use prost::Message;
    let tensors = crate::graph::tensors_by_name(model.collect(None, None, false));
    let origin = format!("{} with the weights being trained", ckpt.origin());
    let (proto, _, _) = crate::graph::weights_into_graph(ckpt, &tensors, classes, Path::new(&origin))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    crate::runtime::OrtModel::from_bytes(&proto.encode_to_vec(), &origin, threads)
}

/// What [`evaluate`] runs `model` with: onnxruntime on the CPU ([`evaluates_in_onnxruntime`]),
/// else burn's forward on the training device.
pub(super) fn evaluator<'m, M: SegModel>(
    model: &'m M,
    ckpt: &Checkpoint,
    cfg: &TrainConfig,
) -> Result<impl FnMut(&Batch, &Device) -> Result<Tensor<4>> + 'm> {
    let mut ort = if evaluates_in_onnxruntime(cfg) { Some(onnxruntime_model(model, ckpt, cfg.classes)?) } else { None };
    Ok(move |batch: &Batch, device: &Device| match ort.as_mut() {
        Some(ort) => onnxruntime_logits(ort, batch, device),
        None => Ok(model.logits(image_tensor(batch, device))),
    })
}

/// The logits of `ort` for a batch, as a tensor on `device`.
fn onnxruntime_logits(ort: &mut crate::runtime::OrtModel, batch: &Batch, device: &Device) -> Result<Tensor<4>> {
    let logits = ort.run_logits(batch_view(batch)?, batch.layout)?;
    Ok(crate::tensors::to_tensor(logits.view(), device))
}

/// Val loss, confusion-matrix scores, and the snapshot of the first val image. `logits` runs the
/// model (in onnxruntime on the CPU, in burn on a GPU) on a batch, on the device it is given.
/// A graph fixed at one size ([`Checkpoint::input`]) sees its val images (and masks) resized to
/// it, in batches of its fixed batch size where it has one.
pub(super) fn evaluate(
    logits: &mut dyn FnMut(&Batch, &Device) -> Result<Tensor<4>>,
    val: &Dataset,
    cfg: &TrainConfig,
    ckpt: &Checkpoint,
    snapshot: Option<&Path>,
) -> Result<(Scores, f64)> {
    let norm = &ckpt.normalization;
    let device = model::cpu_device();
    let device = match cfg.device {
        DeviceKind::Cpu => device,
        other => training_device(other)?.inner(),
    };
    let shape = ckpt.input.unwrap_or_default();
    let batches: Vec<Vec<usize>> =
        (0..val.items.len()).collect::<Vec<_>>().chunks(shape.batch.unwrap_or(cfg.batch)).map(|c| c.to_vec()).collect();
    let loader = Loader::start(
        LoaderSpec {
            items: val.items.clone(),
            batches,
            classes: cfg.classes,
            norm: *norm,
            augment: None,
            resize: shape.size,
            seed: 0,
            epoch: 0,
        },
        2,
    );
    let mut cm = ConfusionMatrix::new(cfg.classes);
    let (mut loss_sum, mut seen) = (0f64, 0usize);
    let mut first = true;
    for batch in loader {
        let batch = batch?;
        let logits = logits(&batch, &device)?;
        let targets = target_tensor(&batch, &device);
        let loss = loss::compute(&cfg.loss, logits.clone(), targets, cfg.class_weights.as_deref());
        loss_sum += loss.into_scalar::<f32>() as f64 * batch.n as f64;
        seen += batch.n;
        let pred = argmax_labels(logits);
        cm.update(&batch.masks, &pred);
        if first && let Some(path) = snapshot {
            crate::plots::write_snapshot(path, &batch, &pred, norm)?;
            first = false;
        }
    }
    Ok((cm.scores(), loss_sum / seen.max(1) as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainConfig;
    use crate::data;
    use crate::model::generated::deeplabv3plus_mobilenetv2::Model;
    use crate::setup::build_model;
    use burn::module::{Module, ModuleMapper, Param};

    /// Moves every BatchNorm running variance away from the reference graph's.
    struct ScaleVariances {
        path: Vec<String>,
    }

    impl ModuleMapper for ScaleVariances {
        crate::model::track_module_path!(path);
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if self.path.last().is_some_and(|n| n == "running_var") {
                let t = param.val().mul_scalar(1.7);
                return Param::initialized(param.id, t);
            }
            param
        }
    }

    /// Evaluation in onnxruntime (what training uses on the CPU) scores as burn's forward does:
    /// a new 4-class classifier and BN statistics unlike the reference graph's, both of which
    /// must reach the graph onnxruntime runs.
    #[test]
    fn onnxruntime_evaluation_scores_as_burn() {
        let dir = tempfile::tempdir().unwrap();
        let options = data::SynthOptions { classes: 4, train: 2, val: 6, size: 64, seed: 3, ..Default::default() };
        data::synth(dir.path(), &options).unwrap();
        let mut cfg = TrainConfig::new(dir.path().to_path_buf());
        (cfg.classes, cfg.batch) = (4, 2);
        let ckpt = Checkpoint::open(None, None).unwrap();
        let device = model::cpu_device();
        let model: Model = build_model(&cfg, &ckpt, ckpt.classes().unwrap(), &device).unwrap();
        let model = model.map(&mut ScaleVariances { path: vec![] });
        let val = Dataset::open(&cfg.data, "val").unwrap();

        let mut burn_logits = |b: &Batch, d: &Device| Ok(model.logits(image_tensor(b, d)));
        let (burn, burn_loss) = evaluate(&mut burn_logits, &val, &cfg, &ckpt, None).unwrap();
        let mut ort = onnxruntime_model(&model, &ckpt, 4).unwrap();
        let mut ort_logits = |b: &Batch, d: &Device| onnxruntime_logits(&mut ort, b, d);
        let (onnx, onnx_loss) = evaluate(&mut ort_logits, &val, &cfg, &ckpt, None).unwrap();
        assert!((burn_loss - onnx_loss).abs() <= 1e-4 * burn_loss, "val loss {burn_loss} (burn) vs {onnx_loss}");
        assert!((burn.miou - onnx.miou).abs() <= 1e-3, "mIoU {} (burn) vs {}", burn.miou, onnx.miou);
        assert!((burn.pixel_accuracy - onnx.pixel_accuracy).abs() <= 1e-3);

        // The variances matter: the unscaled model scores differently.
        let plain: Model = build_model(&cfg, &ckpt, ckpt.classes().unwrap(), &device).unwrap();
        let mut plain_logits = |b: &Batch, d: &Device| Ok(plain.logits(image_tensor(b, d)));
        let (_, plain_loss) = evaluate(&mut plain_logits, &val, &cfg, &ckpt, None).unwrap();
        assert!((plain_loss - burn_loss).abs() > 1e-3 * burn_loss, "{plain_loss} vs {burn_loss}");
    }
}
