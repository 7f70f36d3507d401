//! `segtune train`: a new run or `--resume`, the training loop (the optimizer steps the whole
//! model, or its head behind a frozen backbone run in onnxruntime), and per epoch the
//! evaluation, metrics and checkpoint.

mod backbone;
mod evaluate;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Device;

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
use crate::tensorboard::EventWriter;
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
    let (train_set, val_set) = (cfg.open_split(&cfg.train_split)?, cfg.open_split(&cfg.val_split)?);
    let device = training_device(cfg.device)?;
    device.seed(cfg.seed);
    train_set.validate(cfg.classes)?;
    val_set.validate(cfg.classes)?;
    let steps_per_epoch = train_set.items.len() / cfg.batch; // the last partial batch is dropped
    if steps_per_epoch == 0 {
        let n = train_set.items.len();
        let problem = format!("split {:?} has {n} images, fewer than --batch {}", cfg.train_split, cfg.batch);
        return Err(Error::bad_file(&cfg.data, problem));
    }
    // Everything is checked before anything is written.
    std::fs::create_dir_all(rd.checkpoints()).map_err(|e| Error::io(rd.checkpoints(), e))?;
    if resume_from.is_none() {
        let json = serde_json::to_string_pretty(cfg).expect("config serializes");
        data::write_atomic(&rd.config(), |f| std::io::Write::write_all(f, json.as_bytes()))?;
    }
    let (model, optim, mut state) = start::<M>(cfg, ckpt, model_classes, &device, resume_from.as_deref())?;
    let (trainable, total) = parameter_counts(&model);
    if resume_from.is_none() {
        announce(cfg, ckpt, model_classes, (trainable, total), bn_statistics_at_init(&model));
    }
    let mut run = Loop::<M, H>::new(cfg, ckpt, model, optim, split, device, steps_per_epoch)?;
    let mut board = cfg.tensorboard.then(|| EventWriter::create(&rd.0.join("tensorboard"))).transpose()?;
    for epoch in state.epoch + 1..=cfg.epochs {
        let steps = run.train_epoch(&train_set, &mut state, epoch, &rd)?;
        let (m, whole) = run.finish_epoch(&val_set, epoch, steps, &rd)?;
        state.best_miou = state.best_miou.max(m.val_miou);
        state.history.push(m);
        state.epoch = epoch;
        write_metrics(&rd.0, &state.history)?;
        if let (Some(board), Some(m)) = (board.as_mut(), state.history.last()) {
            to_tensorboard(board, m, &rd)?;
        }
        save_checkpoint(&rd, &whole, &run.optim, &state)?;
        if cfg.stop_after == Some(epoch) && epoch < cfg.epochs {
            break;
        }
    }
    let backbone_in_onnxruntime = split.is_some();
    Ok(TrainSummary {
        run_dir: run_dir.to_path_buf(),
        history: state.history,
        trainable,
        total,
        backbone_in_onnxruntime,
    })
}

/// An epoch's scalars (losses, scores, learning rate, speed, each class's IoU) and its snapshot
/// as TensorBoard events at step = epoch.
fn to_tensorboard(board: &mut EventWriter, m: &EpochMetrics, rd: &RunDir) -> Result<()> {
    let step = m.epoch as i64;
    let mut scalars = vec![
        ("train/loss", m.train_loss),
        ("val/loss", m.val_loss),
        ("val/miou", m.val_miou),
        ("val/pixel_accuracy", m.val_pixel_accuracy),
        ("train/lr", m.lr),
        ("train/images_per_s", m.images_per_s),
    ];
    let tags: Vec<String> = (0..m.per_class_iou.len()).map(|c| format!("val/iou/class_{c:02}")).collect();
    scalars.extend(tags.iter().zip(&m.per_class_iou).filter_map(|(t, v)| v.map(|v| (t.as_str(), v))));
    board.scalars(step, &scalars)?;
    let snapshot = rd.0.join("snapshots").join(format!("epoch_{:03}.png", m.epoch));
    let png = std::fs::read(&snapshot).map_err(|e| Error::io(&snapshot, e))?;
    let dims = image::image_dimensions(&snapshot).map_err(|e| Error::bad_file(&snapshot, e.to_string()))?;
    board.png(step, "snapshot (image | truth | prediction)", png, dims)
}

/// The model, optimizer and schedule position a run starts from: the config's, or those of the
/// checkpoint it resumes.
fn start<M: SegModel>(
    cfg: &TrainConfig,
    ckpt: &Checkpoint,
    model_classes: usize,
    device: &Device,
    resume_from: Option<&Path>,
) -> Result<(M, ModuleOptimizer, RunState)> {
    let model: M = build_model(cfg, ckpt, model_classes, device)?;
    let optim = make_optimizer(cfg);
    let Some(dir) = resume_from else {
        let state = RunState { epoch: 0, step: 0, rng: Rng(cfg.seed), best_miou: f64::NEG_INFINITY, history: vec![] };
        return Ok((model, optim, state));
    };
    let (model, optim, state) = load_checkpoint(dir, model, optim)?;
    let run = dir.parent().and_then(Path::parent).unwrap_or(dir);
    eprintln!("segtune: resuming {} after epoch {} (step {})", run.display(), state.epoch, state.step);
    Ok((model, optim, state))
}

/// What a new run says before its first step: the model, what trains, and BatchNorm's state.
fn announce(
    cfg: &TrainConfig,
    ckpt: &Checkpoint,
    model_classes: usize,
    (trainable, total): (usize, usize),
    bn_at_init: bool,
) {
    println!(
        "model {} ({} classes{}), {trainable} of {total} parameters trainable ({} --bn {})",
        ckpt.info.name,
        cfg.classes,
        if cfg.classes != model_classes { ", new classifier" } else { "" },
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

/// What one epoch's steps gave.
struct Steps {
    loss_sum: f64,
    seen: usize,
    /// Seconds spent waiting for the next batch (and the backbone's outputs).
    wait: f64,
    /// Milliseconds from the end of one step to the end of the next.
    step_ms: Vec<f64>,
    /// The learning rate of the last step.
    lr: f64,
    started: Instant,
    seconds: f64,
}

/// What the training loop steps: `H` (the whole model, or its head), its optimizer, the frozen
/// backbone in onnxruntime where it serves, and the whole model the trainee's tensors go back
/// into for evaluation and checkpoints.
struct Loop<'a, M, H> {
    cfg: &'a TrainConfig,
    ckpt: &'a Checkpoint,
    /// Always `Some` between steps (taken for the optimizer's step, which consumes it).
    trainee: Option<H>,
    optim: ModuleOptimizer,
    backbone: Option<OrtBackbone>,
    /// The head's parameters (or the whole model's) by ONNX name.
    trainee_params: &'static [model::ParamEntry],
    reads_image: bool,
    base: M,
    device: Device,
    steps_per_epoch: usize,
    tty: bool,
}

impl<'a, M: SegModel, H: model::Trainee> Loop<'a, M, H> {
    fn new(
        cfg: &'a TrainConfig,
        ckpt: &'a Checkpoint,
        model: M,
        optim: ModuleOptimizer,
        split: Option<model::Split>,
        device: Device,
        steps_per_epoch: usize,
    ) -> Result<Self> {
        let info = ckpt.info;
        let (backbone, trainee_params) = match &split {
            Some(split) => {
                println!(
                    "frozen backbone: onnxruntime (outputs {}); decoder and head: burn",
                    split.boundary.join(", ")
                );
                (Some(OrtBackbone::new(&model, info, split)?), split.params)
            }
            None => (None, info.params),
        };
        let whole = model::transfer(&model, info.params, H::init(&device), trainee_params, true)?;
        Ok(Loop {
            cfg,
            ckpt,
            trainee: Some(with_bn_mode(whole, cfg.bn)),
            optim,
            backbone,
            trainee_params,
            reads_image: split.is_some_and(|s| s.reads_image),
            // What each epoch's evaluation model starts from: the trainee's tensors replace its own.
            base: model.valid(),
            device,
            steps_per_epoch,
            tty: std::io::stderr().is_terminal(),
        })
    }

    /// One pass over the training split, shuffled and augmented by the run's seed and the epoch.
    fn train_epoch(&mut self, train_set: &Dataset, state: &mut RunState, epoch: usize, rd: &RunDir) -> Result<Steps> {
        let cfg = self.cfg;
        let started = Instant::now();
        let mut order: Vec<usize> = (0..train_set.items.len()).collect();
        Rng::derive(state.rng.0, epoch as u64, u64::MAX).shuffle(&mut order);
        let spec = LoaderSpec {
            items: train_set.items.clone(),
            batches: order.chunks_exact(cfg.batch).map(|c| c.to_vec()).collect(),
            classes: cfg.classes,
            norm: self.ckpt.normalization,
            augment: Some(Augment { crop: cfg.crop, scale: (cfg.scale.0, cfg.scale.1), flip: cfg.flip }),
            resize: None,
            seed: state.rng.0,
            epoch: epoch as u64,
        };
        let total_steps = self.steps_per_epoch * cfg.epochs;
        let mut steps =
            Steps { loss_sum: 0.0, seen: 0, wait: 0.0, step_ms: vec![], lr: cfg.base_lr(), started, seconds: 0.0 };
        let mut t_wait = Instant::now();
        let mut batches = Batches::start(Loader::start(spec, 2), self.backbone.take());
        for (i, item) in batches.by_ref().enumerate() {
            let (batch, backbone_outputs) = item?;
            steps.wait += t_wait.elapsed().as_secs_f64();
            steps.lr = learning_rate(cfg, state.step, total_steps);
            let value = self.step(&batch, backbone_outputs, steps.lr).map_err(|value| {
                let last = rd.latest_checkpoint().map_or("none yet".to_string(), |p| p.display().to_string());
                Error::CheckFailed(format!(
                    "loss is {value} at epoch {epoch}, step {} of the epoch (global step {}); stopped. The last good \
                     checkpoint is {last}. Lower --lr (now {:.3e}), add --grad-clip, or run `segtune doctor`.",
                    i + 1,
                    state.step + 1,
                    steps.lr
                ))
            })?;
            steps.step_ms.push(t_wait.elapsed().as_secs_f64() * 1e3);
            state.step += 1;
            steps.loss_sum += value * batch.n as f64;
            steps.seen += batch.n;
            self.progress(epoch, i + 1, &steps);
            t_wait = Instant::now();
        }
        self.backbone = batches.finish()?;
        if self.tty {
            eprintln!();
        }
        steps.seconds = started.elapsed().as_secs_f64();
        Ok(steps)
    }

    /// One optimizer step on `batch`; its loss, or the loss when it is not finite.
    fn step(
        &mut self,
        batch: &data::Batch,
        outputs: Option<backbone::BackboneOutputs>,
        lr: f64,
    ) -> std::result::Result<f64, f64> {
        let features = match outputs {
            Some(outputs) => head_inputs(outputs, self.reads_image, batch, &self.device),
            None => vec![image_tensor(batch, &self.device)],
        };
        let targets = target_tensor(batch, &self.device);
        let trainee = self.trainee.take().expect("the trainee is back after every step");
        let logits = trainee.forward_features(features);
        let loss = loss::compute(&self.cfg.loss, logits, targets, self.cfg.class_weights.as_deref());
        let value = loss.clone().into_scalar::<f32>() as f64;
        if !value.is_finite() {
            self.trainee = Some(trainee);
            return Err(value);
        }
        let grads = GradientsParams::from_grads(loss.backward(), &trainee);
        self.trainee = Some(self.optim.step(lr, trainee, grads));
        Ok(value)
    }

    /// The progress bar, on a terminal.
    fn progress(&self, epoch: usize, done: usize, steps: &Steps) {
        if !self.tty {
            return;
        }
        let bar = (done * 24 / self.steps_per_epoch).min(24);
        eprint!(
            "\repoch {epoch}/{} [{}{}] {done}/{} loss {:.4} lr {:.2e} {:.1} img/s ",
            self.cfg.epochs,
            "#".repeat(bar),
            ".".repeat(24 - bar),
            self.steps_per_epoch,
            steps.loss_sum / steps.seen.max(1) as f64,
            steps.lr,
            steps.seen as f64 / steps.started.elapsed().as_secs_f64()
        );
    }

    /// The whole model with the trainee's tensors (`valid` first: it applies the BN
    /// running-statistic updates burn still holds pending).
    fn eval_model(&self) -> Result<M> {
        let trainee = self.trainee.as_ref().expect("the trainee is back after every step");
        model::transfer(&trainee.valid(), self.trainee_params, self.base.clone(), self.ckpt.info.params, false)
    }

    /// The epoch's evaluation and its metrics, printed, with the whole model it evaluated (what
    /// the checkpoint keeps). The whole model is evaluated, also when the frozen backbone runs in
    /// onnxruntime: on the CPU that is faster than the backbone in onnxruntime with the head in
    /// burn.
    fn finish_epoch(&self, val_set: &Dataset, epoch: usize, steps: Steps, rd: &RunDir) -> Result<(EpochMetrics, M)> {
        let eval_model = self.eval_model()?;
        let mut logits = evaluator(&eval_model, self.ckpt, self.cfg)?;
        let snapshot = rd.0.join("snapshots").join(format!("epoch_{epoch:03}.png"));
        let (scores, val_loss) = evaluate(&mut logits, val_set, self.cfg, self.ckpt, Some(&snapshot))?;
        let mut step_ms = steps.step_ms;
        let m = EpochMetrics {
            epoch,
            train_loss: steps.loss_sum / steps.seen.max(1) as f64,
            val_loss,
            val_miou: scores.miou,
            val_pixel_accuracy: scores.pixel_accuracy,
            lr: steps.lr,
            per_class_iou: scores.per_class_iou.clone(),
            images_per_s: steps.seen as f64 / steps.seconds,
            data_wait: steps.wait / steps.seconds,
            step_ms_median: crate::metrics::median(&mut step_ms).unwrap_or(0.0),
            seconds: steps.started.elapsed().as_secs_f64(),
        };
        println!(
            "epoch {epoch:>3}/{}  train loss {:.4}  val loss {:.4}  val mIoU {:.4}  pixel acc {:.4}  lr {:.2e}  {:.1} img/s  \
             step {:.0} ms  data wait {:.0}%",
            self.cfg.epochs,
            m.train_loss,
            m.val_loss,
            m.val_miou,
            m.val_pixel_accuracy,
            m.lr,
            m.images_per_s,
            m.step_ms_median,
            m.data_wait * 100.0
        );
        drop(logits);
        Ok((m, eval_model))
    }
}
