//! A run's configuration, `segtune train`'s flags and `config.json` in one: `TrainConfig`
//! derives clap's `Args`, so each default is written once, on its field, and the library's
//! defaults ([`TrainConfig::new`]) are the CLI's (the same parse of no flags). The enums of the
//! recipe (freezing, BatchNorm, optimizer, backbone runtime) live here too.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::{self, Dataset};
use crate::error::{Error, Result};
use crate::loss::LossSpec;
use crate::model::{self, Checkpoint};

pub use crate::device::DeviceKind;

/// One `--freeze` rule (repeatable; the union is frozen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freeze {
    /// Nothing is frozen.
    None,
    /// The backbone, as `build.rs` found it: parameters named with an `encoder`/`backbone`
    /// component under any prefix, else the sub-graph upstream of the ASPP ([`crate::backbone`]).
    Backbone,
    /// The parameters whose ONNX initializer name (in the checkpoint trained from) matches this
    /// glob (`*`, `?`), e.g. `m.encoder.*`, `decoder.aspp.*`.
    Glob(String),
}

impl std::str::FromStr for Freeze {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "" => Err("expected none, backbone or a glob on initializer names, found an empty value".into()),
            "none" => Ok(Freeze::None),
            "backbone" => Ok(Freeze::Backbone),
            glob => Ok(Freeze::Glob(glob.to_string())),
        }
    }
}

impl std::fmt::Display for Freeze {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Freeze::None => f.write_str("none"),
            Freeze::Backbone => f.write_str("backbone"),
            Freeze::Glob(g) => f.write_str(g),
        }
    }
}

impl Serialize for Freeze {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Freeze {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// `freeze` as a list, also from the single string older run configs hold.
fn freeze_list<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<Freeze>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Freeze),
        Many(Vec<Freeze>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(f) => vec![f],
        OneOrMany::Many(v) => v,
    })
}

/// The `--freeze` rules as one flag value each, for messages and suggested commands.
pub fn freeze_flags(rules: &[Freeze]) -> String {
    rules.iter().map(|r| format!("--freeze {}", shell_word(&r.to_string()))).collect::<Vec<_>>().join(" ")
}

/// `word` quoted for a POSIX shell where it needs it.
pub fn shell_word(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain { word.to_string() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

/// What BatchNorm layers do during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BnMode {
    /// Running statistics are used and never updated (DeepLab's recipe for small batches).
    Frozen,
    /// Batch statistics are used and the running statistics updated (needs batch ≥ 2).
    Train,
}

/// The optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with momentum 0.9 (dampening 0, as PyTorch), weight decay: DeepLab's recipe.
    Sgd,
    /// AdamW (decoupled weight decay).
    Adamw,
}

impl OptimizerKind {
    /// The base learning rate of a run that gives none: DeepLab's 0.01 for SGD, 1e-4 for AdamW.
    pub fn default_lr(self) -> f64 {
        match self {
            OptimizerKind::Sgd => 0.01,
            OptimizerKind::Adamw => 1e-4,
        }
    }
}

/// The random scale range of the augmentation, `MIN,MAX` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScaleRange(pub f32, pub f32);

impl std::str::FromStr for ScaleRange {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("expected MIN,MAX with 0 < MIN <= MAX (e.g. 0.5,2.0), found {s:?}");
        let (a, b) = s.split_once(',').ok_or_else(bad)?;
        let (a, b): (f32, f32) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
        if !(a > 0.0 && a <= b && b.is_finite()) {
            return Err(bad());
        }
        Ok(ScaleRange(a, b))
    }
}

impl std::fmt::Display for ScaleRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{}", self.0, self.1)
    }
}

/// What computes a frozen backbone's features during training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackboneRuntime {
    /// onnxruntime where it can serve (`--freeze backbone --bn frozen`, CPU device, a model that
    /// `build.rs` split, onnxruntime loads), else burn.
    #[default]
    Auto,
    /// burn runs the whole model.
    Burn,
    /// onnxruntime runs the frozen backbone, burn the decoder and head; an error where it cannot.
    Onnxruntime,
}

/// Everything that defines a run; saved as `RUN_DIR/config.json` before training starts and read
/// back by `--resume`. Its fields are `segtune train`'s (and `doctor`'s) flags; each default is
/// the one on its field.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct TrainConfig {
    /// Compiled-in model [default: the one --weights matches, else deeplabv3plus_mobilenetv2].
    #[arg(long, default_value = model::DEFAULT_MODEL, hide_default_value = true)]
    pub model: String,
    /// ONNX checkpoint to start from (same architecture as --model) [default: the compiled-in
    /// model's own weights].
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Dataset directory: VOC, Cityscapes or ADE20K layout, or SPLIT/images + SPLIT/masks (required).
    #[arg(long, default_value = "", hide_default_value = true, value_parser = data_dir())]
    pub data: PathBuf,
    #[command(flatten)]
    #[serde(flatten)]
    pub dataset: data::DataArgs,
    /// Training split.
    #[arg(long, default_value = "train")]
    pub train_split: String,
    /// Validation split.
    #[arg(long, default_value = "val")]
    pub val_split: String,
    /// Classes including background [default: the model's]; another count replaces the
    /// classifier with a freshly initialised one.
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub classes: usize,
    /// Passes over the training split.
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Training crop side in pixels, a multiple of the model's size multiple (16).
    #[arg(long, default_value_t = 512)]
    pub crop: usize,
    /// Base learning rate [default: 0.01 for sgd, 1e-4 for adamw].
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, value_enum, default_value_t = OptimizerKind::Sgd)]
    pub optimizer: OptimizerKind,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Weight decay (AdamW: decoupled).
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Exponent of the poly schedule `lr · (1 − step/total)^power`.
    #[arg(long, default_value_t = 0.9)]
    pub poly_power: f64,
    /// Steps of linear learning-rate warmup (from lr/warmup to lr) before the poly schedule.
    #[arg(long = "warmup", default_value_t = 0)]
    pub warmup_steps: usize,
    /// Clip the gradient L2 norm to this value.
    #[arg(long)]
    pub grad_clip: Option<f32>,
    /// Loss: ce, dice, focal, or a weighted sum such as ce+0.5*dice.
    #[arg(long, default_value = "ce")]
    pub loss: LossSpec,
    /// Cross-entropy class weights, comma-separated, one per class.
    #[arg(long, value_delimiter = ',')]
    pub class_weights: Option<Vec<f32>>,
    /// What freezes: none, backbone (found by name under any prefix, else by structure: see
    /// `segtune inspect`), or a glob on the checkpoint's initializer names (`'m.encoder.*'`).
    /// Repeatable: the union freezes.
    #[arg(long, default_value = "none", value_name = "none|backbone|GLOB")]
    #[serde(deserialize_with = "freeze_list")]
    pub freeze: Vec<Freeze>,
    /// BatchNorm: frozen (running statistics used, never updated: DeepLab's small-batch recipe)
    /// or train (batch statistics, running ones updated; needs --batch 2 or more).
    #[arg(long, value_enum, default_value_t = BnMode::Frozen)]
    pub bn: BnMode,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// What runs a frozen backbone: auto = onnxruntime when the backbone and BatchNorm are frozen,
    /// the device is the CPU and onnxruntime loads; else burn. Either gives the same numbers to
    /// float rounding.
    #[arg(long, value_enum, default_value_t = BackboneRuntime::Auto)]
    #[serde(default)]
    pub backbone_runtime: BackboneRuntime,
    /// Seed of everything random: shuffles, augmentation, a new classifier.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Random scale range of the augmentation.
    #[arg(long, default_value = "0.5,2", value_name = "MIN,MAX")]
    pub scale: ScaleRange,
    /// Random horizontal flip (`--no-flip` turns it off).
    #[arg(long = "no-flip", action = clap::ArgAction::SetFalse)]
    pub flip: bool,
    /// Also write TensorBoard event files (each epoch's scalars and snapshot) into
    /// RUN_DIR/tensorboard, for `tensorboard --logdir RUN_DIR/tensorboard`.
    #[arg(long)]
    #[serde(default)]
    pub tensorboard: bool,
    /// Stop after this many epochs, as an interruption would (tests of resume).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
}

/// `--data`: any path, and empty when left out (a `--resume` reads it from config.json; a new
/// run without it is refused by [`TrainConfig::check`]).
fn data_dir() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    use clap::builder::TypedValueParser;
    clap::builder::OsStringValueParser::new().map(PathBuf::from)
}

impl Default for TrainConfig {
    /// What `segtune train` gives with no flags (no data directory).
    fn default() -> Self {
        use clap::{Args, FromArgMatches};
        let matches = Self::augment_args(clap::Command::new("train")).no_binary_name(true).get_matches_from([""; 0]);
        Self::from_arg_matches(&matches).expect("the flags' defaults parse")
    }
}

impl TrainConfig {
    /// The defaults (as the CLI's) for everything but the data directory.
    pub fn new(data: PathBuf) -> Self {
        TrainConfig { data, ..Default::default() }
    }

    /// The recipe as `segtune train` flags: `--model`, `--data`, `--classes`, `--batch`, `--lr`,
    /// `--bn`, `--crop`, `--epochs` always, every other flag where it differs from its default,
    /// paths and globs quoted for a POSIX shell. Each is `(flag, "flag value")`.
    pub fn flags(&self) -> Vec<(&'static str, String)> {
        let d = TrainConfig::default();
        let path = |p: &std::path::Path| shell_word(&p.display().to_string());
        let lower = |v: &dyn std::fmt::Debug| format!("{v:?}").to_lowercase();
        let mut f: Vec<(&'static str, String)> = vec![
            ("--model", self.model.clone()),
            ("--data", path(&self.data)),
            ("--classes", self.classes.to_string()),
            ("--batch", self.batch.to_string()),
            ("--lr", format!("{:e}", self.base_lr())),
            ("--bn", lower(&self.bn)),
            ("--crop", self.crop.to_string()),
            ("--epochs", self.epochs.to_string()),
        ];
        let mut differs = |flag: &'static str, changed: bool, value: String| {
            if changed {
                f.push((flag, value));
            }
        };
        differs("--weights", self.weights.is_some(), self.weights.as_deref().map(path).unwrap_or_default());
        differs("--layout", self.dataset.layout != d.dataset.layout, lower(&self.dataset.layout));
        differs("--label-map", !self.dataset.label_map.is_identity(), shell_word(&self.dataset.label_map.to_string()));
        let names = self.dataset.class_names.as_deref().map(path).unwrap_or_default();
        differs("--class-names", self.dataset.class_names.is_some(), names);
        differs("--train-split", self.train_split != d.train_split, shell_word(&self.train_split));
        differs("--val-split", self.val_split != d.val_split, shell_word(&self.val_split));
        differs("--optimizer", self.optimizer != d.optimizer, lower(&self.optimizer));
        differs("--momentum", self.momentum != d.momentum, self.momentum.to_string());
        differs("--weight-decay", self.weight_decay != d.weight_decay, self.weight_decay.to_string());
        differs("--poly-power", self.poly_power != d.poly_power, self.poly_power.to_string());
        differs("--warmup", self.warmup_steps != d.warmup_steps, self.warmup_steps.to_string());
        differs("--grad-clip", self.grad_clip.is_some(), self.grad_clip.map(|g| g.to_string()).unwrap_or_default());
        differs("--loss", self.loss != d.loss, shell_word(&self.loss.to_string()));
        let weights =
            self.class_weights.as_ref().map(|w| w.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(","));
        differs("--class-weights", weights.is_some(), weights.clone().unwrap_or_default());
        differs("--device", self.device != d.device, lower(&self.device));
        differs("--backbone-runtime", self.backbone_runtime != d.backbone_runtime, lower(&self.backbone_runtime));
        differs("--seed", self.seed != d.seed, self.seed.to_string());
        differs("--scale", self.scale != d.scale, self.scale.to_string());
        if !self.flip {
            f.push(("--no-flip", String::new()));
        }
        if self.tensorboard {
            f.push(("--tensorboard", String::new()));
        }
        for rule in self.freeze.iter().filter(|r| **r != Freeze::None) {
            f.push(("--freeze", shell_word(&rule.to_string())));
        }
        f
    }

    /// The base learning rate: `lr`, else the optimizer's default.
    pub fn base_lr(&self) -> f64 {
        self.lr.unwrap_or(self.optimizer.default_lr())
    }

    /// How to read its dataset.
    pub fn data_spec(&self) -> data::DataSpec {
        self.dataset.spec()
    }

    /// `split` of its dataset.
    pub fn open_split(&self, split: &str) -> Result<Dataset> {
        Dataset::open_with(&self.data, split, &self.data_spec())
    }

    /// Refuses what cannot train `ckpt` (one line naming the flag), before anything is written.
    pub fn check(&self, ckpt: &Checkpoint) -> Result<()> {
        if self.data.as_os_str().is_empty() {
            return Err(Error::BadArgument("--data DIR is required".into()));
        }
        let m = ckpt.normalization.size_multiple;
        if self.crop == 0 || !self.crop.is_multiple_of(m) {
            return Err(Error::BadArgument(format!("--crop {}: expected a positive multiple of {m}", self.crop)));
        }
        if self.batch == 0 || self.epochs == 0 {
            return Err(Error::BadArgument("--batch and --epochs must be at least 1".into()));
        }
        if self.bn == BnMode::Train && self.batch < 2 && ckpt.info.has_batchnorm() {
            return Err(Error::BadArgument(format!(
                "--bn train with --batch {}: BatchNorm needs more than one value per channel to compute batch statistics \
                 (the ASPP image-pooling branch has one per image); use --batch 2 or more, or --bn frozen",
                self.batch
            )));
        }
        if let Some(shape) = ckpt.input {
            let fixed = |what: String| Error::bad_file(ckpt.origin(), format!("its graph runs at {what}"));
            if let Some((h, w)) = shape.size
                && (self.crop, self.crop) != (h, w)
            {
                let fix = if h == w { format!("use --crop {h}") } else { "training crops are square".into() };
                return Err(fixed(format!(
                    "{h}×{w} only (a size fixed inside it, such as its ASPP pooling's upsampling); {fix}"
                )));
            }
            if let Some(b) = shape.batch
                && self.batch != b
            {
                return Err(fixed(format!("batches of {b} only (a batch size fixed inside it); use --batch {b}")));
            }
        }
        if let Some(lr) = self.lr
            && !(lr.is_finite() && lr > 0.0)
        {
            return Err(Error::BadArgument(format!("--lr {lr}: expected a positive number")));
        }
        if let Some(w) = &self.class_weights
            && w.len() != self.classes
        {
            return Err(Error::BadArgument(format!(
                "--class-weights: expected {} values, found {}",
                self.classes,
                w.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The library's defaults are the CLI's, written once; AdamW's learning rate follows it.
    #[test]
    fn defaults_are_pinned() {
        let c = TrainConfig::new("d".into());
        assert_eq!(
            (c.model.as_str(), c.train_split.as_str(), c.val_split.as_str()),
            (model::DEFAULT_MODEL, "train", "val")
        );
        assert_eq!((c.classes, c.epochs, c.batch, c.crop, c.warmup_steps, c.seed), (0, 30, 8, 512, 0, 0));
        assert_eq!((c.lr, c.base_lr(), c.momentum, c.weight_decay, c.poly_power), (None, 0.01, 0.9, 1e-4, 0.9));
        assert_eq!(
            (c.optimizer, c.bn, c.device, c.backbone_runtime),
            (OptimizerKind::Sgd, BnMode::Frozen, DeviceKind::Cpu, BackboneRuntime::Auto)
        );
        assert_eq!(
            (c.freeze.clone(), c.scale, c.flip, c.grad_clip, c.stop_after),
            (vec![Freeze::None], ScaleRange(0.5, 2.0), true, None, None)
        );
        assert_eq!(c.loss, LossSpec::default());
        assert!(c.dataset.spec().label_map.is_identity());
        let adamw = TrainConfig { optimizer: OptimizerKind::Adamw, ..c.clone() };
        assert_eq!(adamw.base_lr(), 1e-4);
        assert_eq!(TrainConfig { lr: Some(3e-3), ..adamw }.base_lr(), 3e-3);
    }

    #[test]
    fn freeze_rules_parse_and_old_configs_load() {
        assert_eq!("backbone".parse::<Freeze>(), Ok(Freeze::Backbone));
        assert_eq!("m.encoder.*".parse::<Freeze>(), Ok(Freeze::Glob("m.encoder.*".into())));
        assert!("".parse::<Freeze>().is_err());
        let mut cfg = TrainConfig::new("data".into());
        cfg.freeze = vec![Freeze::Backbone, Freeze::Glob("decoder.aspp.*".into())];
        let json = serde_json::to_value(&cfg).unwrap();
        assert_eq!(json["freeze"], serde_json::json!(["backbone", "decoder.aspp.*"]));
        assert_eq!(json["layout"], "auto", "the dataset flags stay top-level keys");
        assert_eq!(serde_json::from_value::<TrainConfig>(json).unwrap().freeze, cfg.freeze);
        // Run configs written before --freeze repeated hold one string, before the dataset flags
        // none, and `lr` a number.
        let mut old = serde_json::to_value(&cfg).unwrap();
        old["freeze"] = "backbone".into();
        old["lr"] = 0.02.into();
        for k in ["layout", "label_map", "class_names"] {
            old.as_object_mut().unwrap().remove(k);
        }
        let back = serde_json::from_value::<TrainConfig>(old).unwrap();
        assert_eq!((back.freeze, back.lr), (vec![Freeze::Backbone], Some(0.02)));
        assert_eq!(freeze_flags(&cfg.freeze), "--freeze backbone --freeze 'decoder.aspp.*'");
        assert_eq!("0.5,2".parse::<ScaleRange>(), Ok(ScaleRange(0.5, 2.0)));
        assert!("2,1".parse::<ScaleRange>().is_err());
    }
}
