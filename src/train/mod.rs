//! `segtune train`: a new run or `--resume`, the training loop (the optimizer steps the whole
//! model, or its head behind a frozen backbone run in onnxruntime), and per epoch the
//! evaluation, metrics and checkpoint.

mod backbone;
mod evaluate;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::optim::GradientsParams;

pub use crate::config::{
    BackboneRuntime, BnMode, DeviceKind, Freeze, OptimizerKind, TrainConfig, freeze_flags, shell_word,
};
use crate::data;
use crate::data::{Augment, Dataset, Loader, LoaderSpec};
use crate::device::training_device;
use crate::error::{Error, Result};
use crate::loss;
use crate::metrics::Scores;
use crate::model::{self, Checkpoint, ModelFn, SegModel};
use crate::rng::Rng;
pub use crate::rundir::{EpochMetrics, RunDir, load_config, load_trained};
use crate::rundir::{RunState, load_checkpoint, save_checkpoint, write_metrics};
use crate::setup::{
    bn_statistics_at_init, build_model, learning_rate, make_optimizer, open_checkpoint, parameter_counts, with_bn_mode,
};
use crate::tensors::{image_tensor, target_tensor};
use backbone::{Batches, OrtBackbone, head_inputs, onnxruntime_backbone};
use evaluate::{evaluate, evaluator};

/// Result of a run.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub history: Vec<EpochMetrics>,
    pub trainable: usize,
    pub total: usize,
    /// Whether the frozen backbone ran in onnxruntime (the decoder and head in burn).
    pub backbone_in_onnxruntime: bool,
}

/// `segtune train`: a new run in `run_dir`.
pub fn train(cfg: TrainConfig, run_dir: &Path) -> Result<TrainSummary> {
    if run_dir.exists() && !run_dir.is_dir() {
        return Err(Error::bad_file(run_dir, "expected a run directory, found a file"));
    }
    if RunDir(run_dir.to_path_buf()).config().exists() {
        return Err(Error::bad_file(
            run_dir,
            "already holds a run (config.json); use --resume to continue it or choose another --out",
        ));
    }
    run(cfg, run_dir, None)
}

/// Val scores of the model a run with `cfg` would start from (its new classifier included),
/// before any training: the "before" of a fine-tune.
pub fn evaluate_start(cfg: &TrainConfig) -> Result<Scores> {
    let mut cfg = cfg.clone();
    let (ckpt, model_classes) = open_checkpoint(&mut cfg)?;
    let val = cfg.open_split(&cfg.val_split)?;
    val.validate(cfg.classes)?;
    struct Go<'a>(&'a TrainConfig, &'a Checkpoint, usize, &'a Dataset);
    impl ModelFn for Go<'_> {
        type Output = Result<Scores>;
        fn call<M: SegModel>(self) -> Self::Output {
            let device = model::cpu_device();
            let model: M = build_model(self.0, self.1, self.2, &device)?;
            let mut logits = evaluator(&model, self.1, self.0)?;
            evaluate(&mut logits, self.3, self.0, self.1, None).map(|(s, _)| s)
        }
    }
    model::with_model(ckpt.info, Go(&cfg, &ckpt, model_classes, &val))
}

/// `segtune train --resume RUN_DIR`: continues from the newest checkpoint.
pub fn resume(run_dir: &Path) -> Result<TrainSummary> {
    let mut cfg = load_config(run_dir)?;
    cfg.stop_after = None;
    let latest = RunDir(run_dir.to_path_buf()).latest_checkpoint();
    run(cfg, run_dir, latest)
}

fn run(mut cfg: TrainConfig, run_dir: &Path, resume_from: Option<PathBuf>) -> Result<TrainSummary> {
    let (ckpt, model_classes) = open_checkpoint(&mut cfg)?;
    cfg.check(&ckpt)?;
    struct Go<'a>(&'a TrainConfig, &'a Checkpoint, usize, &'a Path, Option<PathBuf>);
    impl ModelFn for Go<'_> {
        type Output = Result<TrainSummary>;
        fn call<M: SegModel>(self) -> Self::Output {
            run_typed::<M, M>(self.0, self.1, self.2, self.3, self.4, None)
        }
    }
    impl model::SplitFn for Go<'_> {
        type Output = Result<TrainSummary>;
        fn call<M: SegModel, H: model::Trainee>(self) -> Self::Output {
            let split = self.1.info.split.expect("only split models dispatch here");
            run_typed::<M, H>(self.0, self.1, self.2, self.3, self.4, Some(split))
        }
    }
    let go = Go(&cfg, &ckpt, model_classes, run_dir, resume_from);
    if onnxruntime_backbone(&cfg, &ckpt)? {
        return model::with_split(ckpt.info, go).expect("the model has a split");
    }
    model::with_model(ckpt.info, go)
}

/// Trains `M`. The optimizer steps `H`: `M` itself, or with `split`, `M`'s head, fed by the
/// frozen backbone in onnxruntime. `H` shares `M`'s parameter ids (optimizer state and
/// checkpoints are the same either way) and is written back into `M` for evaluation and
/// checkpoints after each epoch.
fn run_typed<M: SegModel, H: model::Trainee>(
    cfg: &TrainConfig,
    ckpt: &Checkpoint,
    model_classes: usize,
    run_dir: &Path,
    resume_from: Option<PathBuf>,
    split: Option<model::Split>,
) -> Result<TrainSummary> {
    let rd = RunDir(run_dir.to_path_buf());
    let train_set = cfg.open_split(&cfg.train_split)?;
    let val_set = cfg.open_split(&cfg.val_split)?;
    let norm = ckpt.normalization;
    let device = training_device(cfg.device)?;
    device.seed(cfg.seed);
    train_set.validate(cfg.classes)?;
    val_set.validate(cfg.classes)?;

    // Everything is checked before anything is written.
    std::fs::create_dir_all(rd.checkpoints()).map_err(|e| Error::io(rd.checkpoints(), e))?;
    if resume_from.is_none() {
        let json = serde_json::to_string_pretty(cfg).expect("config serializes");
        data::write_atomic(&rd.config(), |f| std::io::Write::write_all(f, json.as_bytes()))?;
    }

    let mut model: M = build_model(cfg, ckpt, model_classes, &device)?;
    let mut optim = make_optimizer(cfg);
    let mut state = RunState { epoch: 0, step: 0, rng: Rng(cfg.seed), best_miou: f64::NEG_INFINITY, history: vec![] };
    if let Some(dir) = &resume_from {
        let (m, o, s) = load_checkpoint(dir, model, optim)?;
        model = m;
        optim = o;
        state = s;
        eprintln!("segtune: resuming {} after epoch {} (step {})", run_dir.display(), state.epoch, state.step);
    }

    let (trainable, total) = parameter_counts(&model);
    let bn_at_init = bn_statistics_at_init(&model);
    if resume_from.is_none() {
        println!(
            "model {} ({} classes{}), {} of {} parameters trainable ({} --bn {})",
            ckpt.info.name,
            cfg.classes,
            if cfg.classes != model_classes { ", new classifier" } else { "" },
            trainable,
            total,
            freeze_flags(&cfg.freeze),
            format!("{:?}", cfg.bn).to_lowercase()
        );
        if !ckpt.info.has_batchnorm() {
            println!(
                "batchnorm: none in {} (folded into its convolutions when it was exported), so --bn has no effect",
                ckpt.info.name
            );
        } else if cfg.bn == BnMode::Frozen && bn_at_init {
            eprintln!(
                "warning: the BatchNorm statistics of {} are still at their initial values (mean 0, variance 1), and --bn frozen \
                 keeps them there. Frozen BN only makes sense with trained statistics: use --bn train, or start from a \
                 pretrained checkpoint with --weights.",
                ckpt.origin()
            );
        }
    }

    let info = ckpt.info;
    let (mut backbone, trainee_params) = match &split {
        Some(split) => {
            println!("frozen backbone: onnxruntime (outputs {}); decoder and head: burn", split.boundary.join(", "));
            (Some(OrtBackbone::new(&model, info, split)?), split.params)
        }
        None => (None, info.params),
    };
    let head_reads_image = split.is_some_and(|s| s.reads_image);
    let head_split = split.is_some();
    let whole = model::transfer(&model, info.params, H::init(&device), trainee_params, true)?;
    let mut trainee: H = with_bn_mode(whole, cfg.bn);
    // What each epoch's evaluation model starts from: the trainee's tensors replace its own.
    let base = model.valid();
    drop(model);

    let steps_per_epoch = train_set.items.len() / cfg.batch; // the last partial batch is dropped
    if steps_per_epoch == 0 {
        return Err(Error::bad_file(
            &cfg.data,
            format!(
                "split {:?} has {} images, fewer than --batch {}",
                cfg.train_split,
                train_set.items.len(),
                cfg.batch
            ),
        ));
    }
    let total_steps = steps_per_epoch * cfg.epochs;
    let aug = Augment { crop: cfg.crop, scale: (cfg.scale.0, cfg.scale.1), flip: cfg.flip };
    let tty = std::io::stderr().is_terminal();

    for epoch in state.epoch + 1..=cfg.epochs {
        let started = Instant::now();
        let mut order: Vec<usize> = (0..train_set.items.len()).collect();
        Rng::derive(state.rng.0, epoch as u64, u64::MAX).shuffle(&mut order);
        let batches: Vec<Vec<usize>> = order.chunks_exact(cfg.batch).map(|c| c.to_vec()).collect();
        let loader = Loader::start(
            LoaderSpec {
                items: train_set.items.clone(),
                batches,
                classes: cfg.classes,
                norm,
                augment: Some(aug),
                resize: None,
                seed: state.rng.0,
                epoch: epoch as u64,
            },
            2,
        );
        let (mut loss_sum, mut seen, mut wait) = (0f64, 0usize, 0f64);
        let mut step_ms = Vec::with_capacity(steps_per_epoch);
        let mut lr = cfg.base_lr();
        let mut t_wait = Instant::now();
        let mut batches = Batches::start(loader, backbone.take());
        for (i, item) in batches.by_ref().enumerate() {
            let (batch, backbone_outputs) = item?;
            wait += t_wait.elapsed().as_secs_f64();
            lr = learning_rate(cfg, state.step, total_steps);
            let features = match backbone_outputs {
                Some(outputs) => head_inputs(outputs, head_reads_image, &batch, &device),
                None => vec![image_tensor(&batch, &device)],
            };
            let targets = target_tensor(&batch, &device);
            let logits = trainee.forward_features(features);
            let loss = loss::compute(&cfg.loss, logits, targets, cfg.class_weights.as_deref());
            let value = loss.clone().into_scalar::<f32>() as f64;
            if !value.is_finite() {
                let last = rd.latest_checkpoint().map_or("none yet".to_string(), |p| p.display().to_string());
                return Err(Error::CheckFailed(format!(
                    "loss is {value} at epoch {epoch}, step {} of the epoch (global step {}); stopped. The last good checkpoint is {last}. \
                     Lower --lr (now {lr:.3e}), add --grad-clip, or run `segtune doctor`.",
                    i + 1,
                    state.step + 1
                )));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &trainee);
            trainee = optim.step(lr, trainee, grads);
            step_ms.push(t_wait.elapsed().as_secs_f64() * 1e3);
            state.step += 1;
            loss_sum += value * batch.n as f64;
            seen += batch.n;
            if tty {
                let done = i + 1;
                let bar = (done * 24 / steps_per_epoch).min(24);
                eprint!(
                    "\repoch {epoch}/{} [{}{}] {done}/{steps_per_epoch} loss {:.4} lr {lr:.2e} {:.1} img/s ",
                    cfg.epochs,
                    "#".repeat(bar),
                    ".".repeat(24 - bar),
                    loss_sum / seen as f64,
                    seen as f64 / started.elapsed().as_secs_f64()
                );
            }
            t_wait = Instant::now();
        }
        backbone = batches.finish()?;
        if tty {
            eprintln!();
        }
        let train_seconds = started.elapsed().as_secs_f64();
        // `valid` first: it applies the BN running-statistic updates burn still holds pending.
        let eval_model = model::transfer(&trainee.valid(), trainee_params, base.clone(), info.params, false)?;
        // The whole model, also when the frozen backbone runs in onnxruntime: on the CPU that is
        // faster than the backbone in onnxruntime with the head in burn.
        let mut logits = evaluator(&eval_model, ckpt, cfg)?;
        let snapshot = rd.0.join("snapshots").join(format!("epoch_{epoch:03}.png"));
        let (scores, val_loss) = evaluate(&mut logits, &val_set, cfg, ckpt, Some(&snapshot))?;
        let m = EpochMetrics {
            epoch,
            train_loss: loss_sum / seen.max(1) as f64,
            val_loss,
            val_miou: scores.miou,
            val_pixel_accuracy: scores.pixel_accuracy,
            lr,
            per_class_iou: scores.per_class_iou.clone(),
            images_per_s: seen as f64 / train_seconds,
            data_wait: wait / train_seconds,
            step_ms_median: crate::metrics::median(&mut step_ms).unwrap_or(0.0),
            seconds: started.elapsed().as_secs_f64(),
        };
        println!(
            "epoch {epoch:>3}/{}  train loss {:.4}  val loss {:.4}  val mIoU {:.4}  pixel acc {:.4}  lr {:.2e}  {:.1} img/s  step {:.0} ms  data wait {:.0}%",
            cfg.epochs,
            m.train_loss,
            m.val_loss,
            m.val_miou,
            m.val_pixel_accuracy,
            m.lr,
            m.images_per_s,
            m.step_ms_median,
            m.data_wait * 100.0
        );
        state.best_miou = state.best_miou.max(m.val_miou);
        state.history.push(m);
        state.epoch = epoch;
        write_metrics(&rd.0, &state.history)?;
        save_checkpoint(&rd, &eval_model, &optim, &state)?;
        if cfg.stop_after == Some(epoch) && epoch < cfg.epochs {
            break;
        }
    }
    Ok(TrainSummary {
        run_dir: run_dir.to_path_buf(),
        history: state.history,
        trainable,
        total,
        backbone_in_onnxruntime: head_split,
    })
}
