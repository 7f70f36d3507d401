//! The model a run trains, set up from its config: which parameters freeze (the backbone, by
//! `build.rs`'s rule, or globs on initializer names), a new classifier for another class count,
//! BatchNorm's mode, parameter counts, the optimizer and its learning-rate schedule.

use std::collections::HashSet;

use burn::module::{Flag, ModuleMapper, ModuleVisitor, Param};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, ModuleOptimizer, SgdConfig};
use burn::store::ModuleSnapshot;
use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{BnMode, Freeze, OptimizerKind, TrainConfig, shell_word};
use crate::error::{Error, Result};
use crate::model::{self, Checkpoint, ModelInfo, SegModel};
use crate::rng::Rng;

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

/// Switches every BatchNorm layer's training flag off (`frozen`) or leaves it on.
struct BnFlags {
    path: Vec<String>,
    frozen: bool,
}

impl ModuleMapper for BnFlags {
    crate::model::track_module_path!(path);
    fn map_flag(&mut self, flag: Param<Flag>) -> Param<Flag> {
        let is_bn = self.path.last().is_some_and(|n| n == "training");
        if self.frozen && is_bn { flag.with_value(false) } else { flag }
    }
}

/// `module` with its BatchNorm layers in `bn` mode (frozen: running statistics used and kept).
pub fn with_bn_mode<T: burn::module::Module>(module: T, bn: BnMode) -> T {
    module.map(&mut BnFlags { path: vec![], frozen: bn == BnMode::Frozen })
}

/// Counts parameters (elements) that train and in total; BN running statistics are state, not
/// parameters, and are not counted.
struct Counter {
    trainable: usize,
    total: usize,
    field: Vec<String>,
}

/// `(trainable, total)` parameter elements of a model, BN running statistics not counted.
pub fn parameter_counts<M: SegModel>(model: &M) -> (usize, usize) {
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
pub fn build_model<M: SegModel>(
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

pub fn make_optimizer(cfg: &TrainConfig) -> ModuleOptimizer {
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

/// The checkpoint a run trains from, its graph made runnable in onnxruntime where onnxruntime
/// loads ([`crate::runtime::prepare`]: the sizes it runs at), and the run's class count settled
/// (the model's, unless `--classes` says otherwise). Returns the model's own class count too.
pub fn open_checkpoint(cfg: &mut TrainConfig) -> Result<(Checkpoint, usize)> {
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

/// Whether every BN running mean is 0 and every running variance 1 (never trained).
pub fn bn_statistics_at_init<M: SegModel>(model: &M) -> bool {
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
