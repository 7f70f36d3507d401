//! `segtune quantize MODEL.onnx --calibrate DATA --out MODEL.int8.onnx`: static int8 QDQ. The
//! graph is rewritten by [`crate::qdq`]; the activation ranges are calibrated in onnxruntime on
//! images prepared by the model's own test-time pipeline (MinMax, or a percentile of each
//! tensor's histogram); the result is opened in onnxruntime and compared with the fp32 model
//! before it is written (temp file, then rename). `--fp16` writes a float16 model instead
//! ([`crate::fp16`]), for GPU execution providers.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::Array4;
use prost::Message;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::layout::Normalization;
use crate::onnx::{self, ModelProto};
use crate::pipeline::Pipeline;
use crate::runtime::OrtModel;

/// How activation ranges are taken from the calibration images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Calibration {
    /// Each tensor's smallest and largest value over all images.
    #[default]
    Minmax,
    /// The `--percentile` and 100 − `--percentile` points of each tensor's histogram: outliers
    /// clipped, the rest resolved more finely.
    Percentile,
}

/// Settings of `segtune quantize`.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    /// Calibration images: files, folders or globs, or a dataset folder (its `split` images).
    pub calibrate: Vec<String>,
    /// The dataset split used where `calibrate` is a dataset folder.
    pub split: String,
    /// How many images to calibrate on (spread evenly over those found).
    pub images: usize,
    pub method: Calibration,
    /// The percentile kept by [`Calibration::Percentile`] (e.g. 99.99).
    pub percentile: f64,
    /// onnxruntime intra-op threads (0: its default).
    pub threads: usize,
    /// Convs kept in float: wildcard patterns of a Conv's node name, weight or output name.
    pub exclude: Vec<String>,
}

/// What `segtune quantize` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuantizeReport {
    pub model: String,
    pub out: String,
    pub method: Calibration,
    pub calibration_images: usize,
    pub folded_batchnorms: usize,
    pub merged_activations: usize,
    pub stats: crate::qdq::QdqStats,
    /// The Convs `--exclude` kept in float, by node name (else output name).
    pub excluded: Vec<String>,
    pub bytes_in: usize,
    pub bytes_out: usize,
    /// Share of pixels whose argmax the int8 model keeps, on up to 8 calibration images.
    pub argmax_agreement: f64,
    pub seconds: f64,
}

impl fmt::Display for QuantizeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "quantized {} Convs to int8 QDQ ({} activations uint8, {:?} on {} images; {} BatchNorms folded, {} activations merged)",
            self.stats.convs,
            self.stats.activations,
            self.method,
            self.calibration_images,
            self.folded_batchnorms,
            self.merged_activations
        )?;
        if !self.excluded.is_empty() {
            writeln!(f, "kept {} Convs in float (--exclude): {}", self.excluded.len(), self.excluded.join(", "))?;
        }
        writeln!(
            f,
            "{:.1} MB -> {:.1} MB; argmax agrees with the fp32 model on {:.2}% of pixels",
            self.bytes_in as f64 / 1e6,
            self.bytes_out as f64 / 1e6,
            self.argmax_agreement * 100.0
        )?;
        write!(
            f,
            "wrote {} in {:.1} s (score it: segtune validate {} --data DIR --baseline {})",
            self.out, self.seconds, self.out, self.model
        )
    }
}

/// `segtune quantize`.
pub fn quantize(model: &Path, out: &Path, opts: &QuantizeOptions) -> Result<QuantizeReport> {
    let started = Instant::now();
    let origin = model.display().to_string();
    let (proto, norm, pipeline) = open(model)?;
    let files = calibration_files(&opts.calibrate, &opts.split, opts.images)?;
    let inputs = prepared_inputs(&files, &pipeline, &norm)?;
    let bad = |e: String| Error::bad_file(model, e);
    let excluded = crate::qdq::matching_convs(&proto, &opts.exclude).map_err(bad)?;

    let mut folded = proto.clone();
    let folded_batchnorms = crate::qdq::fold_batchnorm(&mut folded).map_err(bad)?;
    let mut merged = folded.clone();
    let merged_activations = crate::qdq::merge_activations(&mut merged, &excluded).map_err(bad)?;
    let targets = crate::qdq::activation_targets(&merged);
    let ranges = calibrate(&folded, &targets, &inputs, opts, &origin)?;
    let stats = crate::qdq::quantize(&mut merged, &ranges, &excluded).map_err(bad)?;
    let excluded: Vec<String> = excluded.into_values().collect();
    describe(&mut merged, opts, files.len(), &excluded);

    let bytes = merged.encode_to_vec();
    let sample = &inputs[..inputs.len().min(8)];
    let (_, argmax_agreement) = against_fp32(&proto, &bytes, "int8", sample, &norm, &origin, opts.threads)?;
    write_model(out, &bytes)?;
    Ok(QuantizeReport {
        model: origin,
        out: out.display().to_string(),
        method: opts.method,
        calibration_images: files.len(),
        folded_batchnorms,
        merged_activations,
        stats,
        excluded,
        bytes_in: proto.encoded_len(),
        bytes_out: bytes.len(),
        argmax_agreement,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What `segtune quantize --fp16` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HalfReport {
    pub model: String,
    pub out: String,
    pub folded_batchnorms: usize,
    pub tensors_converted: usize,
    pub bytes_in: usize,
    pub bytes_out: usize,
    /// Against the fp32 model, in onnxruntime, on the calibration images (else a seeded input).
    pub max_abs_diff: f32,
    pub argmax_agreement: f64,
    pub seconds: f64,
}

impl fmt::Display for HalfReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "converted {} tensors to float16 ({} BatchNorms folded; fp32 inputs and outputs kept)",
            self.tensors_converted, self.folded_batchnorms
        )?;
        writeln!(
            f,
            "{:.1} MB -> {:.1} MB; against the fp32 model: max |Δ| of logits {:.3e}, argmax agrees on {:.2}% of pixels",
            self.bytes_in as f64 / 1e6,
            self.bytes_out as f64 / 1e6,
            self.max_abs_diff,
            self.argmax_agreement * 100.0
        )?;
        write!(
            f,
            "wrote {} in {:.1} s (for GPU providers: onnxruntime's CPU runs float16 through casts)",
            self.out, self.seconds
        )
    }
}

/// `segtune quantize --fp16`: float16 weights and compute, fp32 inputs and outputs.
pub fn half_precision(model: &Path, out: &Path, opts: &QuantizeOptions) -> Result<HalfReport> {
    let started = Instant::now();
    let origin = model.display().to_string();
    let (proto, norm, pipeline) = open(model)?;
    let inputs = if opts.calibrate.is_empty() {
        vec![crate::tensors::seeded_input(1, 8 * norm.size_multiple, &norm, 0)]
    } else {
        prepared_inputs(&calibration_files(&opts.calibrate, &opts.split, opts.images.min(8))?, &pipeline, &norm)?
    };
    let bad = |e: String| Error::bad_file(model, e);
    let mut half = proto.clone();
    let folded_batchnorms = crate::qdq::fold_batchnorm(&mut half).map_err(bad)?;
    let tensors_converted = crate::fp16::convert(&mut half).map_err(bad)?;
    half.metadata_props.retain(|p| p.key() != QUANTIZATION_KEY);
    let value = format!(
        "float16 by segtune {}: weights and compute in float16, fp32 inputs and outputs",
        env!("CARGO_PKG_VERSION")
    );
    half.metadata_props
        .push(onnx::proto::StringStringEntryProto { key: Some(QUANTIZATION_KEY.into()), value: Some(value) });
    let bytes = half.encode_to_vec();
    let (max_abs_diff, argmax_agreement) = against_fp32(&proto, &bytes, "fp16", &inputs, &norm, &origin, opts.threads)?;
    write_model(out, &bytes)?;
    Ok(HalfReport {
        model: origin,
        out: out.display().to_string(),
        folded_batchnorms,
        tensors_converted,
        bytes_in: proto.encoded_len(),
        bytes_out: bytes.len(),
        max_abs_diff,
        argmax_agreement,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Writes `bytes` to `out` (its folder created), through a temp file and a rename.
fn write_model(out: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    crate::data::write_atomic(out, |f| std::io::Write::write_all(f, bytes))
}

/// The model with its external data read in and its sizes made symbolic where its graph allows,
/// its normalization, and the test-time pipeline it records.
fn open(path: &Path) -> Result<(ModelProto, Normalization, Pipeline)> {
    let mut proto = onnx::read_model(path)?;
    crate::graph::inline_external(&mut proto, path.parent()).map_err(|e| Error::bad_file(path, e))?;
    crate::model::check_input_rank(&proto, path)?;
    let meta = onnx::metadata(&proto);
    if meta.contains_key(QUANTIZATION_KEY) {
        return Err(Error::bad_file(path, "expected an fp32 model, found one segtune already quantized"));
    }
    let norm = Normalization::from_metadata(&meta).map_err(|e| Error::bad_file(path, e))?;
    let (runnable, shape) = crate::runtime::runnable(&proto, &norm, &path.display().to_string())?;
    let pipeline =
        Pipeline::recorded(&meta, norm).and_then(|p| p.fitted(shape.size)).map_err(|e| Error::bad_file(path, e))?;
    Ok((runnable.unwrap_or(proto), norm, pipeline))
}

/// The metadata key that records how a model was quantized.
pub const QUANTIZATION_KEY: &str = "segtune.quantization";

fn describe(model: &mut ModelProto, opts: &QuantizeOptions, images: usize, excluded: &[String]) {
    let method = match opts.method {
        Calibration::Minmax => "MinMax".to_string(),
        Calibration::Percentile => format!("percentile {}", opts.percentile),
    };
    let mut value = format!(
        "int8 QDQ by segtune {}: weights per-channel symmetric int8, activations uint8 asymmetric, {method} calibration on {images} images",
        env!("CARGO_PKG_VERSION")
    );
    if !excluded.is_empty() {
        value += &format!("; Convs kept in float: {}", excluded.join(", "));
    }
    model.metadata_props.retain(|p| p.key() != QUANTIZATION_KEY);
    model
        .metadata_props
        .push(onnx::proto::StringStringEntryProto { key: Some(QUANTIZATION_KEY.into()), value: Some(value) });
}

/// The calibration images: `inputs` as infer reads them, or, for one dataset folder, its
/// `split`; `n` of them spread evenly.
fn calibration_files(inputs: &[String], split: &str, n: usize) -> Result<Vec<PathBuf>> {
    if n == 0 {
        return Err(Error::BadArgument("--images 0: expected at least 1 calibration image".into()));
    }
    let dataset = match inputs {
        [one] if Path::new(one).is_dir() => crate::data::Dataset::open(Path::new(one), split).ok(),
        _ => None,
    };
    let files = match dataset {
        Some(ds) if !ds.items.is_empty() => ds.items.iter().map(|i| i.image.clone()).collect(),
        _ => crate::inputs::expand_inputs(inputs)?,
    };
    let step = files.len() as f64 / n.min(files.len()) as f64;
    Ok((0..n.min(files.len())).map(|i| files[(i as f64 * step) as usize].clone()).collect())
}

/// Each file decoded, prepared by `pipeline` and normalized: one batch of one per image.
fn prepared_inputs(files: &[PathBuf], pipeline: &Pipeline, norm: &Normalization) -> Result<Vec<Array4<f32>>> {
    files
        .par_iter()
        .map(|p| {
            let image = crate::data::load_image(p)?;
            let (input, _) = pipeline.prepare(&image);
            let (w, h) = (input.width() as usize, input.height() as usize);
            let mut x = Array4::<f32>::zeros(norm.layout.shape(1, h, w));
            crate::imaging::normalize_into(x.index_axis_mut(ndarray::Axis(0), 0), &input, norm);
            Ok(x)
        })
        .collect()
}

/// Each target's range over the calibration inputs, from `model` with the targets as outputs.
fn calibrate(
    model: &ModelProto,
    targets: &[String],
    inputs: &[Array4<f32>],
    opts: &QuantizeOptions,
    origin: &str,
) -> Result<HashMap<String, (f32, f32)>> {
    let mut probe = model.clone();
    let graph = probe.graph.as_mut().expect("a read model has a graph");
    let first = graph.output.len();
    let existing: Vec<String> = graph.output.iter().map(|o| o.name().to_string()).collect();
    let mut index = HashMap::new();
    for t in targets {
        match existing.iter().position(|e| e == t) {
            Some(i) => index.insert(i, t.clone()),
            None => {
                index.insert(graph.output.len(), t.clone());
                graph.output.push(float_output(t));
                None
            }
        };
    }
    debug_assert!(graph.output.len() >= first);
    let mut session = OrtModel::from_bytes(&probe.encode_to_vec(), &format!("{origin} (calibration)"), opts.threads)?;
    let mut minmax: HashMap<usize, (f32, f32)> = HashMap::new();
    for x in inputs {
        session.visit_outputs(x.view(), |i, values| {
            if index.contains_key(&i) {
                let r = minmax.entry(i).or_insert((f32::INFINITY, f32::NEG_INFINITY));
                *r = values.iter().fold(*r, |(lo, hi), &v| (lo.min(v), hi.max(v)));
            }
        })?;
    }
    let ranges = match opts.method {
        Calibration::Minmax => minmax,
        Calibration::Percentile => percentile_ranges(&mut session, inputs, &minmax, opts.percentile)?,
    };
    Ok(ranges.into_iter().map(|(i, r)| (index[&i].clone(), r)).collect())
}

fn float_output(name: &str) -> onnx::ValueInfoProto {
    use onnx::proto::{TypeProto, type_proto};
    let tensor = type_proto::Tensor { elem_type: Some(onnx::DATA_TYPE_FLOAT), shape: None };
    onnx::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..Default::default() }),
        ..Default::default()
    }
}

/// Histogram bins per tensor for percentile calibration (onnxruntime's calibrator uses 2048).
const BINS: usize = 2048;

/// A second pass: each tensor's histogram over its MinMax range, and the range between its
/// `100 − p` and `p` percentiles (widened to hold 0).
fn percentile_ranges(
    session: &mut OrtModel,
    inputs: &[Array4<f32>],
    minmax: &HashMap<usize, (f32, f32)>,
    p: f64,
) -> Result<HashMap<usize, (f32, f32)>> {
    if !(50.0..=100.0).contains(&p) {
        return Err(Error::BadArgument(format!("--percentile {p}: expected a value in [50, 100]")));
    }
    let mut hist: HashMap<usize, Vec<u64>> = minmax.keys().map(|&i| (i, vec![0u64; BINS])).collect();
    for x in inputs {
        session.visit_outputs(x.view(), |i, values| {
            if let (Some(h), Some(&(lo, hi))) = (hist.get_mut(&i), minmax.get(&i)) {
                let width = (hi - lo).max(f32::MIN_POSITIVE);
                for &v in values {
                    h[(((v - lo) / width) * BINS as f32).clamp(0.0, (BINS - 1) as f32) as usize] += 1;
                }
            }
        })?;
    }
    Ok(hist
        .into_iter()
        .map(|(i, h)| {
            let (lo, hi) = minmax[&i];
            let at = |q: f64| lo + (hi - lo) * quantile_bin(&h, q) as f32 / BINS as f32;
            (i, (at(1.0 - p / 100.0).min(0.0).max(lo), at(p / 100.0).max(0.0).min(hi)))
        })
        .collect())
}

/// The bin edge below which a share `q` of the histogram's counts lies.
fn quantile_bin(h: &[u64], q: f64) -> usize {
    let total: u64 = h.iter().sum();
    let target = (q * total as f64).ceil() as u64;
    let mut seen = 0;
    for (i, &c) in h.iter().enumerate() {
        seen += c;
        if seen >= target.max(1) {
            return if q >= 0.5 { i + 1 } else { i };
        }
    }
    h.len()
}

/// How the converted `bytes` (described by `what`: "int8", "fp16") compare with `fp32` on
/// `inputs`: the largest |Δ| of the logits and the share of pixels whose argmax they keep.
fn against_fp32(
    fp32: &ModelProto,
    bytes: &[u8],
    what: &str,
    inputs: &[Array4<f32>],
    norm: &Normalization,
    origin: &str,
    threads: usize,
) -> Result<(f32, f64)> {
    let mut reference = OrtModel::from_bytes(&fp32.encode_to_vec(), origin, threads)?;
    let mut converted = OrtModel::from_bytes(bytes, &format!("{origin} ({what})"), threads)?;
    let (mut max_abs_diff, mut same, mut total) = (0f32, 0f64, 0usize);
    for x in inputs {
        let (a, b) = (reference.run_logits(x.view(), norm.layout)?, converted.run_logits(x.view(), norm.layout)?);
        let (diff, _, agree) = crate::tensors::compare_logits(&a, &b);
        let pixels = a.len() / a.shape()[1].max(1);
        max_abs_diff = max_abs_diff.max(diff);
        same += agree * pixels as f64;
        total += pixels;
    }
    Ok((max_abs_diff, same / total.max(1) as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_histogram() {
        let mut h = vec![0u64; 10];
        h[0] = 1;
        h[5] = 98;
        h[9] = 1;
        assert_eq!(quantile_bin(&h, 0.99), 6, "the 99th percentile ends in bin 5");
        assert_eq!(quantile_bin(&h, 0.01), 0);
        assert_eq!(quantile_bin(&h, 1.0), 10);
        assert_eq!(quantile_bin(&h, 0.02), 5);
    }
}
