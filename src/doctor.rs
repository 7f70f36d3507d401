//! `segtune doctor`: tells a user why their fine-tune does not learn. It checks the labels, the
//! images, the model, the initial loss, whether one batch can be overfit (with a learning-rate
//! sweep when it cannot), and BatchNorm, and ranks the most likely cause first with the exact
//! `segtune train` flags that fix it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use burn::module::{ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::store::ModuleSnapshot;
use burn::tensor::{Device, Tensor};
use rayon::prelude::*;
use serde::Serialize;

use crate::IGNORE_INDEX;
use crate::config::{self, BnMode, TrainConfig};
use crate::data::{self, Augment, Dataset, Item, Loader, LoaderSpec};
use crate::error::Result;
use crate::loss::{self, LossSpec};
use crate::model::{self, Checkpoint, ModelFn, SegModel};
use crate::onnx;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Fail,
    Warn,
    Pass,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// Each check the doctor runs: typed, so a misspelt name cannot drop a check out of the ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckId {
    LabelsHistogram,
    LabelsFormat,
    LabelsBinary,
    LabelsEncoding,
    LabelsZeroLabel,
    LabelsRange,
    LabelsIgnore,
    LabelsCoverage,
    LabelsBalance,
    ImagesFormat,
    ImagesNormalization,
    ModelSoftmax,
    ModelClasses,
    ModelTrainable,
    BnBatch,
    BnStatistics,
    LossInitial,
    TrainOverfit,
    TrainGradients,
    BnDrift,
    BnTrainEvalGap,
}

impl CheckId {
    /// The dotted name the report prints (`labels.range`).
    pub fn name(self) -> &'static str {
        match self {
            CheckId::LabelsHistogram => "labels.histogram",
            CheckId::LabelsFormat => "labels.format",
            CheckId::LabelsBinary => "labels.binary",
            CheckId::LabelsEncoding => "labels.encoding",
            CheckId::LabelsZeroLabel => "labels.zero_label",
            CheckId::LabelsRange => "labels.range",
            CheckId::LabelsIgnore => "labels.ignore",
            CheckId::LabelsCoverage => "labels.coverage",
            CheckId::LabelsBalance => "labels.balance",
            CheckId::ImagesFormat => "images.format",
            CheckId::ImagesNormalization => "images.normalization",
            CheckId::ModelSoftmax => "model.softmax",
            CheckId::ModelClasses => "model.classes",
            CheckId::ModelTrainable => "model.trainable",
            CheckId::BnBatch => "bn.batch",
            CheckId::BnStatistics => "bn.statistics",
            CheckId::LossInitial => "loss.initial",
            CheckId::TrainOverfit => "train.overfit",
            CheckId::TrainGradients => "train.gradients",
            CheckId::BnDrift => "bn.drift",
            CheckId::BnTrainEvalGap => "bn.train_eval_gap",
        }
    }

    /// Where a check that did not pass ranks among the causes, most likely first: a label
    /// encoding or image problem makes every later measurement meaningless, then BatchNorm and
    /// the model, then what training shows, then the data's balance.
    fn rank(self) -> usize {
        match self {
            CheckId::LabelsFormat => 0,
            CheckId::LabelsBinary => 1,
            CheckId::LabelsEncoding => 2,
            CheckId::LabelsZeroLabel => 3,
            CheckId::LabelsRange => 4,
            CheckId::ImagesFormat => 5,
            CheckId::BnBatch => 6,
            CheckId::BnStatistics => 7,
            CheckId::ModelSoftmax => 8,
            CheckId::TrainOverfit => 9,
            CheckId::BnTrainEvalGap => 10,
            CheckId::ModelTrainable => 11,
            CheckId::LossInitial => 12,
            CheckId::ImagesNormalization => 13,
            CheckId::LabelsBalance => 14,
            CheckId::LabelsCoverage => 15,
            CheckId::LabelsHistogram => 16,
            CheckId::LabelsIgnore => 16,
            CheckId::ModelClasses => 16,
            CheckId::TrainGradients => 16,
            CheckId::BnDrift => 16,
        }
    }
}

impl fmt::Display for CheckId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for CheckId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl PartialEq<&str> for CheckId {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: CheckId,
    pub status: Status,
    /// What was measured.
    pub measured: String,
    /// The concrete fix (empty when nothing needs fixing).
    pub fix: String,
    /// `segtune train` flags that apply the fix, if flags can.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

fn check(name: CheckId, status: Status, measured: impl Into<String>, fix: impl Into<String>, flags: &[&str]) -> Check {
    Check {
        name,
        status,
        measured: measured.into(),
        fix: fix.into(),
        flags: flags.iter().map(|s| s.to_string()).collect(),
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    pub checks: Vec<Check>,
    /// The most likely cause first, then the others that failed or warned.
    pub summary: Vec<String>,
    /// The `segtune train` command with every suggested flag applied.
    pub suggested_command: Option<String>,
}

impl DoctorReport {
    pub fn failures(&self) -> usize {
        self.checks.iter().filter(|c| c.status == Status::Fail).count()
    }
}

impl fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.checks.iter().map(|c| c.name.name().len()).max().unwrap_or(10);
        for c in &self.checks {
            writeln!(f, "{}  {:<width$}  {}", c.status, c.name.name(), c.measured)?;
            if !c.fix.is_empty() {
                writeln!(f, "      {:<width$}  fix: {}", "", c.fix)?;
            }
        }
        writeln!(f)?;
        for (i, line) in self.summary.iter().enumerate() {
            writeln!(f, "{}{line}", if i == 0 { "most likely: " } else { "also:        " })?;
        }
        if let Some(cmd) = &self.suggested_command {
            writeln!(f, "try:         {cmd}")?;
        }
        Ok(())
    }
}

/// How much work the doctor does.
#[derive(Debug, Clone, Copy)]
pub struct DoctorOptions {
    /// Optimizer steps of each overfit-one-batch run (default 25).
    pub steps: usize,
    /// Images in the overfit batch (default: --batch, at most 4).
    pub max_batch: usize,
    /// Side of the overfit batch's crops (default: --crop, at most 128).
    pub max_crop: usize,
}

impl Default for DoctorOptions {
    fn default() -> Self {
        DoctorOptions { steps: 25, max_batch: 4, max_crop: 128 }
    }
}

/// What a scan of one split's masks and images found.
#[derive(Debug, Default)]
struct SplitScan {
    masks: usize,
    histogram: BTreeMap<u16, u64>,
    pixels: u64,
    out_of_range: Vec<(String, u16)>,
    colour: Vec<String>,
    colours: BTreeMap<[u16; 3], u64>,
    one_hot: Vec<String>,
    multi_channel: Vec<String>,
    size_mismatch: Vec<String>,
    unreadable: Vec<String>,
    image_kinds: BTreeMap<String, usize>,
    min_size: Option<(u32, u32)>,
    max_size: Option<(u32, u32)>,
}

enum MaskKind {
    Index(Vec<u16>),
    OneHot,
    Colour(Vec<[u16; 3]>),
    MultiChannel,
}

fn classify(raw: &data::RawMask) -> MaskKind {
    match raw.channels {
        1 => MaskKind::Index(raw.values.clone()),
        2 => MaskKind::MultiChannel,
        c => {
            let pixels: Vec<&[u16]> = raw.values.chunks_exact(c).collect();
            let colour_channels = 3.min(c);
            let hot = pixels.iter().all(|p| {
                let nonzero: Vec<u16> = p[..colour_channels].iter().copied().filter(|&v| v != 0).collect();
                nonzero.len() <= 1 && nonzero.iter().all(|&v| v == 1 || v == 255)
            });
            if hot { MaskKind::OneHot } else { MaskKind::Colour(pixels.iter().map(|p| [p[0], p[1], p[2]]).collect()) }
        }
    }
}

/// One item as the doctor sees it: the raw mask, the image's size and colour type.
struct ScannedItem {
    mask_name: String,
    raw: data::RawMask,
    /// What its stored values mean (the layout's map, then `--label-map`).
    map: crate::labels::LabelMap,
    dims: (u32, u32),
    kind: String,
}

fn scan_item(item: &Item) -> std::result::Result<ScannedItem, String> {
    use image::ImageDecoder;
    let raw = data::read_mask_raw(&item.mask).map_err(|e| e.to_string())?;
    let decoder = image::ImageReader::open(&item.image)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| format!("{}: {e}", item.image.display()))?
        .into_decoder()
        .map_err(|e| format!("{}: {e}", item.image.display()))?;
    let kind = format!("{:?}", decoder.color_type()).to_lowercase();
    Ok(ScannedItem { mask_name: item.mask.display().to_string(), raw, map: item.map, dims: decoder.dimensions(), kind })
}

fn scan_split(ds: &Dataset, classes: usize) -> SplitScan {
    let per_item: Vec<std::result::Result<ScannedItem, String>> = ds.items.par_iter().map(scan_item).collect();
    let mut s = SplitScan::default();
    for r in per_item {
        let ScannedItem { mask_name: name, raw, map, dims, kind } = match r {
            Ok(v) => v,
            Err(e) => {
                s.unreadable.push(e);
                continue;
            }
        };
        s.masks += 1;
        *s.image_kinds.entry(kind).or_insert(0) += 1;
        s.min_size = Some(s.min_size.map_or(dims, |m| (m.0.min(dims.0), m.1.min(dims.1))));
        s.max_size = Some(s.max_size.map_or(dims, |m| (m.0.max(dims.0), m.1.max(dims.1))));
        if dims != (raw.width, raw.height) {
            s.size_mismatch.push(format!("{name} ({}x{}) vs its image ({}x{})", raw.width, raw.height, dims.0, dims.1));
        }
        match classify(&raw) {
            MaskKind::Index(values) => {
                for v in values.into_iter().map(|v| if v <= 255 { map.get(v as u8) as u16 } else { v }) {
                    *s.histogram.entry(v).or_insert(0) += 1;
                    s.pixels += 1;
                    if v != IGNORE_INDEX as u16 && v as usize >= classes && s.out_of_range.len() < 1000 {
                        s.out_of_range.push((name.clone(), v));
                    }
                }
            }
            MaskKind::OneHot => s.one_hot.push(name),
            MaskKind::MultiChannel => s.multi_channel.push(name),
            MaskKind::Colour(colours) => {
                for c in colours {
                    *s.colours.entry(c).or_insert(0) += 1;
                }
                s.colour.push(name);
            }
        }
    }
    s
}

fn first_names(v: &[String], n: usize) -> String {
    let mut shown: Vec<&str> = v.iter().take(n).map(String::as_str).collect();
    if v.len() > n {
        shown.push("...");
    }
    shown.join(", ")
}

fn label_checks(cfg: &TrainConfig, train: &SplitScan, val: &SplitScan, checks: &mut Vec<Check>) -> bool {
    histogram_check(train, val, checks);
    let format_ok = format_check(train, val, checks);
    let encoding = encoding_checks(cfg, train, val, checks);
    let range_ok = range_check(cfg, train, val, encoding, checks);
    balance_check(cfg, train, val, checks);
    ignore_check(train, val, checks);
    let usable = format_ok && range_ok;
    if usable {
        coverage_check(cfg, train, val, checks);
    }
    usable
}

/// labels.histogram: each split's mask values and their shares.
fn histogram_check(train: &SplitScan, val: &SplitScan, checks: &mut Vec<Check>) {
    let hist = |s: &SplitScan| {
        let total = s.pixels.max(1) as f64;
        s.histogram
            .iter()
            .map(|(v, c)| format!("{v}: {:.1}%", 100.0 * *c as f64 / total))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let measured = format!("train [{}]; val [{}]", hist(train), hist(val));
    checks.push(check(CheckId::LabelsHistogram, Status::Pass, measured, "", &[]));
}

/// labels.format: index masks, not RGB colours or one channel per class. False where unusable.
fn format_check(train: &SplitScan, val: &SplitScan, checks: &mut Vec<Check>) -> bool {
    let colour: Vec<String> = train.colour.iter().chain(&val.colour).cloned().collect();
    let one_hot: Vec<String> = [&train.one_hot, &val.one_hot, &train.multi_channel, &val.multi_channel]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    if !colour.is_empty() {
        let measured =
            format!("{} masks store RGB colours instead of class indices: {}", colour.len(), first_names(&colour, 3));
        let fix = format!(
            "convert colours to indices (VOC palette: {}); save as a palette or 8-bit grayscale PNG whose values are the indices",
            colour_hints(train, val).join(", ")
        );
        checks.push(check(CheckId::LabelsFormat, Status::Fail, measured, fix, &[]));
        return false;
    }
    if !one_hot.is_empty() {
        let measured = format!(
            "{} masks are one-hot or multi-channel (one channel per class): {}",
            one_hot.len(),
            first_names(&one_hot, 3)
        );
        let fix = "store one channel holding the class index of each pixel (the argmax over the one-hot channels), 255 where ignored";
        checks.push(check(CheckId::LabelsFormat, Status::Fail, measured, fix, &[]));
        return false;
    }
    let measured = format!("{} single-channel index masks", train.masks + val.masks);
    checks.push(check(CheckId::LabelsFormat, Status::Pass, measured, "", &[]));
    true
}

/// The most frequent mask colours, each with its VOC palette index where it has one.
fn colour_hints(train: &SplitScan, val: &SplitScan) -> Vec<String> {
    let palette = data::voc_palette();
    let mut colours: Vec<([u16; 3], u64)> = train.colours.iter().chain(&val.colours).map(|(k, v)| (*k, *v)).collect();
    colours.sort_by_key(|c| std::cmp::Reverse(c.1));
    colours
        .iter()
        .take(6)
        .map(|(c, _)| match palette.iter().position(|p| p.iter().zip(c).all(|(a, b)| *a as u16 == *b)) {
            Some(i) => format!("({},{},{}) -> {i}", c[0], c[1], c[2]),
            None => format!("({},{},{}) -> not in the VOC palette", c[0], c[1], c[2]),
        })
        .collect()
}

/// labels.range: values (after --label-map) in [0, classes) or the ignore index. False where
/// some are not.
fn range_check(cfg: &TrainConfig, train: &SplitScan, val: &SplitScan, encoding: bool, checks: &mut Vec<Check>) -> bool {
    let bad: Vec<&(String, u16)> = train.out_of_range.iter().chain(&val.out_of_range).collect();
    if bad.is_empty() {
        let measured = format!("all values in [0, {}) or {IGNORE_INDEX}", cfg.classes);
        checks.push(check(CheckId::LabelsRange, Status::Pass, measured, "", &[]));
        return true;
    }
    let values: BTreeSet<u16> = bad.iter().map(|b| b.1).collect();
    let files: BTreeSet<&str> = bad.iter().map(|b| b.0.as_str()).collect();
    let max = values.iter().max().copied().unwrap_or(0);
    let flag = format!("--classes {}", max + 1);
    checks.push(Check {
        name: CheckId::LabelsRange,
        status: Status::Fail,
        measured: format!(
            "values {values:?} outside [0, {}) and not {IGNORE_INDEX}, in {} files: {}",
            cfg.classes,
            files.len(),
            first_names(&files.iter().map(|s| s.to_string()).collect::<Vec<_>>(), 3)
        ),
        fix: if encoding {
            "the label encoding above explains them".into()
        } else {
            format!("relabel those pixels (--label-map SRC:DST), or if they are real classes train with {flag}")
        },
        flags: if encoding { vec![] } else { vec![flag] },
    });
    false
}

/// labels.ignore: the share of ignored (255) pixels.
fn ignore_check(train: &SplitScan, val: &SplitScan, checks: &mut Vec<Check>) {
    let ignored =
        |s: &SplitScan| *s.histogram.get(&(IGNORE_INDEX as u16)).unwrap_or(&0) as f64 / s.pixels.max(1) as f64;
    let (ti, vi) = (ignored(train), ignored(val));
    checks.push(check(
        CheckId::LabelsIgnore,
        if ti.max(vi) > 0.5 { Status::Warn } else { Status::Pass },
        format!("{:.1}% of train and {:.1}% of val pixels are {IGNORE_INDEX} (ignored)", ti * 100.0, vi * 100.0),
        if ti.max(vi) > 0.5 { "most pixels are ignored: check that 255 marks only boundaries / void" } else { "" },
        &[],
    ));
}

/// labels.coverage: every class occurs in train and in val.
fn coverage_check(cfg: &TrainConfig, train: &SplitScan, val: &SplitScan, checks: &mut Vec<Check>) {
    let present = |s: &SplitScan| -> BTreeSet<usize> {
        s.histogram.keys().filter(|&&v| (v as usize) < cfg.classes).map(|&v| v as usize).collect()
    };
    let (tp, vp) = (present(train), present(val));
    let missing_train: Vec<usize> = (0..cfg.classes).filter(|c| !tp.contains(c)).collect();
    let missing_val: Vec<usize> = (0..cfg.classes).filter(|c| !vp.contains(c)).collect();
    if missing_train.is_empty() && missing_val.is_empty() {
        let measured = format!("all {} classes occur in train and val", cfg.classes);
        checks.push(check(CheckId::LabelsCoverage, Status::Pass, measured, "", &[]));
        return;
    }
    checks.push(check(
        CheckId::LabelsCoverage,
        Status::Warn,
        format!("classes missing from train: {missing_train:?}; from val: {missing_val:?}"),
        "a class never seen in train cannot be learned, one absent from val is left out of mIoU; check --classes and the split",
        &[],
    ));
}

/// The encodings users bring that read as valid-looking labels: binary masks saved as 0/255
/// (255 is "ignore", so the foreground is never learned), Cityscapes labelIds where trainIds
/// are expected, ADE20K's 0 = "other" with the classes off by one. Each FAILs naming the
/// `--label-map` that fixes it; returns whether one did (the out-of-range values are then
/// explained).
fn encoding_checks(cfg: &TrainConfig, train: &SplitScan, val: &SplitScan, checks: &mut Vec<Check>) -> bool {
    let values: BTreeSet<u16> = train.histogram.keys().chain(val.histogram.keys()).copied().collect();
    let labelled: BTreeSet<u16> = values.iter().copied().filter(|&v| v != IGNORE_INDEX as u16).collect();
    let k = cfg.classes as u16;
    let ignored = *train.histogram.get(&(IGNORE_INDEX as u16)).unwrap_or(&0) as f64 / train.pixels.max(1) as f64;
    let fail = |name: CheckId, measured: String, fix: String, flag: &str| Check {
        name,
        status: Status::Fail,
        measured,
        fix,
        flags: vec![flag.to_string()],
    };
    let found = if k >= 2 && labelled.iter().all(|&v| v == 0) && ignored > 0.01 {
        Some(fail(
            CheckId::LabelsBinary,
            format!(
                "every mask holds only 0 and {IGNORE_INDEX} ({:.1}% of train pixels are {IGNORE_INDEX}) with --classes {k}: \
                 {IGNORE_INDEX} is the ignore label, so class{} {} never appear{} and the model learns background everywhere",
                100.0 * ignored,
                if k > 2 { "es" } else { "" },
                (1..k).map(|c| c.to_string()).collect::<Vec<_>>().join(", "),
                if k > 2 { "" } else { "s" }
            ),
            "binary masks saved as 0/255 mean 255 = foreground: read it as class 1 with --label-map 255:1".into(),
            "--label-map 255:1",
        ))
    } else if k == 19 && labelled.last().is_some_and(|&m| (19..=33).contains(&m)) && labelled.iter().all(|&v| v <= 33) {
        Some(fail(
            CheckId::LabelsEncoding,
            format!(
                "values up to {} with --classes 19: these are Cityscapes labelIds (0–33), not its 19 trainIds",
                labelled.last().copied().unwrap_or(0)
            ),
            "map labelIds to trainIds (255 elsewhere) with --label-map cityscapes (--layout cityscapes does it for \
             gtFine's *_labelIds.png)"
                .into(),
            "--label-map cityscapes",
        ))
    } else if k >= 2 && labelled.contains(&0) && labelled.last() == Some(&k) && labelled.iter().all(|&v| v <= k) {
        Some(fail(
            CheckId::LabelsZeroLabel,
            format!(
                "values 0–{k} with --classes {k}: one value too many, as in ADE20K, whose 0 is \"other\" and k the k-th \
                 class (class k − 1 once 0 is dropped)"
            ),
            "drop 0 and shift the rest down: --label-map reduce_zero_label (0 → 255, k → k − 1; --layout ade20k does \
             it for ADEChallengeData2016)"
                .into(),
            "--label-map reduce_zero_label",
        ))
    } else {
        None
    };
    let any = found.is_some();
    checks.extend(found);
    any
}

/// WARNs when one class holds at least 99 % of a split's labelled pixels, with class weights
/// (median-frequency balancing over the train split) as the flag.
fn balance_check(cfg: &TrainConfig, train: &SplitScan, val: &SplitScan, checks: &mut Vec<Check>) {
    let share = |s: &SplitScan| -> Option<(u16, f64)> {
        let labelled: Vec<(u16, u64)> =
            s.histogram.iter().filter(|(v, _)| (**v as usize) < cfg.classes).map(|(v, c)| (*v, *c)).collect();
        let total: u64 = labelled.iter().map(|l| l.1).sum();
        labelled.iter().max_by_key(|l| l.1).map(|&(v, c)| (v, c as f64 / total.max(1) as f64))
    };
    let worst = [("train", share(train)), ("val", share(val))]
        .into_iter()
        .filter_map(|(split, s)| s.map(|(v, f)| (split, v, f)))
        .max_by(|a, b| a.2.total_cmp(&b.2));
    let Some((split, class, frac)) = worst.filter(|w| w.2 >= 0.99) else {
        checks.push(check(
            CheckId::LabelsBalance,
            Status::Pass,
            "no class holds 99% of a split's labelled pixels",
            "",
            &[],
        ));
        return;
    };
    let freq: Vec<f64> = (0..cfg.classes)
        .map(|c| *train.histogram.get(&(c as u16)).unwrap_or(&0) as f64 / train.pixels.max(1) as f64)
        .collect();
    let mut present: Vec<f64> = freq.iter().copied().filter(|&f| f > 0.0).collect();
    present.sort_by(f64::total_cmp);
    let median = present.get(present.len() / 2).copied().unwrap_or(1.0);
    let weights: Vec<String> =
        freq.iter().map(|&f| if f > 0.0 { format!("{:.3}", (median / f).min(100.0)) } else { "1".into() }).collect();
    let flag = format!("--class-weights {}", weights.join(","));
    checks.push(Check {
        name: CheckId::LabelsBalance,
        status: Status::Warn,
        measured: format!("class {class} holds {:.2}% of the {split} split's labelled pixels", 100.0 * frac),
        fix: format!(
            "a model predicting class {class} everywhere scores {:.1}% pixel accuracy: weight the rare classes up \
             (median-frequency balancing over train: {flag}), and judge by mIoU",
            100.0 * frac
        ),
        flags: vec![flag],
    });
}

fn image_checks(train: &SplitScan, val: &SplitScan, checks: &mut Vec<Check>) -> bool {
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for (k, v) in train.image_kinds.iter().chain(&val.image_kinds) {
        *kinds.entry(k.clone()).or_insert(0) += v;
    }
    let unreadable: Vec<String> = train.unreadable.iter().chain(&val.unreadable).cloned().collect();
    let mismatch: Vec<String> = train.size_mismatch.iter().chain(&val.size_mismatch).cloned().collect();
    let sizes = match (train.min_size, train.max_size) {
        (Some(a), Some(b)) => format!("sizes {}x{} to {}x{}", a.0, a.1, b.0, b.1),
        _ => "no sizes".into(),
    };
    let kinds_text = kinds.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
    if !unreadable.is_empty() || !mismatch.is_empty() {
        checks.push(check(
            CheckId::ImagesFormat,
            Status::Fail,
            format!(
                "{} unreadable ({}), {} image/mask size mismatches ({}); {kinds_text}",
                unreadable.len(),
                first_names(&unreadable, 2),
                mismatch.len(),
                first_names(&mismatch, 2)
            ),
            "every image needs a readable file and a mask of exactly its size",
            &[],
        ));
        return false;
    }
    checks.push(check(
        CheckId::ImagesFormat,
        Status::Pass,
        format!("{kinds_text}; {sizes}; every mask matches its image"),
        "",
        &[],
    ));
    true
}

fn normalization_check(ds: &Dataset, norm: &crate::layout::Normalization, checks: &mut Vec<Check>) {
    let sample: Vec<&Item> = ds.items.iter().take(16).collect();
    let stats: Vec<(f64, f64, f64)> = sample
        .par_iter()
        .filter_map(|item| data::load_image(&item.image).ok())
        .map(|img| {
            let (mut sum, mut sq, mut n) = (0f64, 0f64, 0f64);
            for p in img.pixels() {
                for c in 0..3 {
                    let v = ((p[c] as f32 / 255.0 - norm.mean[c]) / norm.std[c]) as f64;
                    sum += v;
                    sq += v * v;
                    n += 1.0;
                }
            }
            (sum, sq, n)
        })
        .collect();
    let (sum, sq, n) = stats.iter().fold((0.0, 0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
    if n == 0.0 {
        return;
    }
    let mean = sum / n;
    let std = (sq / n - mean * mean).max(0.0).sqrt();
    let expected = format!("model expects (x/255 - {:?}) / {:?}", norm.mean, norm.std);
    let ok = mean.abs() < 1.0 && (0.25..3.0).contains(&std);
    checks.push(check(
        CheckId::ImagesNormalization,
        if ok { Status::Pass } else { Status::Warn },
        format!("normalized pixels of {} images: mean {mean:.3}, std {std:.3}; {expected}", stats.len()),
        if ok {
            String::new()
        } else {
            "after normalization pixels should have mean near 0 and std near 1: images that are nearly black, saturated or \
             already normalized (e.g. saved from [-1, 1] or [0, 1] floats) do not match what the model expects"
                .to_string()
        },
        &[],
    ));
}

fn model_checks(cfg: &TrainConfig, ckpt: &Checkpoint, model_classes: usize, checks: &mut Vec<Check>) {
    let g = onnx::graph(&ckpt.proto);
    match onnx::trailing_softmax(g, onnx::opset(&ckpt.proto)) {
        Some(s) => checks.push(check(
            CheckId::ModelSoftmax,
            Status::Warn,
            format!("{} ends in {} node {:?} (axis {}): its output {:?} holds probabilities", ckpt.origin(), s.op_type, s.node, s.axis, s.output),
            "segtune trains on the logits before the softmax (its compiled model has none); a loss that expects logits \
             (cross-entropy, Dice from logits) on this file's output applies softmax twice and barely learns: drop the softmax",
            &[],
        )),
        None => checks.push(check(CheckId::ModelSoftmax, Status::Pass, "no softmax on the output: the model gives logits", "", &[])),
    }
    let head = if cfg.classes == model_classes {
        format!("{model_classes} outputs = {} dataset classes", cfg.classes)
    } else {
        format!(
            "{model_classes} outputs, {} dataset classes: a fresh {}-class classifier replaces the old one",
            cfg.classes, cfg.classes
        )
    };
    checks.push(check(CheckId::ModelClasses, Status::Pass, head, "", &[]));
}

/// `segtune doctor`.
pub fn doctor(cfg: &TrainConfig, opts: &DoctorOptions) -> Result<DoctorReport> {
    if cfg.data.as_os_str().is_empty() {
        return Err(crate::Error::BadArgument("--data DIR is required".into()));
    }
    let mut cfg = cfg.clone();
    let ckpt = Checkpoint::open(Some(&cfg.model), cfg.weights.as_deref())?;
    let model_classes = ckpt.classes()?;
    if cfg.classes == 0 {
        cfg.classes = model_classes;
    }
    let train_set = cfg.open_split(&cfg.train_split)?;
    let val_set = cfg.open_split(&cfg.val_split)?;
    let mut checks = vec![];
    let (ts, vs) = (scan_split(&train_set, cfg.classes), scan_split(&val_set, cfg.classes));
    let labels_ok = label_checks(&cfg, &ts, &vs, &mut checks);
    let images_ok = image_checks(&ts, &vs, &mut checks);
    normalization_check(&train_set, &ckpt.normalization, &mut checks);
    model_checks(&cfg, &ckpt, model_classes, &mut checks);
    let has_bn = ckpt.info.has_batchnorm();
    bn_config_check(&cfg, has_bn, &mut checks);

    if labels_ok && images_ok && !(has_bn && cfg.bn == BnMode::Train && cfg.batch < 2) {
        struct Go<'a>(&'a TrainConfig, &'a Checkpoint, usize, &'a Dataset, &'a DoctorOptions);
        impl ModelFn for Go<'_> {
            type Output = Result<Vec<Check>>;
            fn call<M: SegModel>(self) -> Self::Output {
                training_checks::<M>(self.0, self.1, self.2, self.3, self.4)
            }
        }
        checks.extend(model::with_model(ckpt.info, Go(&cfg, &ckpt, model_classes, &train_set, opts))?);
    } else {
        checks.push(check(
            CheckId::TrainOverfit,
            Status::Warn,
            "not run: the labels, images or BatchNorm settings above must be fixed first",
            "fix the FAIL lines above, then run the doctor again",
            &[],
        ));
    }
    Ok(summarize(&cfg, checks))
}

/// What a model without BatchNorm layers says in place of each BN check.
const NO_BATCHNORM: &str =
    "no BatchNorm layers (folded into the convolutions when the model was exported): --bn has no effect";

fn bn_config_check(cfg: &TrainConfig, has_bn: bool, checks: &mut Vec<Check>) {
    if !has_bn {
        checks.push(check(CheckId::BnBatch, Status::Pass, NO_BATCHNORM, "", &[]));
        return;
    }
    match (cfg.bn, cfg.batch) {
        (BnMode::Train, 1) => checks.push(check(
            CheckId::BnBatch,
            Status::Fail,
            "--bn train with --batch 1: BatchNorm needs more than one value per channel (the ASPP image-pooling branch has one per image)",
            "use --batch 8 (at least 2), or --bn frozen with trained statistics",
            &["--batch 8"],
        )),
        (BnMode::Train, 2) => checks.push(check(
            CheckId::BnBatch,
            Status::Warn,
            "--bn train with --batch 2: batch statistics of 2 images are noisy and the running statistics follow them",
            "use --batch 8 or more with --bn train, or --bn frozen with trained statistics (DeepLab's small-batch recipe)",
            &["--batch 8"],
        )),
        (BnMode::Train, b) => checks.push(check(CheckId::BnBatch, Status::Pass, format!("--bn train with --batch {b}"), "", &[])),
        (BnMode::Frozen, b) => checks.push(check(CheckId::BnBatch, Status::Pass, format!("--bn frozen with --batch {b}: running statistics are used"), "", &[])),
    }
}

/// A fixed batch of the first train images (center crops, no randomness).
fn fixed_batch(
    cfg: &TrainConfig,
    ds: &Dataset,
    norm: &crate::layout::Normalization,
    opts: &DoctorOptions,
) -> Result<data::Batch> {
    let n = cfg.batch.clamp(1, opts.max_batch).min(ds.items.len());
    let crop = cfg.crop.min(opts.max_crop).max(norm.size_multiple);
    let spec = LoaderSpec {
        items: ds.items.clone(),
        batches: vec![(0..n).collect()],
        classes: cfg.classes,
        norm: *norm,
        augment: Some(Augment { crop, scale: (1.0, 1.0), flip: false }),
        resize: None,
        seed: 0,
        epoch: 0,
    };
    Loader::start(spec, 1).next().expect("one batch")
}

struct ZeroGrads<'a> {
    grads: &'a GradientsParams,
    path: Vec<String>,
    zero: Vec<String>,
}

impl ModuleVisitor for ZeroGrads<'_> {
    crate::model::track_module_path!(path);
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !param.is_require_grad() {
            return;
        }
        if let Some(g) = self.grads.get::<D>(param.id)
            && g.abs().max().into_scalar::<f32>() == 0.0
        {
            self.zero.push(self.path.join("."));
        }
    }
}

/// Loss of `steps` steps at constant `lr` on `batch`, from the initial model; returns the losses,
/// the model after them, and the parameters whose first gradient was exactly zero.
fn overfit<M: SegModel>(
    cfg: &TrainConfig,
    model: M,
    batch: &data::Batch,
    device: &Device,
    lr: f64,
    steps: usize,
) -> (Vec<f64>, M, Vec<String>) {
    let mut cfg = cfg.clone();
    cfg.lr = Some(lr);
    let mut optim = crate::setup::make_optimizer(&cfg);
    let mut model = model;
    let (mut losses, mut zero) = (vec![], vec![]);
    for step in 0..steps {
        let (x, y) = crate::tensors::batch_tensors(batch, device);
        let loss = loss::compute(&cfg.loss, model.logits(x), y, cfg.class_weights.as_deref());
        let value = loss.clone().into_scalar::<f32>() as f64;
        losses.push(value);
        if !value.is_finite() {
            break;
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        if step == 0 {
            let mut v = ZeroGrads { grads: &grads, path: vec![], zero: vec![] };
            model.visit(&mut v);
            zero = v.zero;
        }
        model = optim.step(lr, model, grads);
    }
    (losses, model, zero)
}

/// The mean cross-entropy of each class's pixels in `masks` (255 and labels outside the classes
/// left out), by class, for the classes present.
fn per_class_loss(logits: Tensor<4>, masks: &[u8], classes: usize) -> BTreeMap<usize, f64> {
    let [n, c, h, w] = logits.dims();
    let x = logits.into_data().convert::<f32>().try_to_vec::<f32>().expect("float logits");
    let mut sums: BTreeMap<usize, (f64, u64)> = BTreeMap::new();
    for b in 0..n {
        for p in 0..h * w {
            let label = masks[b * h * w + p] as usize;
            if label >= classes.min(c) {
                continue;
            }
            let value = |k: usize| x[(b * c + k) * h * w + p] as f64;
            let max = (0..c).map(value).fold(f64::NEG_INFINITY, f64::max);
            let lse = max + (0..c).map(|k| (value(k) - max).exp()).sum::<f64>().ln();
            let e = sums.entry(label).or_insert((0.0, 0));
            e.0 += lse - value(label);
            e.1 += 1;
        }
    }
    sums.into_iter().map(|(k, (s, count))| (k, s / count as f64)).collect()
}

fn fall(losses: &[f64]) -> f64 {
    match (losses.first(), losses.last()) {
        (Some(&a), Some(&b)) if a.is_finite() && b.is_finite() && a > 0.0 => 1.0 - b / a,
        _ => f64::NEG_INFINITY,
    }
}

fn bn_stats<M: SegModel>(model: &M) -> BTreeMap<String, Vec<f32>> {
    model
        .valid()
        .collect(None, None, false)
        .iter()
        .filter(|t| t.name.ends_with("running_mean") || t.name.ends_with("running_var"))
        .map(|t| (t.name.clone(), model::pack_f32(t)))
        .collect()
}

fn training_checks<M: SegModel>(
    cfg: &TrainConfig,
    ckpt: &Checkpoint,
    model_classes: usize,
    ds: &Dataset,
    opts: &DoctorOptions,
) -> Result<Vec<Check>> {
    let device = model::cpu_device().autodiff();
    device.seed(cfg.seed);
    let batch = fixed_batch(cfg, ds, &ckpt.normalization, opts)?;
    let start: M = crate::setup::build_model(cfg, ckpt, model_classes, &device)?;
    let has_bn = ckpt.info.has_batchnorm();
    let at_init = has_bn && crate::setup::bn_statistics_at_init(&start);
    let t = Trial { cfg, batch, device, start, has_bn, at_init, steps: opts.steps };
    let mut checks = vec![t.trainable(), t.bn_statistics(), t.initial_loss(model_classes)];
    let (losses, trained, zero) = overfit(cfg, t.start.clone(), &t.batch, &t.device, cfg.base_lr(), t.steps);
    checks.push(t.overfit(&losses, &trained));
    checks.push(gradients_check(&zero));
    checks.push(t.drift(&trained, losses.len()));
    checks.push(t.train_eval_gap(&trained, losses.len()));
    Ok(checks)
}

/// What the training checks share: the recipe, the fixed batch, the model it starts from, and
/// what its BatchNorm layers are.
struct Trial<'a, M> {
    cfg: &'a TrainConfig,
    batch: data::Batch,
    device: Device,
    start: M,
    has_bn: bool,
    /// Every BN statistic still at mean 0 / variance 1.
    at_init: bool,
    steps: usize,
}

impl<M: SegModel> Trial<'_, M> {
    fn trainable(&self) -> Check {
        let count = crate::setup::parameter_counts(&self.start);
        check(
            CheckId::ModelTrainable,
            if count.0 == 0 { Status::Fail } else { Status::Pass },
            format!("{} of {} parameters trainable ({})", count.0, count.1, config::freeze_flags(&self.cfg.freeze)),
            if count.0 == 0 { "nothing can learn: unfreeze something" } else { "" },
            &[],
        )
    }

    /// BN statistics at their initial values.
    fn bn_statistics(&self) -> Check {
        match (self.cfg.bn, self.at_init) {
            _ if !self.has_bn => check(CheckId::BnStatistics, Status::Pass, NO_BATCHNORM, "", &[]),
            (BnMode::Frozen, true) => check(
                CheckId::BnStatistics,
                Status::Fail,
                "--bn frozen, and every BN running mean is 0 and every variance 1 (never trained): frozen BN then normalizes nothing. \
             A PyTorch peer frozen at such statistics stays at val mIoU 0.14 (all background)",
                "train BN (--bn train with --batch 8) or start from a checkpoint whose BN statistics were trained (--weights)",
                &["--bn train", "--batch 8"],
            ),
            (BnMode::Train, true) => check(
                CheckId::BnStatistics,
                Status::Pass,
                "statistics at their initial values; --bn train will learn them",
                "",
                &[],
            ),
            (_, false) => check(
                CheckId::BnStatistics,
                Status::Pass,
                "BN running statistics were trained (not at mean 0 / variance 1)",
                "",
                &[],
            ),
        }
    }

    /// The cross-entropy at initialization against ln(C).
    fn initial_loss(&self, model_classes: usize) -> Check {
        let cfg = self.cfg;
        let (x, y) = crate::tensors::batch_tensors(&self.batch, &self.device);
        let initial = loss::compute(&LossSpec::default(), self.start.logits(x), y, None).into_scalar::<f32>() as f64;
        let ln_c = (cfg.classes as f64).ln();
        let ratio = initial / ln_c;
        let fresh = cfg.classes != model_classes;
        let status =
            if !initial.is_finite() || (fresh && !(0.5..=2.0).contains(&ratio)) { Status::Warn } else { Status::Pass };
        check(
            CheckId::LossInitial,
            status,
            format!(
                "cross-entropy {initial:.4} at initialization, ln({}) = {ln_c:.4}, ratio {ratio:.2}{}",
                cfg.classes,
                if fresh { " (fresh head)" } else { "" }
            ),
            if status == Status::Pass {
                String::new()
            } else if ratio > 2.0 {
                "far above ln(C): the head starts confidently wrong — logits are large (inputs not normalized as the model \
             expects, BN statistics that do not fit the data, or a bad initialization)"
                .into()
            } else {
                "far below ln(C) for a fresh head: check that the labels are not nearly all one class".into()
            },
            &[],
        )
    }

    /// Overfit one batch with the user's recipe, judged on the classes present in it: the loss
    /// of each class (its pixels' mean cross-entropy), averaged over the classes, must fall too,
    /// so a batch whose loss falls only because one class is left (binary 0/255 masks) fails.
    /// Where it does not fit, a learning-rate sweep says which rate does.
    fn overfit(&self, losses: &[f64], trained: &M) -> Check {
        let (cfg, batch) = (self.cfg, &self.batch);
        let x = crate::tensors::batch_tensors(batch, &self.device).0;
        let start_classes = per_class_loss(self.start.logits(x.clone()), &batch.masks, cfg.classes);
        let classes_fall = |m: &M| {
            let after = per_class_loss(m.logits(x.clone()), &batch.masks, cfg.classes);
            let mean = |l: &BTreeMap<usize, f64>| l.values().sum::<f64>() / l.len().max(1) as f64;
            1.0 - mean(&after) / mean(&start_classes).max(1e-12)
        };
        let (f, fc) = (fall(losses), classes_fall(trained));
        let present: Vec<usize> = start_classes.keys().copied().collect();
        let measured = format!(
            "{} steps at --lr {:e} on {} images of {}²: loss {:.4} -> {:.4} ({:.0}% lower); the mean of the {} present \
             classes' own losses {:.0}% lower",
            losses.len(),
            cfg.base_lr(),
            batch.n,
            batch.h,
            losses.first().copied().unwrap_or(f64::NAN),
            losses.last().copied().unwrap_or(f64::NAN),
            f * 100.0,
            present.len(),
            fc * 100.0
        );
        if present.len() < 2 {
            return check(
                CheckId::TrainOverfit,
                Status::Fail,
                format!(
                    "{measured}; but the batch's labelled pixels hold class {present:?} only: predicting it everywhere \
                     drives the loss down, which shows nothing about learning"
                ),
                "the labels give the model one class to learn: see the labels.* checks (0/255 masks need --label-map 255:1)",
                &[],
            );
        }
        if f >= 0.5 && fc >= 0.5 {
            return check(CheckId::TrainOverfit, Status::Pass, measured, "", &[]);
        }
        let sweep: Vec<(f64, f64)> = [1e-4, 1e-3, 1e-2, 3e-2, 1e-1]
            .into_iter()
            .filter(|lr| (lr - cfg.base_lr()).abs() / cfg.base_lr() >= 1e-6)
            .map(|lr| {
                let (l, m, _) = overfit(cfg, self.start.clone(), batch, &self.device, lr, self.steps);
                (lr, fall(&l).min(classes_fall(&m)))
            })
            .collect();
        sweep_verdict(cfg, measured, &sweep)
    }

    /// Running-statistic drift over the overfit steps.
    fn drift(&self, trained: &M, steps: usize) -> Check {
        let (cfg, has_bn, at_init) = (self.cfg, self.has_bn, self.at_init);
        let (before, after) = (bn_stats(&self.start), bn_stats(trained));
        let (mut drift, mut n) = (0f64, 0usize);
        for (name, b) in &before {
            if !name.ends_with("running_var") {
                continue;
            }
            let a = &after[name];
            drift += b.iter().zip(a).map(|(x, y)| ((y - x).abs() / x.abs().max(1e-6)) as f64).sum::<f64>()
                / b.len().max(1) as f64;
            n += 1;
        }
        let drift = drift / n.max(1) as f64;
        // From initial statistics any drift is expected (they converge to the data's); trained ones
        // that swing by more than their own size point at a wrong momentum or mismatched inputs.
        let swinging = !at_init && drift > 1.0;
        check(
            CheckId::BnDrift,
            if swinging { Status::Warn } else { Status::Pass },
            if !has_bn {
                NO_BATCHNORM.to_string()
            } else {
                format!(
                    "running variances moved by {:.1}% on average over {} steps (--bn {:?}){}",
                    drift * 100.0,
                    steps,
                    cfg.bn,
                    if at_init && cfg.bn == BnMode::Train { ", converging from their initial values" } else { "" }
                )
            },
            if swinging {
                "trained running statistics swing with every batch: check the checkpoint's BN momentum convention and that the \
             inputs are normalized as the model expects"
            } else {
                ""
            },
            &[],
        )
    }

    /// Train-mode versus eval-mode loss on the same batch after the overfit steps.
    fn train_eval_gap(&self, trained: &M, steps: usize) -> Check {
        let (cfg, batch, at_init) = (self.cfg, &self.batch, self.at_init);
        let ce = LossSpec::default();
        let (x, y) = crate::tensors::batch_tensors(batch, &self.device);
        let train_loss = loss::compute(&ce, trained.logits(x), y, None).into_scalar::<f32>() as f64;
        let eval_model = trained.valid();
        let cpu = model::cpu_device();
        let (x, y) = crate::tensors::batch_tensors(batch, &cpu);
        let eval_loss = loss::compute(&ce, eval_model.logits(x), y, None).into_scalar::<f32>() as f64;
        let gap = eval_loss / train_loss.max(1e-6);
        // A ratio alone misleads once the batch is overfit (0.03 against 0.6 is 20x, yet eval mode
        // kept most of the progress). The failure to catch is an eval loss no better than knowing
        // only the class frequencies: the entropy of the batch's label distribution (255 excluded).
        let prior = label_entropy(&batch.masks, cfg.classes);
        // With --bn train from initial statistics the running averages are still converging after a
        // few steps; the gap then says nothing about the recipe.
        let converging = at_init && cfg.bn == BnMode::Train;
        let status = if converging {
            Status::Pass
        } else if gap > 10.0 && eval_loss >= prior {
            Status::Fail
        } else if gap > 3.0 && eval_loss >= 0.5 * prior {
            Status::Warn
        } else {
            Status::Pass
        };
        Check {
            name: CheckId::BnTrainEvalGap,
            status,
            measured: format!(
                "same batch after {} steps: train-mode loss {train_loss:.4}, eval-mode loss {eval_loss:.4} ({gap:.1}x); \
             predicting only the class frequencies scores {prior:.4}{}",
                steps,
                if converging { "; running statistics still converging from their initial values" } else { "" }
            ),
            fix: if status == Status::Pass {
                String::new()
            } else {
                "a small training loss and a huge eval loss: the running statistics used at eval do \
             not describe the data. Train BN with enough images per batch, or freeze it at trained statistics"
                    .into()
            },
            flags: if status == Status::Pass || cfg.bn == BnMode::Train {
                vec![]
            } else {
                vec!["--bn train".into(), "--batch 8".into()]
            },
        }
    }
}

/// What a learning-rate sweep over the overfit batch says: the smallest rate that fits it
/// (larger ones fit it faster but train less stably), or that none does.
fn sweep_verdict(cfg: &TrainConfig, measured: String, sweep: &[(f64, f64)]) -> Check {
    let tried = sweep.iter().map(|(lr, f)| format!("{lr:e}: {:.0}%", f * 100.0)).collect::<Vec<_>>().join(", ");
    match sweep.iter().filter(|(_, f)| *f >= 0.5).map(|b| b.0).reduce(f64::min) {
        Some(lr) => {
            let flag = format!("--lr {lr:e}");
            Check {
                name: CheckId::TrainOverfit,
                status: Status::Fail,
                measured: format!("{measured}; learning-rate sweep (loss drop): {tried}"),
                fix: format!(
                    "the recipe cannot fit even one batch at --lr {:e}; {lr:e} does: train with {flag}",
                    cfg.base_lr()
                ),
                flags: vec![flag],
            }
        }
        None => check(
            CheckId::TrainOverfit,
            Status::Fail,
            format!("{measured}; no learning rate in the sweep fits it either ({tried})"),
            "the problem is not the learning rate: check the labels, the loss (--loss ce), and what is frozen",
            &[],
        ),
    }
}

/// Parameters whose gradient in the first overfit step was exactly zero.
fn gradients_check(zero: &[String]) -> Check {
    if zero.is_empty() {
        return check(
            CheckId::TrainGradients,
            Status::Pass,
            "every trainable parameter receives a non-zero gradient",
            "",
            &[],
        );
    }
    check(
        CheckId::TrainGradients,
        Status::Warn,
        format!("{} trainable parameters have an exactly zero gradient: {}", zero.len(), first_names(zero, 4)),
        "layers whose gradient is exactly zero do not learn: dead ReLUs, a detached branch, or inputs that are always zero",
        &[],
    )
}

/// Entropy (nats) of the label distribution of `masks` over classes `0..classes` (255 and other
/// values excluded): the cross-entropy of a model that knows only the class frequencies.
fn label_entropy(masks: &[u8], classes: usize) -> f64 {
    let mut counts = vec![0u64; classes];
    for &v in masks {
        if let Some(c) = counts.get_mut(v as usize) {
            *c += 1;
        }
    }
    let total: u64 = counts.iter().sum();
    counts.iter().filter(|&&c| c > 0).map(|&c| c as f64 / total as f64).map(|p| -p * p.ln()).sum()
}

/// Orders causes (FAIL before WARN, then by how fundamental the check is) and builds the
/// suggested command.
fn summarize(cfg: &TrainConfig, checks: Vec<Check>) -> DoctorReport {
    let rank = |c: &Check| (c.status, c.name.rank());
    let mut bad: Vec<&Check> = checks.iter().filter(|c| c.status != Status::Pass).collect();
    bad.sort_by_key(|c| rank(c));
    let summary: Vec<String> = if bad.is_empty() {
        vec!["nothing found: the setup can learn (every check passed)".into()]
    } else {
        bad.iter()
            .map(|c| format!("{} {}: {}", c.status, c.name, if c.fix.is_empty() { &c.measured } else { &c.fix }))
            .collect()
    };
    let mut flags: Vec<String> = vec![];
    for c in &bad {
        for f in &c.flags {
            let key = f.split_whitespace().next().unwrap_or("");
            if !flags.iter().any(|g| g.split_whitespace().next() == Some(key)) {
                flags.push(f.clone());
            }
        }
    }
    let suggested_command = (!flags.is_empty()).then(|| suggested_command(cfg, &flags));
    DoctorReport { checks, summary, suggested_command }
}

/// `segtune train` with the user's whole recipe ([`TrainConfig::flags`]), each fix's flag in
/// place of the recipe's own (`--lr`, `--batch`, ... ; several `--freeze` rules go together).
fn suggested_command(cfg: &TrainConfig, fixes: &[String]) -> String {
    let fixed = |flag: &str| fixes.iter().any(|f| f.split_whitespace().next() == Some(flag));
    let mut cmd = String::from("segtune train");
    for (flag, value) in cfg.flags() {
        if fixed(flag) {
            continue;
        }
        cmd += &format!(" {flag}");
        if !value.is_empty() {
            cmd += &format!(" {value}");
        }
        if flag == "--data" {
            cmd += " --out RUN_DIR";
        }
    }
    for f in fixes {
        cmd += &format!(" {f}");
    }
    cmd
}

/// Writes the report as JSON (atomically).
pub fn write_json(report: &DoctorReport, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(report).expect("report serializes");
    data::write_atomic(path, |f| std::io::Write::write_all(f, text.as_bytes()))
}

#[cfg(test)]
mod tests {
    /// The suggested command keeps every flag of the user's recipe (each fix replacing its own)
    /// and quotes what a shell would split.
    #[test]
    fn the_suggested_command_keeps_the_recipe_and_quotes_paths() {
        use crate::config::{Freeze, OptimizerKind, TrainConfig};
        let mut cfg = TrainConfig::new("my data/voc".into());
        cfg.weights = Some("ckpts/it's.onnx".into());
        (cfg.classes, cfg.warmup_steps, cfg.seed, cfg.optimizer) = (6, 5, 3, OptimizerKind::Adamw);
        cfg.grad_clip = Some(1.5);
        cfg.class_weights = Some(vec![0.5, 2.0]);
        cfg.freeze = vec![Freeze::Backbone, Freeze::Glob("decoder.aspp.*".into())];
        cfg.flip = false;
        cfg.dataset.label_map = "255:1".parse().unwrap();
        let cmd = super::suggested_command(&cfg, &["--lr 1e-2".into(), "--batch 8".into()]);
        for want in [
            "--data 'my data/voc' --out RUN_DIR",
            "--weights 'ckpts/it'\\''s.onnx'",
            "--classes 6",
            "--warmup 5",
            "--seed 3",
            "--optimizer adamw",
            "--grad-clip 1.5",
            "--class-weights 0.5,2",
            "--no-flip",
            "--label-map 255:1",
            "--freeze backbone --freeze 'decoder.aspp.*'",
            "--crop 512 --epochs 30",
        ] {
            assert!(cmd.contains(want), "missing {want:?} in {cmd}");
        }
        assert!(cmd.ends_with("--lr 1e-2 --batch 8"), "{cmd}");
        assert_eq!(cmd.matches("--lr").count(), 1, "the fix replaces the recipe's --lr: {cmd}");
        assert_eq!(cmd.matches("--batch").count(), 1, "{cmd}");
    }

    #[test]
    fn label_entropy_is_the_loss_of_predicting_class_frequencies() {
        // Half 0, half 1 (255 and out-of-range values ignored): ln 2.
        let e = super::label_entropy(&[0, 1, 0, 1, 255, 9], 4);
        assert!((e - std::f64::consts::LN_2).abs() < 1e-12, "{e}");
        assert_eq!(super::label_entropy(&[3, 3, 3], 4), 0.0);
    }
}
