//! `segtune export`: writes a run's fine-tuned weights and BatchNorm statistics back into the
//! original ONNX graph (prost), un-sharing tensors that `Identity` nodes shared but training set
//! apart, resizing the classifier for a new class count, adding segtune's metadata, and proving
//! the file with onnxruntime before it is written (atomically).

use std::path::{Path, PathBuf};

use burn::store::burn_pack::Reader;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::{Checkpoint, Layout};
use crate::onnx::{self};
use crate::rundir::{EpochMetrics, RunDir};
use crate::runtime::OrtModel;

/// What `segtune export` did.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub out: PathBuf,
    pub model: String,
    pub source: String,
    pub checkpoint: PathBuf,
    pub tensors_written: usize,
    /// Parameters that shared an initializer through `Identity` in the source but now differ.
    pub unshared: usize,
    pub classes: usize,
    pub best_val_miou: Option<f64>,
    pub bytes: usize,
    /// The side file holding the tensors, where the source kept them in one.
    pub external_data: Option<PathBuf>,
    /// The input sizes the export runs at.
    pub input: String,
}

impl std::fmt::Display for ExportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "exported    {} ({} bytes)", self.out.display(), self.bytes)?;
        if let Some(data) = &self.external_data {
            writeln!(f, "tensors in  {} (external data, as in the source)", data.display())?;
        }
        writeln!(f, "input       {}", self.input)?;
        writeln!(f, "from        {} into the graph of {}", self.checkpoint.display(), self.source)?;
        writeln!(f, "tensors     {} written, {} un-shared from Identity aliases", self.tensors_written, self.unshared)?;
        let best = self.best_val_miou.map_or("n/a".to_string(), |m| format!("{m:.4}"));
        writeln!(f, "classes     {} (best val mIoU {best})", self.classes)?;
        write!(f, "checked     onnxruntime loads it and its output has {} classes", self.classes)
    }
}

/// `segtune export RUN_DIR --out FILE.onnx`.
pub fn export(run_dir: &Path, out: &Path) -> Result<ExportReport> {
    let cfg = crate::rundir::load_config(run_dir)?;
    let ckpt_dir = RunDir(run_dir.to_path_buf())
        .latest_checkpoint()
        .ok_or_else(|| Error::bad_file(run_dir, "expected a run with at least one checkpoint, found none"))?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(Error::bad_file(out, format!("expected an existing directory {}, found none", parent.display())));
    }
    let mut source = Checkpoint::open(Some(&cfg.model), cfg.weights.as_deref())?;
    // The export takes the sizes the source's graph can: symbolic where it computes its shapes
    // from the input (a fixed-size export's declared size made symbolic), fixed where it is.
    let shape = crate::runtime::prepare(&mut source)?;
    let pack_path = ckpt_dir.join("model.bpk");
    let pack = Reader::from_file(&pack_path)
        .map_err(|e| Error::bad_file(&pack_path, format!("expected a burnpack: {e:?}")))?;
    let trained =
        crate::graph::tensors_by_name(pack.into_tensors().map_err(|e| Error::bad_file(&pack_path, format!("{e:?}")))?);

    let (mut proto, written, unshared) = crate::graph::weights_into_graph(&source, &trained, cfg.classes, &pack_path)?;
    let history: Vec<EpochMetrics> = std::fs::read_to_string(run_dir.join("metrics.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let best = history.iter().map(|m| m.val_miou).reduce(f64::max);
    for (k, v) in metadata(run_dir, &cfg, &source, &history)? {
        match proto.metadata_props.iter_mut().find(|p| p.key() == k) {
            Some(p) => p.value = Some(v),
            None => {
                proto.metadata_props.push(onnx::proto::StringStringEntryProto { key: Some(k.into()), value: Some(v) })
            }
        }
    }
    use prost::Message;
    verify(&proto.encode_to_vec(), out, cfg.classes, &source.normalization, shape)?;
    let (bytes, external) = write(&mut proto, out, parent, source.external_data)?;
    Ok(ExportReport {
        out: out.to_path_buf(),
        model: cfg.model.clone(),
        source: source.origin(),
        checkpoint: ckpt_dir,
        tensors_written: written,
        unshared,
        classes: cfg.classes,
        best_val_miou: best,
        bytes,
        external_data: external,
        input: shape.describe(),
    })
}

/// The export's metadata: what it is, how to feed it (normalization, layout, size multiple, the
/// test-time pipeline), its classes, and how it was trained.
fn metadata(
    run_dir: &Path,
    cfg: &crate::config::TrainConfig,
    source: &Checkpoint,
    history: &[EpochMetrics],
) -> Result<Vec<(&'static str, String)>> {
    let layout = match cfg.dataset.layout {
        crate::data::DatasetLayout::Auto => {
            crate::data::DatasetLayout::detect(&cfg.data, &cfg.train_split).unwrap_or_default()
        }
        chosen => chosen,
    };
    let names = crate::data::class_names(&cfg.data, layout, cfg.classes, cfg.dataset.class_names.as_deref())?;
    let n = &source.normalization;
    let summary = serde_json::json!({
        "run": run_dir.display().to_string(),
        "epochs": history.len(),
        "best_val_miou": history.iter().map(|m| m.val_miou).reduce(f64::max),
        "final_val_miou": history.last().map(|m| m.val_miou),
        "final_train_loss": history.last().map(|m| m.train_loss),
        "loss": cfg.loss.to_string(),
        "optimizer": cfg.optimizer,
        "lr": cfg.base_lr(),
        "batch": cfg.batch,
        "crop": cfg.crop,
        "freeze": cfg.freeze,
        "bn": cfg.bn,
        "data": cfg.data.display().to_string(),
    });
    let joined = |v: &[f32; 3]| v.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",");
    Ok(vec![
        ("segtune.version", env!("CARGO_PKG_VERSION").to_string()),
        ("segtune.model", cfg.model.clone()),
        ("segtune.classes", cfg.classes.to_string()),
        ("segtune.class_names", names.join(",")),
        ("segtune.mean", joined(&n.mean)),
        ("segtune.std", joined(&n.std)),
        ("segtune.layout", if n.layout == Layout::Nhwc { "NHWC" } else { "NCHW" }.to_string()),
        ("segtune.ignore_index", crate::IGNORE_INDEX.to_string()),
        ("segtune.label_map", cfg.dataset.label_map.to_string()),
        ("segtune.dataset_layout", format!("{layout:?}").to_lowercase()),
        ("segtune.size_multiple", n.size_multiple.to_string()),
        // The test-time pipeline train evaluated with, which validate and infer run by default.
        (crate::pipeline::RESIZE_KEY, crate::pipeline::Resize::Native.to_string()),
        ("segtune.input_rule", format!("height and width multiples of {}", n.size_multiple)),
        ("segtune.training", summary.to_string()),
        ("segtune.source", format!("fine-tuned by segtune {} from {}", env!("CARGO_PKG_VERSION"), source.origin())),
    ])
}

/// Writes the export (and, for a source that kept its tensors in a side file, its external
/// data first, so the graph never points at a missing file), each atomically. Returns the
/// graph's size and the data file.
fn write(
    proto: &mut onnx::ModelProto,
    out: &Path,
    parent: &Path,
    external_data: bool,
) -> Result<(usize, Option<std::path::PathBuf>)> {
    use prost::Message;
    let external = match external_data {
        false => None,
        true => {
            let location = format!("{}.data", out.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
            let data = crate::graph::split_external(proto, &location, 1024).map_err(|e| Error::bad_file(out, e))?;
            let path = parent.join(&location);
            crate::data::write_atomic(&path, |f| std::io::Write::write_all(f, &data))?;
            Some(path)
        }
    };
    let bytes = proto.encode_to_vec();
    crate::data::write_atomic(out, |f| std::io::Write::write_all(f, &bytes))?;
    Ok((bytes.len(), external))
}

/// Loads the bytes in onnxruntime and runs one small input: the export is not written unless
/// this works and the output has `classes` channels.
fn verify(
    bytes: &[u8],
    out: &Path,
    classes: usize,
    norm: &crate::layout::Normalization,
    shape: crate::runtime::InputShape,
) -> Result<()> {
    let mut session = OrtModel::from_bytes(bytes, &out.display().to_string(), 1)?;
    let s = shape.size.map_or(norm.size_multiple * 4, |(h, _)| h);
    let input = crate::tensors::seeded_input(shape.batch.unwrap_or(1), s, norm, 0);
    let logits = session.run_logits(input.view(), norm.layout)?;
    let channels = logits.shape()[1];
    if channels != classes || logits.iter().any(|v| !v.is_finite()) {
        return Err(Error::CheckFailed(format!(
            "{}: the exported graph gives {channels} output channels (expected {classes}) or non-finite logits; nothing was written",
            out.display()
        )));
    }
    Ok(())
}
