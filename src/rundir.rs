//! A run's directory: `config.json`, atomic checkpoints (model, optimizer, state) with the newest
//! two kept, the per-epoch metrics (`metrics.json`, `metrics.csv`, `curves.png`), and the
//! trained model a run's newest checkpoint holds.

use std::path::{Path, PathBuf};

use burn::optim::ModuleOptimizer;
use burn::store::ModuleSnapshot;
use burn::store::burn_pack::{Reader, Writer};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::data;
use crate::error::{Error, Result};
use crate::model::{Checkpoint, SegModel};
use crate::rng::Rng;
use crate::setup::{build_model, make_optimizer};

/// One epoch's results, as written to `metrics.json` / `metrics.csv`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_miou: f64,
    pub val_pixel_accuracy: f64,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    pub per_class_iou: Vec<Option<f64>>,
    /// Training images per second (data loading included).
    pub images_per_s: f64,
    /// Fraction of the epoch's training time spent waiting for the next batch (the loader, and a
    /// frozen backbone running ahead in onnxruntime).
    pub data_wait: f64,
    /// Median wall time per optimizer step in milliseconds, from the end of one step to the end of
    /// the next: waiting for the batch (and a frozen backbone's outputs), forward, loss, backward
    /// and update (what `bench/train_vs_torch.sh` compares with PyTorch's median step).
    #[serde(default)]
    pub step_ms_median: f64,
    pub seconds: f64,
}

/// State saved with each checkpoint besides the tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunState {
    /// Epochs completed.
    pub(crate) epoch: usize,
    /// Optimizer steps taken (the schedule position).
    pub(crate) step: usize,
    /// The data RNG: shuffles and augmentation derive from (seed, epoch, index).
    pub(crate) rng: Rng,
    pub(crate) best_miou: f64,
    pub(crate) history: Vec<EpochMetrics>,
}

/// Where a run keeps its files.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn config(&self) -> PathBuf {
        self.0.join("config.json")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.0.join("checkpoints")
    }
    /// The directory of the newest complete checkpoint, if any.
    pub fn latest_checkpoint(&self) -> Option<PathBuf> {
        let name = std::fs::read_to_string(self.checkpoints().join("latest")).ok()?;
        let dir = self.checkpoints().join(name.trim());
        dir.join("state.json").is_file().then_some(dir)
    }
}

/// A run's `config.json`.
pub fn load_config(run_dir: &Path) -> Result<TrainConfig> {
    let path = RunDir(run_dir.to_path_buf()).config();
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::bad_file(run_dir, "expected a segtune run directory (config.json), found none")
        }
        _ => Error::io(&path, e),
    })?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(&path, format!("expected a segtune run config: {e}")))
}

/// The model of a run as its newest checkpoint holds it (weights and BN statistics), on
/// `device`, with the run's BN mode and freezing applied.
pub fn load_trained<M: SegModel>(run_dir: &Path, device: &Device) -> Result<M> {
    let mut cfg = load_config(run_dir)?;
    let ckpt = Checkpoint::open(Some(&cfg.model), cfg.weights.as_deref())?;
    let model_classes = ckpt.classes()?;
    if cfg.classes == 0 {
        cfg.classes = model_classes;
    }
    let dir = RunDir(run_dir.to_path_buf())
        .latest_checkpoint()
        .ok_or_else(|| Error::bad_file(run_dir, "expected a run with at least one checkpoint, found none"))?;
    let model: M = build_model(&cfg, &ckpt, model_classes, device)?;
    let (model, _, _) = load_checkpoint(&dir, model, make_optimizer(&cfg))?;
    Ok(model)
}

/// `metrics.json`, `metrics.csv` and `curves.png`.
pub(crate) fn write_metrics(dir: &Path, history: &[EpochMetrics]) -> Result<()> {
    let json = serde_json::to_string_pretty(history).expect("metrics serialize");
    data::write_atomic(&dir.join("metrics.json"), |f| std::io::Write::write_all(f, json.as_bytes()))?;
    let mut csv = String::from(
        "epoch,train_loss,val_loss,val_miou,val_pixel_accuracy,lr,images_per_s,data_wait,step_ms_median,seconds\n",
    );
    for m in history {
        csv.push_str(&format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.6e},{:.3},{:.4},{:.2},{:.2}\n",
            m.epoch,
            m.train_loss,
            m.val_loss,
            m.val_miou,
            m.val_pixel_accuracy,
            m.lr,
            m.images_per_s,
            m.data_wait,
            m.step_ms_median,
            m.seconds
        ));
    }
    data::write_atomic(&dir.join("metrics.csv"), |f| std::io::Write::write_all(f, csv.as_bytes()))?;
    crate::plots::write_png(&dir.join("curves.png"), &crate::plots::plot_curves(history)?)
}

/// Writes `checkpoints/epoch_NNN/{model.bpk, optimizer.bpk, state.json}` into a temporary
/// directory, renames it into place, then points `checkpoints/latest` at it (atomically). Older
/// epoch checkpoints but the previous one are removed.
pub(crate) fn save_checkpoint<M: SegModel>(
    rd: &RunDir,
    model: &M,
    optim: &ModuleOptimizer,
    state: &RunState,
) -> Result<()> {
    let root = rd.checkpoints();
    let name = format!("epoch_{:03}", state.epoch);
    let tmp =
        tempfile::Builder::new().prefix(&format!(".{name}.")).tempdir_in(&root).map_err(|e| Error::io(&root, e))?;
    let model_bytes = Writer::new(model.collect(None, None, false)).into_bytes().map_err(|e| Error::Io {
        path: tmp.path().join("model.bpk"),
        source: std::io::Error::other(format!("{e:?}")),
    })?;
    let optim_bytes = optim.into_bytes().map_err(|e| Error::Io {
        path: tmp.path().join("optimizer.bpk"),
        source: std::io::Error::other(format!("{e:?}")),
    })?;
    let state_json = serde_json::to_string_pretty(state).expect("state serializes");
    // Crash tests pause after the first file, mid-checkpoint, to kill the process at the worst moment.
    let pause: Option<u64> = std::env::var("SEGTUNE_TEST_CHECKPOINT_PAUSE_MS").ok().and_then(|v| v.parse().ok());
    for (file, bytes) in
        [("model.bpk", &model_bytes[..]), ("optimizer.bpk", &optim_bytes[..]), ("state.json", state_json.as_bytes())]
    {
        data::write_atomic(&tmp.path().join(file), |f| std::io::Write::write_all(f, bytes))?;
        if let (Some(ms), "model.bpk") = (pause, file) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
    let dest = root.join(&name);
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(|e| Error::io(&dest, e))?;
    }
    let tmp_path = tmp.keep();
    std::fs::rename(&tmp_path, &dest).map_err(|e| Error::io(&dest, e))?;
    data::write_atomic(&root.join("latest"), |f| std::io::Write::write_all(f, name.as_bytes()))?;
    // Keep this checkpoint and the previous one.
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let old =
                n.strip_prefix("epoch_").and_then(|v| v.parse::<usize>().ok()).is_some_and(|ep| ep + 1 < state.epoch);
            let stale_tmp = n.starts_with(".epoch_");
            if old || stale_tmp {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

pub(crate) fn load_checkpoint<M: SegModel>(
    dir: &Path,
    mut model: M,
    optim: ModuleOptimizer,
) -> Result<(M, ModuleOptimizer, RunState)> {
    let state_path = dir.join("state.json");
    let state: RunState =
        std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e)).and_then(|t| {
            serde_json::from_str(&t)
                .map_err(|e| Error::bad_file(&state_path, format!("expected checkpoint state: {e}")))
        })?;
    let model_path = dir.join("model.bpk");
    let reader = Reader::from_file(&model_path)
        .map_err(|e| Error::bad_file(&model_path, format!("expected a burnpack: {e:?}")))?;
    let tensors = reader.into_tensors().map_err(|e| Error::bad_file(&model_path, format!("{e:?}")))?;
    let result = model.apply(tensors, None, None, false);
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(Error::bad_file(
            &model_path,
            format!("does not fit the model: {} errors, missing {:?}", result.errors.len(), result.missing.first()),
        ));
    }
    let optim_path = dir.join("optimizer.bpk");
    let bytes = std::fs::read(&optim_path).map_err(|e| Error::io(&optim_path, e))?;
    let optim = optim
        .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
        .map_err(|e| Error::bad_file(&optim_path, format!("expected optimizer state: {e:?}")))?;
    Ok((model, optim, state))
}
