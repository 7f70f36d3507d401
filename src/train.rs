//! Fine-tuning (`segtune train`): the run config, a new classifier for `--classes`, frozen
//! backbone (run in onnxruntime where it can be), BatchNorm mode, SGD + poly / AdamW, per-epoch
//! evaluation, atomic checkpoints and resume, and what a person sees (progress, metrics files,
//! curves, snapshots).

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use burn::module::{Flag, ModuleMapper, ModuleVisitor, Param};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::store::ModuleSnapshot;
use burn::store::burn_pack::{Reader, Writer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use crate::data::{self, Augment, Batch, Dataset, Loader, LoaderSpec, Rng};
use crate::error::{Error, Result};
use crate::loss;
use crate::metrics::{ConfusionMatrix, Scores};
use crate::model::{self, Checkpoint, ModelFn, ModelInfo, SegModel};

pub use crate::config::{
    BackboneRuntime, BnMode, DeviceKind, Freeze, OptimizerKind, TrainConfig, freeze_flags, shell_word,
};

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
struct RunState {
    /// Epochs completed.
    epoch: usize,
    /// Optimizer steps taken (the schedule position).
    step: usize,
    /// The data RNG: shuffles and augmentation derive from (seed, epoch, index).
    rng: Rng,
    best_miou: f64,
    history: Vec<EpochMetrics>,
}

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

/// The burn paths of a model's backbone parameters ([`crate::backbone`]'s rule, as `build.rs`
/// applied it to the compiled-in graph).
pub fn backbone_paths(info: &ModelInfo) -> Result<HashSet<&'static str>> {
    let why = match info.backbone {
        Ok(_) => return Ok(info.params.iter().filter(|e| e.backbone).map(|e| e.burn).collect()),
        Err(why) => why,
    };
    Err(Error::BadArgument(format!(
        "--freeze backbone: {} has no backbone segtune can find: {why}. Name the parameters to freeze with \
         --freeze 'GLOB' (initializer names; `segtune inspect FILE` lists what it found)",
        info.name
    )))
}

/// The burn paths `cfg.freeze` freezes in the model of `ckpt`: the union of its rules. A glob
/// matches the checkpoint's own initializer names (a `--weights` file keeps its wrapper's prefix,
/// `m.encoder.*`) and the names the graph's nodes read; one that matches nothing is an error.
pub fn frozen_paths(cfg: &TrainConfig, ckpt: &Checkpoint) -> Result<HashSet<&'static str>> {
    let mut frozen = HashSet::new();
    for rule in &cfg.freeze {
        match rule {
            Freeze::None => {}
            Freeze::Backbone => frozen.extend(backbone_paths(ckpt.info)?),
            Freeze::Glob(glob) => {
                let names = ckpt.param_names();
                let matched: Vec<&'static str> = names
                    .iter()
                    .filter(|(_, init, value)| {
                        crate::glob::glob_match(glob, init) || crate::glob::glob_match(glob, value)
                    })
                    .map(|(e, ..)| e.burn)
                    .collect();
                if matched.is_empty() {
                    let some: Vec<&str> =
                        names.iter().step_by(names.len().div_ceil(4).max(1)).map(|(_, i, _)| i.as_str()).collect();
                    return Err(Error::BadArgument(format!(
                        "--freeze {}: expected a glob matching initializer names of {}, found no match; its \
                         parameters are named like {}",
                        shell_word(glob),
                        ckpt.origin(),
                        some.join(", ")
                    )));
                }
                frozen.extend(matched);
            }
        }
    }
    Ok(frozen)
}

/// Applies a run's setup to a model by parameter path: freezes `frozen` parameters, gives the
/// `classifier` parameters `new_classes` outputs (Xavier-uniform weight, zero bias, as smp
/// initialises its head), and switches BatchNorm training flags off when `bn_frozen`.
struct Setup<'a> {
    path: Vec<String>,
    frozen: &'a HashSet<&'static str>,
    classifier: &'a HashSet<&'static str>,
    new_classes: Option<usize>,
    bn_frozen: bool,
    rng: Rng,
    device: &'a Device,
}

impl ModuleMapper for Setup<'_> {
    crate::model::track_module_path!(path);
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.join(".");
        let mut param = param;
        if let Some(k) = self.new_classes
            && self.classifier.contains(path.as_str())
        {
            let mut dims = param.dims();
            dims[0] = k;
            let vals: Vec<f32> = if D == 1 {
                vec![0.0; k]
            } else {
                let receptive: usize = dims[2..].iter().product();
                let (fan_in, fan_out) = ((dims[1] * receptive) as f32, (k * receptive) as f32);
                let bound = (6.0 / (fan_in + fan_out)).sqrt();
                (0..dims.iter().product::<usize>()).map(|_| self.rng.range(-bound, bound)).collect()
            };
            param = Param::initialized(param.id, Tensor::from_data(TensorData::new(vals, dims), self.device))
                .set_require_grad(true);
        }
        if self.frozen.contains(path.as_str()) { param.set_require_grad(false) } else { param }
    }
    fn map_flag(&mut self, flag: Param<Flag>) -> Param<Flag> {
        let is_bn = self.path.last().is_some_and(|n| n == "training");
        if self.bn_frozen && is_bn { flag.with_value(false) } else { flag }
    }
}

/// Counts parameters (elements) that train and in total; BN running statistics are state, not
/// parameters, and are not counted.
struct Counter {
    trainable: usize,
    total: usize,
    field: Vec<String>,
}

/// `(trainable, total)` parameter elements of a model, BN running statistics not counted.
pub(crate) fn parameter_counts<M: SegModel>(model: &M) -> (usize, usize) {
    let mut counter = Counter { trainable: 0, total: 0, field: vec![] };
    model.visit(&mut counter);
    (counter.trainable, counter.total)
}

impl ModuleVisitor for Counter {
    crate::model::track_module_path!(field);
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.field.last().is_some_and(|f| f.starts_with("running_")) {
            return;
        }
        let n = param.shape().num_elements();
        self.total += n;
        if param.is_require_grad() {
            self.trainable += n;
        }
    }
}

/// Builds the model a run trains: the checkpoint's weights, a new classifier when the class
/// count differs, the freeze and BN settings applied.
pub(crate) fn build_model<M: SegModel>(
    cfg: &TrainConfig,
    ckpt: &Checkpoint,
    model_classes: usize,
    device: &Device,
) -> Result<M> {
    let model: M = ckpt.load(device)?;
    let classifier: HashSet<&str> = ckpt.info.classifier().into_iter().collect();
    let frozen = frozen_paths(cfg, ckpt)?;
    Ok(model.map(&mut Setup {
        path: vec![],
        frozen: &frozen,
        classifier: &classifier,
        new_classes: (cfg.classes != model_classes).then_some(cfg.classes),
        bn_frozen: cfg.bn == BnMode::Frozen,
        rng: Rng::derive(cfg.seed, u64::MAX, 1),
        device,
    }))
}

pub(crate) fn make_optimizer(cfg: &TrainConfig) -> ModuleOptimizer {
    let clip = cfg.grad_clip.map(burn::grad_clipping::GradientClippingConfig::Norm);
    match cfg.optimizer {
        OptimizerKind::Sgd => SgdConfig::new()
            .with_momentum(Some(MomentumConfig { momentum: cfg.momentum, dampening: 0.0, nesterov: false }))
            .with_weight_decay((cfg.weight_decay > 0.0).then(|| WeightDecayConfig::new(cfg.weight_decay as f32)))
            .with_gradient_clipping(clip)
            .init(),
        OptimizerKind::Adamw => {
            AdamWConfig::new().with_weight_decay(cfg.weight_decay as f32).with_grad_clipping(clip).init()
        }
    }
}

/// Learning rate at optimizer step `step` (0-based) of `total`: linear warmup, then poly.
pub fn learning_rate(cfg: &TrainConfig, step: usize, total: usize) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.base_lr() * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    let progress = (step as f64 / total.max(1) as f64).min(1.0);
    cfg.base_lr() * (1.0 - progress).powf(cfg.poly_power)
}

use crate::device::training_device;

/// Where a run keeps its files.
pub struct RunDir(pub PathBuf);

impl RunDir {
    fn config(&self) -> PathBuf {
        self.0.join("config.json")
    }
    fn checkpoints(&self) -> PathBuf {
        self.0.join("checkpoints")
    }
    /// The directory of the newest complete checkpoint, if any.
    pub fn latest_checkpoint(&self) -> Option<PathBuf> {
        let name = std::fs::read_to_string(self.checkpoints().join("latest")).ok()?;
        let dir = self.checkpoints().join(name.trim());
        dir.join("state.json").is_file().then_some(dir)
    }
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

/// `segtune train --resume RUN_DIR`: continues from the newest checkpoint.
pub fn resume(run_dir: &Path) -> Result<TrainSummary> {
    let mut cfg = load_config(run_dir)?;
    cfg.stop_after = None;
    let latest = RunDir(run_dir.to_path_buf()).latest_checkpoint();
    run(cfg, run_dir, latest)
}

/// The checkpoint a run trains from, its graph made runnable in onnxruntime where onnxruntime
/// loads ([`crate::runtime::prepare`]: the sizes it runs at), and the run's class count settled
/// (the model's, unless `--classes` says otherwise). Returns the model's own class count too.
fn open_checkpoint(cfg: &mut TrainConfig) -> Result<(Checkpoint, usize)> {
    let mut ckpt = Checkpoint::open(Some(&cfg.model), cfg.weights.as_deref())?;
    let model_classes = ckpt.classes()?;
    if cfg.classes == 0 {
        cfg.classes = model_classes;
    }
    if crate::runtime::environment().is_ok() {
        crate::runtime::prepare(&mut ckpt)?;
    }
    Ok((ckpt, model_classes))
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

/// Whether the frozen backbone runs in onnxruntime (see [`BackboneRuntime`]).
fn onnxruntime_backbone(cfg: &TrainConfig, ckpt: &Checkpoint) -> Result<bool> {
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
struct OrtBackbone {
    session: crate::runtime::OrtModel,
}

/// A frozen backbone's outputs for one batch, as onnxruntime gives them: `(shape, values)` each.
type BackboneOutputs = Vec<(Vec<usize>, Vec<f32>)>;

impl OrtBackbone {
    fn new<M: SegModel>(model: &M, info: &ModelInfo, split: &model::Split) -> Result<Self> {
        let bytes = model::backbone_onnx(model, info, split)?;
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

/// A batch's images as an array in the model's layout.
fn batch_view(batch: &Batch) -> Result<ndarray::ArrayView4<'_, f32>> {
    let shape = match batch.layout {
        model::Layout::Nchw => (batch.n, 3, batch.h, batch.w),
        model::Layout::Nhwc => (batch.n, batch.h, batch.w, 3),
    };
    ndarray::ArrayView4::from_shape(shape, &batch.images)
        .map_err(|e| Error::Runtime(format!("batch of {} images: {e}", batch.n)))
}

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
    let tensors = crate::export::tensors_by_name(model.collect(None, None, false));
    let origin = format!("{} with the weights being trained", ckpt.origin());
    let (proto, _, _) = crate::export::weights_into_graph(ckpt, &tensors, classes, Path::new(&origin))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    crate::runtime::OrtModel::from_bytes(&proto.encode_to_vec(), &origin, threads)
}

/// What [`evaluate`] runs `model` with: onnxruntime on the CPU ([`evaluates_in_onnxruntime`]),
/// else burn's forward on the training device.
fn evaluator<'m, M: SegModel>(
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
    Ok(crate::validate::to_tensor(logits.view(), device))
}

/// The head's inputs: the backbone's outputs for `batch`, then its image where the head reads it
/// ([`model::Split::reads_image`]).
fn head_inputs(outputs: BackboneOutputs, reads_image: bool, batch: &Batch, device: &Device) -> Vec<Tensor<4>> {
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
enum Batches {
    /// The loader's batches as they are (the whole model trains in burn).
    Plain(Loader),
    Ahead {
        rx: mpsc::Receiver<Result<(Batch, BackboneOutputs)>>,
        thread: std::thread::JoinHandle<OrtBackbone>,
    },
}

impl Batches {
    fn start(loader: Loader, backbone: Option<OrtBackbone>) -> Batches {
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
    fn finish(self) -> Result<Option<OrtBackbone>> {
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
    let bn_flags = |m: H| {
        m.map(&mut Setup {
            path: vec![],
            frozen: &HashSet::new(),
            classifier: &HashSet::new(),
            new_classes: None,
            bn_frozen: cfg.bn == BnMode::Frozen,
            rng: Rng(0),
            device: &device,
        })
    };
    let mut trainee: H = bn_flags(model::transfer(&model, info.params, H::init(&device), trainee_params, true)?);
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

/// A batch's images (in the model's layout) and label maps as tensors.
pub(crate) fn batch_tensors(batch: &Batch, device: &Device) -> (Tensor<4>, Tensor<3, Int>) {
    (image_tensor(batch, device), target_tensor(batch, device))
}

fn image_tensor(batch: &Batch, device: &Device) -> Tensor<4> {
    let shape = match batch.layout {
        model::Layout::Nchw => [batch.n, 3, batch.h, batch.w],
        model::Layout::Nhwc => [batch.n, batch.h, batch.w, 3],
    };
    Tensor::from_data(TensorData::new(batch.images.clone(), shape), device)
}

fn target_tensor(batch: &Batch, device: &Device) -> Tensor<3, Int> {
    let masks: Vec<i64> = batch.masks.iter().map(|&v| v as i64).collect();
    Tensor::from_data(TensorData::new(masks, [batch.n, batch.h, batch.w]), device)
}

/// Whether every BN running mean is 0 and every running variance 1 (never trained).
pub(crate) fn bn_statistics_at_init<M: SegModel>(model: &M) -> bool {
    model.valid().collect(None, None, false).iter().all(|t| {
        let v = model::pack_f32(t);
        if t.name.ends_with(".running_mean") {
            v.iter().all(|&x| x == 0.0)
        } else if t.name.ends_with(".running_var") {
            v.iter().all(|&x| x == 1.0)
        } else {
            true
        }
    })
}

/// Per-pixel argmax over classes of `[N, C, H, W]` logits.
pub fn argmax_labels(logits: Tensor<4>) -> Vec<u8> {
    let [n, _, h, w] = logits.dims();
    let idx = logits.argmax(1).reshape([n * h * w]);
    idx.into_data().iter::<i64>().map(|v| v as u8).collect()
}

/// Val loss, confusion-matrix scores, and the snapshot of the first val image. `logits` runs the
/// model (in onnxruntime on the CPU, in burn on a GPU) on a batch, on the device it is given.
/// A graph fixed at one size ([`Checkpoint::input`]) sees its val images (and masks) resized to
/// it, in batches of its fixed batch size where it has one.
fn evaluate(
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
            write_snapshot(path, &batch, &pred, norm)?;
            first = false;
        }
    }
    Ok((cm.scores(), loss_sum / seen.max(1) as f64))
}

/// Image | ground truth | prediction of the first image of `batch`, side by side.
fn write_snapshot(path: &Path, batch: &Batch, pred: &[u8], norm: &model::Normalization) -> Result<()> {
    let (h, w) = (batch.h, batch.w);
    let palette = data::voc_palette();
    let mut out = RgbImage::new(3 * w as u32, h as u32);
    for y in 0..h {
        for x in 0..w {
            let px = |c: usize| {
                let idx = match batch.layout {
                    model::Layout::Nchw => (c * h + y) * w + x,
                    model::Layout::Nhwc => (y * w + x) * 3 + c,
                };
                ((batch.images[idx] * norm.std[c] + norm.mean[c]) * 255.0).clamp(0.0, 255.0) as u8
            };
            out.put_pixel(x as u32, y as u32, Rgb([px(0), px(1), px(2)]));
            let gt = batch.masks[y * w + x];
            let gt_color = if gt == crate::IGNORE_INDEX { [255, 255, 255] } else { palette[gt as usize] };
            out.put_pixel((w + x) as u32, y as u32, Rgb(gt_color));
            out.put_pixel((2 * w + x) as u32, y as u32, Rgb(palette[pred[y * w + x] as usize]));
        }
    }
    write_png(path, &out)
}

fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    data::write_atomic(path, |f| img.write_to(f, image::ImageFormat::Png).map_err(std::io::Error::other))
}

/// `metrics.json`, `metrics.csv` and `curves.png`.
fn write_metrics(dir: &Path, history: &[EpochMetrics]) -> Result<()> {
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
    write_png(&dir.join("curves.png"), &plot_curves(history))
}

/// Two panels: train (blue) and val (red) loss; val mIoU (green) on [0, 1].
fn plot_curves(history: &[EpochMetrics]) -> RgbImage {
    let (pw, ph, pad) = (360u32, 240u32, 20u32);
    let mut img = RgbImage::from_pixel(2 * pw, ph, Rgb([255, 255, 255]));
    let max_loss =
        history.iter().flat_map(|m| [m.train_loss, m.val_loss]).filter(|v| v.is_finite()).fold(1e-9, f64::max);
    let n = history.len().max(2) - 1;
    let to_xy = |panel: u32, i: usize, v: f64, vmax: f64| {
        let x = panel * pw + pad + ((pw - 2 * pad) as f64 * i as f64 / n as f64) as u32;
        let y = ph - pad - ((ph - 2 * pad) as f64 * (v / vmax).clamp(0.0, 1.0)) as u32;
        (x as i64, y as i64)
    };
    for panel in 0..2 {
        draw_line(
            &mut img,
            (panel * pw + pad) as i64,
            (ph - pad) as i64,
            ((panel + 1) * pw - pad) as i64,
            (ph - pad) as i64,
            [0, 0, 0],
        );
        draw_line(
            &mut img,
            (panel * pw + pad) as i64,
            pad as i64,
            (panel * pw + pad) as i64,
            (ph - pad) as i64,
            [0, 0, 0],
        );
    }
    type Series = (u32, f64, [u8; 3], fn(&EpochMetrics) -> f64);
    let series: [Series; 3] = [
        (0, max_loss, [40, 80, 220], |m| m.train_loss),
        (0, max_loss, [220, 50, 50], |m| m.val_loss),
        (1, 1.0, [30, 160, 60], |m| m.val_miou),
    ];
    for (panel, vmax, color, get) in series {
        for (i, pair) in history.windows(2).enumerate() {
            let (a, b) = (to_xy(panel, i, get(&pair[0]), vmax), to_xy(panel, i + 1, get(&pair[1]), vmax));
            draw_line(&mut img, a.0, a.1, b.0, b.1, color);
        }
        if let Some(m) = history.first() {
            let p = to_xy(panel, 0, get(m), vmax);
            draw_line(&mut img, p.0 - 1, p.1, p.0 + 1, p.1, color);
        }
    }
    img
}

fn draw_line(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, color: [u8; 3]) {
    let steps = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
    for s in 0..=steps {
        let x = x0 + (x1 - x0) * s / steps;
        let y = y0 + (y1 - y0) * s / steps;
        for (dx, dy) in [(0, 0), (0, 1), (1, 0)] {
            let (px, py) = (x + dx, y + dy);
            if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                img.put_pixel(px as u32, py as u32, Rgb(color));
            }
        }
    }
}

/// Writes `checkpoints/epoch_NNN/{model.bpk, optimizer.bpk, state.json}` into a temporary
/// directory, renames it into place, then points `checkpoints/latest` at it (atomically). Older
/// epoch checkpoints but the previous one are removed.
fn save_checkpoint<M: SegModel>(rd: &RunDir, model: &M, optim: &ModuleOptimizer, state: &RunState) -> Result<()> {
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

fn load_checkpoint<M: SegModel>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::generated::deeplabv3plus_mobilenetv2::Model;
    use burn::module::Module;

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
