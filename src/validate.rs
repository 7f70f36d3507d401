//! `segtune validate`: an ONNX model scored with onnxruntime over a dataset split through the
//! test-time pipeline it records (confusion matrix, mIoU, per-class IoU, optional HTML report);
//! and `segtune parity`: the burn model and onnxruntime on the same seeded input.

use std::time::Instant;

use ndarray::Array4;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::layout::{Layout, Normalization};
use crate::model::{Checkpoint, SegModel};
use crate::runtime::OrtModel;
pub use crate::tensors::{compare_logits, seeded_input, to_array, to_tensor};

/// What `segtune parity` measures.
#[derive(Debug, Clone, Serialize)]
pub struct ParityReport {
    pub model: String,
    pub weights: String,
    pub batch: usize,
    pub size: usize,
    pub max_abs_diff: f32,
    pub mean_abs_diff: f32,
    /// Fraction of pixels whose argmax class is the same in both.
    pub argmax_agreement: f64,
    /// Warm forward time of the burn model on the CPU, milliseconds.
    pub burn_ms: f64,
    /// Warm forward time of onnxruntime, milliseconds.
    pub ort_ms: f64,
    pub tol: f32,
    pub pass: bool,
}

impl std::fmt::Display for ParityReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "model       {} (weights: {})", self.model, self.weights)?;
        writeln!(f, "input       batch {} x {}x{}, seeded", self.batch, self.size, self.size)?;
        writeln!(f, "max |Δ|     {:.3e} (tolerance {:.1e})", self.max_abs_diff, self.tol)?;
        writeln!(f, "mean |Δ|    {:.3e}", self.mean_abs_diff)?;
        writeln!(f, "argmax      {:.4}% of pixels agree", self.argmax_agreement * 100.0)?;
        writeln!(f, "forward     burn {:.1} ms, onnxruntime {:.1} ms", self.burn_ms, self.ort_ms)?;
        write!(f, "parity      {}", if self.pass { "PASS" } else { "FAIL" })
    }
}

/// Checks that `size` suits a model.
pub fn check_size(size: usize, norm: &Normalization) -> Result<()> {
    let m = norm.size_multiple;
    if size == 0 || !size.is_multiple_of(m) {
        return Err(Error::BadArgument(format!(
            "--size {size}: expected a positive multiple of {m}, found {size} (remainder {})",
            size % m
        )));
    }
    Ok(())
}

/// Settings of `segtune parity`.
#[derive(Debug, Clone, Copy)]
pub struct ParityOptions {
    /// Images per batch (default 2).
    pub batch: usize,
    /// Input height and width in pixels, a multiple of the model's size multiple (default 256).
    pub size: usize,
    /// Largest max |Δ| of logits that passes (default 1e-4).
    pub tol: f32,
    /// Seed of the input (default 0).
    pub seed: u64,
    /// onnxruntime intra-op threads, 0 for its default (default 0).
    pub threads: usize,
    /// Timed runs of each after one warm-up; the median is reported (default 3).
    pub repeat: usize,
}

impl Default for ParityOptions {
    fn default() -> Self {
        ParityOptions { batch: 2, size: 256, tol: 1e-4, seed: 0, threads: 0, repeat: 3 }
    }
}

/// Runs `f` once to warm up, then `repeat` times; returns the last result and the median time
/// in milliseconds.
fn timed<T>(repeat: usize, mut f: impl FnMut() -> Result<T>) -> Result<(T, f64)> {
    let mut out = f()?;
    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let t = Instant::now();
        out = f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((out, crate::metrics::median(&mut times).unwrap_or(f64::NAN)))
}

/// The `--size` and `--batch` of `segtune parity` on a graph that runs at `shape`: the given ones,
/// else the graph's fixed ones, else the defaults; a given one the graph cannot take is refused,
/// naming the flag that fits.
pub fn parity_size(ckpt: &Checkpoint, size: Option<usize>, batch: Option<usize>) -> Result<(usize, usize)> {
    let shape = ckpt.input.unwrap_or_default();
    let defaults = ParityOptions::default();
    let fixed = |what: String| Error::bad_file(ckpt.origin(), format!("its graph runs at {what}"));
    let size = match (shape.size, size) {
        (Some((h, w)), Some(s)) if (s, s) != (h, w) => {
            return Err(fixed(format!("{h}×{w} only (a size fixed inside it), not --size {s}; use --size {h}")));
        }
        (Some((h, _)), _) => h,
        (None, s) => s.unwrap_or(defaults.size),
    };
    let batch = match (shape.batch, batch) {
        (Some(b), Some(n)) if n != b => {
            return Err(fixed(format!("batches of {b} only, not --batch {n}; use --batch {b}")));
        }
        (Some(b), _) => b,
        (None, n) => n.unwrap_or(defaults.batch),
    };
    Ok((size, batch))
}

/// [`parity`] for the checkpoint's own model type.
pub fn parity_check(ckpt: &Checkpoint, opts: &ParityOptions) -> Result<ParityReport> {
    struct Run<'a>(&'a Checkpoint, &'a ParityOptions);
    impl crate::model::ModelFn for Run<'_> {
        type Output = Result<ParityReport>;
        fn call<M: SegModel>(self) -> Self::Output {
            parity::<M>(self.0, self.1)
        }
    }
    crate::model::with_model(ckpt.info, Run(ckpt, opts))
}

/// Runs `model` (burn, CPU) and onnxruntime on the checkpoint's graph with the same seeded
/// input and compares the logits. Times are medians of warm runs.
pub fn parity<M: SegModel>(ckpt: &Checkpoint, opts: &ParityOptions) -> Result<ParityReport> {
    let ParityOptions { batch, size, tol, seed, threads, repeat } = *opts;
    check_size(size, &ckpt.normalization)?;
    if batch == 0 {
        return Err(Error::BadArgument("--batch 0: expected at least 1".into()));
    }
    let device = crate::model::cpu_device();
    let model: M = ckpt.load(&device)?;
    let input = seeded_input(batch, size, &ckpt.normalization, seed);
    let (burn_out, burn_ms) = timed(repeat, || Ok(to_array(model.logits(to_tensor(input.view(), &device)))))?;
    let bytes = ckpt.onnx_bytes()?;
    let mut ort = OrtModel::from_bytes(&bytes, &ckpt.origin(), threads)?;
    let (ort_out, ort_ms) = timed(repeat, || ort.run_logits(input.view(), ckpt.normalization.layout))?;
    if burn_out.shape() != ort_out.shape() {
        return Err(Error::CheckFailed(format!(
            "output shapes differ: burn {:?}, onnxruntime {:?}",
            burn_out.shape(),
            ort_out.shape()
        )));
    }
    let (max_abs_diff, mean_abs_diff, argmax_agreement) = compare_logits(&burn_out, &ort_out);
    Ok(ParityReport {
        model: ckpt.info.name.to_string(),
        weights: ckpt.origin(),
        batch,
        size,
        max_abs_diff,
        mean_abs_diff,
        argmax_agreement,
        burn_ms,
        ort_ms,
        tol,
        pass: max_abs_diff <= tol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_logits_counts_argmax_agreement() {
        let a = Array4::from_shape_vec((1, 2, 1, 2), vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        let b = Array4::from_shape_vec((1, 2, 1, 2), vec![1.0, 2.0, 0.5, 1.0]).unwrap();
        let (max, mean, agree) = compare_logits(&a, &b);
        assert_eq!(max, 2.0);
        assert!((mean - 0.625).abs() < 1e-7);
        assert_eq!(agree, 0.5);
    }

    #[test]
    fn size_must_be_a_multiple_of_16() {
        let n = Normalization::IMAGENET;
        assert!(check_size(64, &n).is_ok());
        let e = check_size(250, &n).unwrap_err().to_string();
        assert!(e.contains("multiple of 16") && e.contains("found 250"), "{e}");
        assert!(check_size(0, &n).is_err());
    }

    #[test]
    fn seeded_input_is_deterministic_and_normalized() {
        let n = Normalization::IMAGENET;
        let a = seeded_input(1, 16, &n, 7);
        assert_eq!(a, seeded_input(1, 16, &n, 7));
        assert_ne!(a, seeded_input(1, 16, &n, 8));
        let lo = (0.0 - n.mean[0]) / n.std[0];
        let hi = (1.0 - n.mean[0]) / n.std[0];
        assert!(a.index_axis(ndarray::Axis(1), 0).iter().all(|&v| v >= lo && v <= hi));
    }
}

/// What `segtune validate` measures.
#[derive(Debug, Clone, Serialize)]
pub struct ValidationReport {
    pub file: String,
    pub data: String,
    pub split: String,
    pub num_images: usize,
    /// How images reached the model, in words.
    pub input: String,
    /// The test-time pipeline used, and where it came from.
    pub pipeline: crate::pipeline::Pipeline,
    pub miou: f64,
    pub pixel_accuracy: f64,
    pub frequency_weighted_iou: f64,
    pub class_names: Vec<String>,
    /// IoU per class, `null` for classes absent from both ground truth and prediction.
    pub per_class_iou: Vec<Option<f64>>,
    pub pixels: u64,
    pub seconds: f64,
    /// The graph's final upsampling, where the mask's own did it (as in infer's summary.json).
    pub folded_resize: Option<String>,
    pub parity: Option<ExportParity>,
    /// `--baseline`: the same split through another model (e.g. the fp32 one a quantized model
    /// came from), with the same pipeline.
    pub baseline: Option<Baseline>,
}

/// Another model's scores on the same images, and this model's difference from them.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    pub file: String,
    pub miou: f64,
    pub pixel_accuracy: f64,
    /// This model's mIoU minus the baseline's.
    pub miou_delta: f64,
    /// The largest drop of one class's IoU, and that class.
    pub worst_class_drop: Option<(String, f64)>,
}

/// The export against the burn model of its run.
#[derive(Debug, Clone, Serialize)]
pub struct ExportParity {
    pub run: String,
    pub images: usize,
    pub max_abs_diff: f32,
    pub argmax_agreement: f64,
    pub pass: bool,
}

impl std::fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} on {} ({} split, {} images, {} pixels; input {})",
            self.file, self.data, self.split, self.num_images, self.pixels, self.input
        )?;
        writeln!(f, "{:>4}  {:<16} {:>8}", "id", "class", "IoU")?;
        for (i, (name, iou)) in self.class_names.iter().zip(&self.per_class_iou).enumerate() {
            let iou = iou.map_or("absent".to_string(), |v| format!("{v:.4}"));
            writeln!(f, "{i:>4}  {name:<16} {iou:>8}")?;
        }
        writeln!(
            f,
            "mIoU {:.4}   pixel accuracy {:.4}   frequency-weighted IoU {:.4}",
            self.miou, self.pixel_accuracy, self.frequency_weighted_iou
        )?;
        if let Some(p) = &self.parity {
            writeln!(
                f,
                "parity vs burn ({}): {} images, max |Δ| {:.3e}, argmax agreement {:.4}% -> {}",
                p.run,
                p.images,
                p.max_abs_diff,
                p.argmax_agreement * 100.0,
                if p.pass { "PASS" } else { "FAIL" }
            )?;
        }
        if let Some(b) = &self.baseline {
            writeln!(
                f,
                "baseline {}: mIoU {:.4}, this model {:+.4} ({:+.2} points){}",
                b.file,
                b.miou,
                b.miou_delta,
                b.miou_delta * 100.0,
                b.worst_class_drop.as_ref().map_or(String::new(), |(c, d)| format!("; largest class drop {c} {d:+.4}"))
            )?;
        }
        write!(f, "took {:.1} s", self.seconds)
    }
}

/// `segtune validate FILE.onnx --data DIR`: onnxruntime over a split, scored from a confusion
/// matrix; with `parity_run`, also the export's logits against the run's burn model.
pub fn validate_onnx(
    file: &std::path::Path,
    data: &std::path::Path,
    split: &str,
    parity_run: Option<&std::path::Path>,
    threads: usize,
) -> Result<ValidationReport> {
    validate_with(file, data, split, &ValidateOptions { parity: parity_run, threads, ..Default::default() })
}

/// How `segtune validate` reads the data and what else it writes.
#[derive(Debug, Clone, Default)]
pub struct ValidateOptions<'a> {
    /// The dataset's layout and label map.
    pub spec: crate::data::DataSpec,
    /// A file of class names (else the model's metadata, else the dataset's).
    pub class_names: Option<&'a std::path::Path>,
    /// A run whose burn model the export's logits are compared with, on the first images.
    pub parity: Option<&'a std::path::Path>,
    /// onnxruntime intra-op threads (0: its default).
    pub threads: usize,
    /// A folder to write the report into (confusion matrix, IoU bars, the worst images, index.html).
    pub report: Option<&'a std::path::Path>,
    /// How many of the worst images the report shows.
    pub worst: usize,
    /// `--size`: the longer side the images are scaled to (else the model's recorded pipeline).
    pub size: Option<usize>,
    /// `--square`: letterboxed into `size × size`.
    pub square: bool,
    /// Where onnxruntime runs the model.
    pub provider: crate::runtime::Provider,
    /// Another model to score on the same split with the same flags, reported beside this one.
    pub baseline: Option<&'a std::path::Path>,
    /// Sliding-window tiles, test-time scales and flips.
    pub test_time: crate::predict::TestTimeArgs,
}

/// [`validate_onnx`] as `opts` says.
pub fn validate_with(
    file: &std::path::Path,
    data: &std::path::Path,
    split: &str,
    opts: &ValidateOptions<'_>,
) -> Result<ValidationReport> {
    let started = Instant::now();
    let (mut model, ds, names) = open_for_validation(file, data, split, opts)?;
    let pipeline = model.pipeline(file, opts.size, opts.square)?;
    opts.test_time.check(pipeline.normalization.size_multiple)?;
    if opts.parity.is_some() && !opts.test_time.is_plain() {
        return Err(Error::BadArgument(
            "--parity compares one forward pass with burn's: leave out --tile, --scales and --flip".into(),
        ));
    }
    let mut scoring = Scoring {
        cm: crate::metrics::ConfusionMatrix::new(model.classes),
        first: vec![],
        keep_first: opts.parity.is_some(),
        worst: opts.report.map(|_| crate::report::Worst::new(opts.worst)),
    };
    score(&mut model, &ds, &pipeline, &opts.test_time, &mut scoring)?;
    let parity = match opts.parity {
        Some(run) => Some(export_parity(run, &scoring.first)?),
        None => None,
    };
    let s = scoring.cm.scores();
    let report = ValidationReport {
        file: file.display().to_string(),
        data: data.display().to_string(),
        split: split.to_string(),
        num_images: ds.items.len(),
        input: match opts.test_time.describe() {
            tt if tt.is_empty() => pipeline.describe(),
            tt => format!("{}; {tt}", pipeline.describe()),
        },
        pipeline,
        miou: s.miou,
        pixel_accuracy: s.pixel_accuracy,
        frequency_weighted_iou: s.frequency_weighted_iou,
        class_names: names,
        per_class_iou: s.per_class_iou,
        pixels: s.pixels,
        seconds: started.elapsed().as_secs_f64(),
        folded_resize: model.upsampling.map(|u| u.describe()),
        parity,
        baseline: None,
    };
    let report = match opts.baseline {
        Some(other) => with_baseline(report, other, data, split, opts)?,
        None => report,
    };
    if let (Some(dir), Some(worst)) = (opts.report, scoring.worst) {
        write_report(dir, &report, &scoring.cm, worst)?;
    }
    Ok(report)
}

/// `report` with `other` scored on the same split and flags beside it.
fn with_baseline(
    mut report: ValidationReport,
    other: &std::path::Path,
    data: &std::path::Path,
    split: &str,
    opts: &ValidateOptions<'_>,
) -> Result<ValidationReport> {
    let plain = ValidateOptions { parity: None, report: None, baseline: None, ..opts.clone() };
    let b = validate_with(other, data, split, &plain)?;
    if b.per_class_iou.len() != report.per_class_iou.len() {
        return Err(Error::bad_file(
            other,
            format!("expected a baseline with {} classes, found {}", report.per_class_iou.len(), b.per_class_iou.len()),
        ));
    }
    let worst_class_drop = report
        .per_class_iou
        .iter()
        .zip(&b.per_class_iou)
        .zip(&report.class_names)
        .filter_map(|((a, b), name)| Some((name.clone(), a.unwrap_or(0.0) - (*b)?)))
        .min_by(|x, y| x.1.total_cmp(&y.1));
    report.baseline = Some(Baseline {
        file: other.display().to_string(),
        miou: b.miou,
        pixel_accuracy: b.pixel_accuracy,
        miou_delta: report.miou - b.miou,
        worst_class_drop,
    });
    Ok(report)
}

/// The model in onnxruntime, the split (checked against the model's classes) and the class names.
fn open_for_validation(
    file: &std::path::Path,
    data: &std::path::Path,
    split: &str,
    opts: &ValidateOptions<'_>,
) -> Result<(crate::runtime::OpenedModel, crate::data::Dataset, Vec<String>)> {
    // One forward pass per image folds the graph's final upsampling into the mask's, as infer
    // does; --parity compares the full graph's logits with burn's.
    let fold = opts.test_time.is_plain() && opts.parity.is_none();
    let model = crate::runtime::OpenedModel::open(file, opts.threads, true, opts.provider, fold)?;
    let classes = model.classes;
    let ds = crate::data::Dataset::open_with(data, split, &opts.spec)?;
    let names = match (opts.class_names, &model.class_names) {
        (None, Some(names)) => names.clone(),
        (names_file, _) => crate::data::class_names(data, ds.layout, classes, names_file)?,
    };
    ds.validate(classes).map_err(|e| match e {
        Error::BadFile { path, problem } => Error::BadFile {
            path,
            problem: format!("{problem} (the model {} has {classes} output classes)", file.display()),
        },
        other => other,
    })?;
    if model.input.batch.is_some_and(|b| b != 1) {
        return Err(Error::bad_file(
            file,
            format!("its graph runs {} only; validate runs one image at a time", model.input.describe()),
        ));
    }
    Ok((model, ds, names))
}

/// What validation accumulates over the images.
struct Scoring {
    cm: crate::metrics::ConfusionMatrix,
    /// The first inputs and logits, for the parity check.
    first: Vec<Run>,
    keep_first: bool,
    /// The report's worst images, when a report is written.
    worst: Option<crate::report::Worst>,
}

impl Scoring {
    /// One image: its labels against the prediction; `picture` draws image | truth | prediction
    /// where the report wants it.
    /// `run` is the input and logits of a single forward pass (kept for the parity check), `None`
    /// for tiles and augmented views. The logits' channels are checked where they are made.
    fn add(
        &mut self,
        id: &str,
        run: Option<Run>,
        (masks, pred): (&[u8], &[u8]),
        picture: impl FnOnce() -> image::RgbImage,
    ) -> Result<()> {
        let classes = self.cm.classes;
        self.cm.update(masks, pred);
        if let Some(worst) = self.worst.as_mut() {
            let mut one = crate::metrics::ConfusionMatrix::new(classes);
            one.update(masks, pred);
            worst.offer(one.scores().miou, id, picture);
        }
        if let Some(run) = run.filter(|_| self.keep_first && self.first.len() < 2) {
            self.first.push(run);
        }
        Ok(())
    }
}

/// Each image through `pipeline` (decoded and prepared 8 at a time in parallel), its logits
/// upsampled back to its own size and scored there.
fn score(
    model: &mut crate::runtime::OpenedModel,
    ds: &crate::data::Dataset,
    pipeline: &crate::pipeline::Pipeline,
    test_time: &crate::predict::TestTimeArgs,
    scoring: &mut Scoring,
) -> Result<()> {
    use rayon::prelude::*;
    for chunk in ds.items.chunks(8) {
        let prepared: Vec<_> = chunk
            .par_iter()
            .map(|item| {
                let (image, mask) = crate::data::load_item(item, model.classes)?;
                let (input, inner) = pipeline.prepare(&image);
                Ok((item, image, mask, input, inner))
            })
            .collect::<Result<_>>()?;
        for (item, image, mask, boxed, inner) in prepared {
            let (mw, mh) = (mask.width() as usize, mask.height() as usize);
            let (pred, run) = predict_one(model, test_time, (&boxed, inner), (mw, mh))?;
            let picture = || crate::plots::panel(&image, &mask, &pred);
            scoring.add(&item.id, run, (mask.as_raw(), pred.as_raw()), picture)?;
        }
    }
    Ok(())
}

/// A single forward pass's input and logits.
type Run = (Array4<f32>, Array4<f32>);

/// One image's prediction at `mask_size`: from tiles band by band, from augmented views, or
/// from one forward pass of its prepared input `boxed` (whose input and logits come back too).
fn predict_one(
    model: &mut crate::runtime::OpenedModel,
    test_time: &crate::predict::TestTimeArgs,
    (boxed, inner): (&image::RgbImage, (usize, usize)),
    (mw, mh): (usize, usize),
) -> Result<(image::GrayImage, Option<Run>)> {
    let (classes, norm) = (model.classes, model.norm);
    if let (Some(tile), true) = (test_time.tile, test_time.single_view()) {
        let prepared = crate::predict::Prepared { input: boxed, inner, size: (mw as u32, mh as u32) };
        let pred =
            crate::predict::tiled_image_mask(&mut model.session, &norm, &prepared, (tile, test_time.overlap), classes)?;
        return Ok((pred, None));
    }
    if !test_time.is_plain() {
        let (scores, inner) = crate::predict::scores(&mut model.session, &norm, boxed, inner, test_time)?;
        crate::runtime::check_channels(scores.dim().0, classes, model.session.origin())?;
        return Ok((crate::upsample::upsample_argmax(scores.view(), inner, mw, mh), None));
    }
    let (bw, bh) = (boxed.width() as usize, boxed.height() as usize);
    let mut input = Array4::<f32>::zeros(norm.layout.shape(1, bh, bw));
    crate::imaging::normalize_into(input.index_axis_mut(ndarray::Axis(0), 0), boxed, &norm);
    let logits = model.session.run_logits(input.view(), model.output_layout)?;
    crate::runtime::check_channels(logits.shape()[1], classes, model.session.origin())?;
    let up = model.upsampling.as_ref();
    let pred = crate::upsample::logits_to_mask(logits.index_axis(ndarray::Axis(0), 0), up, (bw, bh), inner, (mw, mh))
        .map_err(|e| Error::Runtime(format!("{}: {e}", model.session.origin())))?;
    // Folded logits are not the graph's: the parity check never sees them (it does not fold).
    Ok((pred, up.is_none().then_some((input, logits))))
}

/// `--report DIR`.
fn write_report(
    dir: &std::path::Path,
    r: &ValidationReport,
    cm: &crate::metrics::ConfusionMatrix,
    worst: crate::report::Worst,
) -> Result<()> {
    let k = cm.classes;
    let confusion = (0..k).map(|t| cm.counts[t * k..(t + 1) * k].to_vec()).collect();
    let summary = vec![
        ("model".to_string(), r.file.clone()),
        ("data".into(), format!("{} ({} split, {} images)", r.data, r.split, r.num_images)),
        ("input".into(), r.input.clone()),
        ("mIoU".into(), format!("{:.4}", r.miou)),
        ("pixel accuracy".into(), format!("{:.4}", r.pixel_accuracy)),
        ("frequency-weighted IoU".into(), format!("{:.4}", r.frequency_weighted_iou)),
    ];
    let title = format!("segtune validate: {}", r.file);
    let report = crate::report::Report {
        title,
        summary,
        class_names: &r.class_names,
        per_class_iou: &r.per_class_iou,
        confusion,
        worst,
    };
    crate::report::write(dir, report).map(|_| ())
}

/// A batch's images as an array shape in its layout.
pub fn batch_shape(batch: &crate::data::Batch) -> (usize, usize, usize, usize) {
    match batch.layout {
        Layout::Nchw => (batch.n, 3, batch.h, batch.w),
        Layout::Nhwc => (batch.n, batch.h, batch.w, 3),
    }
}

/// The run's burn model (CPU) on the same inputs as onnxruntime: max |Δ| ≤ 1e-4 and argmax
/// agreement ≥ 99.99 % pass.
fn export_parity(run: &std::path::Path, pairs: &[(Array4<f32>, Array4<f32>)]) -> Result<ExportParity> {
    let cfg = crate::rundir::load_config(run)?;
    let info = crate::model::find(&cfg.model)?;
    struct Go<'a>(&'a std::path::Path, &'a [(Array4<f32>, Array4<f32>)]);
    impl crate::model::ModelFn for Go<'_> {
        type Output = Result<(f32, f64)>;
        fn call<M: SegModel>(self) -> Self::Output {
            let device = crate::model::cpu_device();
            let model: M = crate::rundir::load_trained(self.0, &device)?;
            let (mut max, mut agree, mut total) = (0f32, 0f64, 0f64);
            for (input, ort) in self.1 {
                let burn = to_array(model.logits(to_tensor(input.view(), &device)));
                let (m, _, a) = compare_logits(&burn, ort);
                let pixels = (ort.shape()[0] * ort.shape()[2] * ort.shape()[3]) as f64;
                max = max.max(m);
                agree += a * pixels;
                total += pixels;
            }
            Ok((max, agree / total.max(1.0)))
        }
    }
    let (max_abs_diff, argmax_agreement) = crate::model::with_model(info, Go(run, pairs))?;
    let pass = max_abs_diff <= 1e-4 && argmax_agreement >= 0.9999;
    Ok(ExportParity { run: run.display().to_string(), images: pairs.len(), max_abs_diff, argmax_agreement, pass })
}
