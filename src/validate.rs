//! Checks of a model against onnxruntime: `segtune parity` runs the burn model and onnxruntime on
//! the same seeded input and compares logits.

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
    /// How images reached the model.
    pub input: String,
    pub miou: f64,
    pub pixel_accuracy: f64,
    pub frequency_weighted_iou: f64,
    pub class_names: Vec<String>,
    /// IoU per class, `null` for classes absent from both ground truth and prediction.
    pub per_class_iou: Vec<Option<f64>>,
    pub pixels: u64,
    pub seconds: f64,
    pub parity: Option<ExportParity>,
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
    validate_onnx_with(file, data, split, &crate::data::DataSpec::default(), None, parity_run, threads)
}

/// [`validate_onnx`] with the dataset read as `spec` says (layout, label map) and class names
/// from `class_names` (else the model's metadata, else the dataset's).
pub fn validate_onnx_with(
    file: &std::path::Path,
    data: &std::path::Path,
    split: &str,
    spec: &crate::data::DataSpec,
    class_names: Option<&std::path::Path>,
    parity_run: Option<&std::path::Path>,
    threads: usize,
) -> Result<ValidationReport> {
    let started = Instant::now();
    let crate::runtime::OpenedModel { session: mut ort, norm, classes, class_names: recorded, input: shape } =
        crate::runtime::OpenedModel::open(file, threads, true)?;
    let ds = crate::data::Dataset::open_with(data, split, spec)?;
    let names = match (class_names, recorded) {
        (None, Some(names)) => names,
        (file, _) => crate::data::class_names(data, ds.layout, classes, file)?,
    };
    ds.validate(classes).map_err(|e| match e {
        Error::BadFile { path, problem } => Error::BadFile {
            path,
            problem: format!("{problem} (the model {} has {classes} output classes)", file.display()),
        },
        other => other,
    })?;
    if shape.batch.is_some_and(|b| b != 1) {
        return Err(Error::bad_file(
            file,
            format!("its graph runs {} only; validate runs one image at a time", shape.describe()),
        ));
    }
    let mut cm = crate::metrics::ConfusionMatrix::new(classes);
    let mut first: Vec<(Array4<f32>, Array4<f32>)> = vec![];
    let mut score = |input: Array4<f32>, logits: Array4<f32>, masks: &[u8], pred: Vec<u8>| -> Result<()> {
        if logits.shape()[1] != classes {
            return Err(Error::bad_file(
                file,
                format!("expected {classes} output channels, found {}", logits.shape()[1]),
            ));
        }
        cm.update(masks, &pred);
        if parity_run.is_some() && first.len() < 2 {
            first.push((input, logits));
        }
        Ok(())
    };
    match shape.size {
        // At native resolution, padded to the size multiple.
        None => {
            let batches: Vec<Vec<usize>> = (0..ds.items.len()).map(|i| vec![i]).collect();
            let spec = crate::data::LoaderSpec {
                items: ds.items.clone(),
                batches,
                classes,
                norm,
                augment: None,
                resize: None,
                seed: 0,
                epoch: 0,
            };
            for batch in crate::data::Loader::start(spec, 4) {
                let batch = batch?;
                let input = Array4::from_shape_vec(batch_shape(&batch), batch.images.clone()).expect("batch shape");
                let logits = ort.run_logits(input.view(), batch.layout)?;
                let pred = crate::tensors::argmax_classes(logits.view());
                score(input, logits, &batch.masks, pred)?;
            }
        }
        // A graph fixed at one size: each image letterboxed into it, the logits upsampled back
        // to the image's own size, scored there.
        Some((h, w)) => {
            for item in &ds.items {
                let (image, mask) = crate::data::load_item(item, classes)?;
                let (boxed, inner) = crate::imaging::letterbox(&image, (w, h), true, &norm);
                let mut input = match norm.layout {
                    Layout::Nchw => Array4::<f32>::zeros((1, 3, h, w)),
                    Layout::Nhwc => Array4::<f32>::zeros((1, h, w, 3)),
                };
                crate::imaging::normalize_into(input.index_axis_mut(ndarray::Axis(0), 0), &boxed, &norm);
                let logits = ort.run_logits(input.view(), norm.layout)?;
                let (mw, mh) = mask.dimensions();
                let pred = crate::imaging::upsample_argmax(
                    logits.index_axis(ndarray::Axis(0), 0),
                    inner,
                    mw as usize,
                    mh as usize,
                );
                score(input, logits, mask.as_raw(), pred.into_raw())?;
            }
        }
    }
    let parity = match parity_run {
        Some(run) => Some(export_parity(run, &first)?),
        None => None,
    };
    let s = cm.scores();
    Ok(ValidationReport {
        file: file.display().to_string(),
        data: data.display().to_string(),
        split: split.to_string(),
        num_images: ds.items.len(),
        input: match shape.size {
            None => "native resolution (padded to the size multiple)".into(),
            Some((h, w)) => {
                format!("letterboxed to {h}×{w} (the size its graph is fixed at), scored at native resolution")
            }
        },
        miou: s.miou,
        pixel_accuracy: s.pixel_accuracy,
        frequency_weighted_iou: s.frequency_weighted_iou,
        class_names: names,
        per_class_iou: s.per_class_iou,
        pixels: s.pixels,
        seconds: started.elapsed().as_secs_f64(),
        parity,
    })
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
