//! The `segtune` command line: parses arguments (clap) and dispatches to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use segtune::model::{self, Checkpoint};
use segtune::train::{self, TrainConfig};
use segtune::{data, validate};

/// mimalloc keeps freed blocks for reuse: glibc's malloc hands a tensor-sized buffer back to the
/// kernel at each free and page-faults a fresh one at the next op.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `println!` that ends the process quietly when stdout is closed (e.g. piped into `head`).
macro_rules! emit {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// Fine-tune and deploy DeepLabv3+ semantic-segmentation models through ONNX.
#[derive(Parser)]
#[command(name = "segtune", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole pipeline in a few minutes: synthesize, fine-tune, export, validate, infer.
    Demo {
        /// Folder for everything the demo writes.
        #[arg(long, default_value = "segtune-demo")]
        out: PathBuf,
        /// Fine-tuning epochs.
        #[arg(long, default_value_t = 5)]
        epochs: usize,
    },
    /// Check that an ONNX checkpoint matches a compiled-in architecture and load its weights.
    Import {
        /// The checkpoint (.onnx) to load.
        checkpoint: PathBuf,
        /// Compiled-in model to match; default: the first whose architecture matches.
        #[arg(long)]
        model: Option<String>,
    },
    /// Check an ONNX model: opset, inputs/outputs, ops, BatchNorm, softmax, Resize, metadata, the
    /// backbone segtune finds, the sizes it runs at, the compiled-in model it loads into.
    Inspect {
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a synthetic segmentation set in VOC layout (textured backgrounds, K-1 object classes, 255 boundary bands).
    Synth {
        /// Output directory.
        out: PathBuf,
        /// Classes including background.
        #[arg(long, default_value_t = 6)]
        classes: usize,
        /// Training images.
        #[arg(long, default_value_t = 200)]
        train: usize,
        /// Validation images.
        #[arg(long, default_value_t = 50)]
        val: usize,
        /// Image side in pixels.
        #[arg(long, default_value_t = 128)]
        size: u32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// `shapes`: small fine-tuning sets; `corpus`: a varied pretraining corpus (eight other
        /// shapes, five textures, scales 4–45%, occlusion, clutter, 255 bands).
        #[arg(long, value_enum, default_value_t = data::SynthStyle::Shapes)]
        style: data::SynthStyle,
    },
    /// Fine-tune a model on a dataset (or --resume a run).
    Train(Box<TrainArgs>),
    /// Write a run's fine-tuned weights back into its original ONNX graph.
    Export {
        /// The run directory (from `segtune train --out`).
        run_dir: PathBuf,
        /// The ONNX file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Score an ONNX model with onnxruntime on a dataset split (mIoU, per-class IoU, pixel accuracy).
    Validate(ValidateArgs),
    /// Static int8 QDQ: weights per-channel symmetric int8, activations uint8 calibrated in
    /// onnxruntime on your images; checked against the fp32 model before it is written.
    Quantize(QuantizeArgs),
    /// Segment new images with onnxruntime: palette masks (same names, .png), overlays, summary.json.
    Infer(InferArgs),
    /// Tell why a fine-tune does not learn: labels, images, model, initial loss, overfitting one
    /// batch (with a learning-rate sweep), BatchNorm; the most likely cause first.
    Doctor {
        #[command(flatten)]
        config: Box<TrainConfig>,
        /// Also write the report as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Optimizer steps of each overfit-one-batch run.
        #[arg(long, default_value_t = 25)]
        steps: usize,
    },
    /// Compare the burn model (CPU) with onnxruntime on the same seeded input.
    Parity(ParityArgs),
}

/// `--threads`: validate, infer, quantize, parity.
#[derive(clap::Args)]
struct Threads {
    /// onnxruntime intra-op threads (0: its default).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// How validate and infer run a model: onnxruntime's threads and provider, the test-time
/// pipeline's overrides, tiles and augmented views.
#[derive(clap::Args)]
struct PredictArgs {
    #[command(flatten)]
    threads: Threads,
    /// Where onnxruntime runs the model: cpu, or cuda / tensorrt with an onnxruntime-gpu
    /// library (ORT_DYLIB_PATH); refused, naming what the library has, where it lacks one.
    #[arg(long, value_enum, default_value_t = segtune::runtime::Provider::Cpu)]
    provider: segtune::runtime::Provider,
    #[command(flatten)]
    pipeline: segtune::pipeline::PipelineArgs,
    #[command(flatten)]
    test_time: segtune::predict::TestTimeArgs,
}

/// `segtune validate` arguments.
#[derive(clap::Args)]
struct ValidateArgs {
    /// The ONNX model (e.g. from `segtune export`).
    file: PathBuf,
    /// Dataset directory: VOC, Cityscapes or ADE20K layout, or SPLIT/images + SPLIT/masks.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "val")]
    split: String,
    #[command(flatten)]
    dataset: Box<data::DataArgs>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Compare the export's logits with the burn model of this run on the first val images.
    #[arg(long, value_name = "RUN_DIR")]
    parity: Option<PathBuf>,
    /// Write a report into this folder: index.html, confusion.png, iou.png and the worst images
    /// (image | truth | prediction) in worst/.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// How many of the lowest-mIoU images the report shows.
    #[arg(long, default_value_t = 8, value_name = "K")]
    worst: usize,
    /// Also score this model (e.g. the fp32 one a quantized model came from) on the same
    /// images with the same flags, and report the mIoU difference.
    #[arg(long, value_name = "FILE.onnx")]
    baseline: Option<PathBuf>,
    #[command(flatten)]
    predict: PredictArgs,
}

/// `segtune quantize` arguments.
#[derive(clap::Args)]
struct QuantizeArgs {
    /// The fp32 ONNX model (e.g. from `segtune export`).
    model: PathBuf,
    /// Calibration images: files, folders, globs, or a dataset folder (its --split images).
    #[arg(long, required_unless_present = "fp16", num_args = 1.., value_name = "DATA")]
    calibrate: Vec<String>,
    /// Write a float16 model instead (weights and compute; fp32 inputs and outputs kept), for
    /// GPU providers; --calibrate is then optional (images to compare it with fp32 on).
    #[arg(long)]
    fp16: bool,
    /// Where to write the int8 model.
    #[arg(long)]
    out: PathBuf,
    /// The dataset split calibrated on where --calibrate is a dataset folder.
    #[arg(long, default_value = "train")]
    split: String,
    /// Calibration images (spread evenly over those found).
    #[arg(long, default_value_t = 32)]
    images: usize,
    /// How each activation's range is taken: minmax, or percentile (see --percentile).
    #[arg(long, value_enum, default_value_t = segtune::quantize::Calibration::Minmax)]
    method: segtune::quantize::Calibration,
    /// The percentile of each activation's histogram kept by --method percentile.
    #[arg(long, default_value_t = 99.999)]
    percentile: f64,
    /// Keep these Convs in float (weights and output): wildcard patterns (`*`, `?`) of a Conv's
    /// node name, weight or output name, e.g. 'segmentation_head*' for the classifier.
    #[arg(long, num_args = 1.., value_name = "PATTERN", conflicts_with = "fp16")]
    exclude: Vec<String>,
    #[command(flatten)]
    threads: Threads,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `segtune infer` arguments.
#[derive(clap::Args)]
struct InferArgs {
    /// The ONNX model (e.g. from `segtune export`).
    model: PathBuf,
    /// Image files, folders or globs (`*`, `?` in the file name).
    #[arg(required = true)]
    inputs: Vec<String>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Also write overlay/STEM.jpg, the image blended with its mask.
    #[arg(long)]
    overlay: bool,
    /// Images per onnxruntime run.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Let onnxruntime's threads spin-wait between ops: its own time per image falls, but on
    /// few cores decoding and writing beside it get less time and the whole run is slower.
    #[arg(long)]
    spin: bool,
    #[command(flatten)]
    predict: PredictArgs,
}

/// `segtune parity` arguments.
#[derive(clap::Args)]
struct ParityArgs {
    /// Compiled-in model (default: deeplabv3plus_mobilenetv2, or the one matching --weights).
    #[arg(long)]
    model: Option<String>,
    /// Checkpoint (.onnx) whose weights to use instead of the compiled-in model's.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Input height and width in pixels, a multiple of 16 [default: 256, or the size a
    /// model's graph is fixed at].
    #[arg(long)]
    size: Option<usize>,
    /// Images per batch [default: 2, or the batch a model's graph is fixed at].
    #[arg(long)]
    batch: Option<usize>,
    /// Largest max |Δ| of logits that passes.
    #[arg(long, default_value_t = 1e-4)]
    tol: f32,
    /// Seed of the random input.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    threads: Threads,
    /// Timed runs of each after one warm-up (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `segtune train` arguments.
#[derive(clap::Args)]
struct TrainArgs {
    /// Continue the run in this directory from its newest checkpoint (other flags are ignored).
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["out"])]
    resume: Option<PathBuf>,
    /// Run directory to create (config, checkpoints, metrics, curves, snapshots).
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    #[command(flatten)]
    config: TrainConfig,
}

/// `--model` left to its default with `--weights` given: the compiled-in model the weights
/// match, found (as `segtune import` finds it) rather than assumed.
fn model_from_weights(cfg: &mut TrainConfig, model_given: bool) -> Result<(), segtune::Error> {
    if let (false, Some(w)) = (model_given, &cfg.weights) {
        cfg.model = Checkpoint::open(None, Some(w))?.info.name.to_string();
    }
    Ok(())
}

/// Whether the subcommand's `--model` was given rather than defaulted.
fn model_given(matches: &clap::ArgMatches) -> bool {
    matches.subcommand().and_then(|(_, sub)| sub.value_source("model")) == Some(clap::parser::ValueSource::CommandLine)
}

fn run(cli: Cli, model_given: bool) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo { out, epochs } => {
            segtune::demo::demo(&out, epochs)?;
        }
        Command::Import { checkpoint, model } => {
            let summary = model::import(model.as_deref(), &checkpoint)?;
            emit!("{summary}");
        }
        Command::Synth { out, classes, train, val, size, seed, style } => {
            data::synth(&out, &data::SynthOptions { classes, train, val, size, seed, style })?;
            emit!(
                "wrote {train} train and {val} val images ({classes} classes, {size}x{size}, style {style:?}) to {}",
                out.display()
            );
        }
        Command::Train(args) => {
            let summary = match (&args.resume, &args.out) {
                (Some(dir), _) => train::resume(dir)?,
                (None, Some(out)) => {
                    let out = out.clone();
                    let mut cfg = args.config;
                    model_from_weights(&mut cfg, model_given)?;
                    train::train(cfg, &out)?
                }
                (None, None) => unreachable!("clap requires --out or --resume"),
            };
            if let Some(best) = summary.history.iter().map(|m| m.val_miou).reduce(f64::max) {
                emit!("best val mIoU {best:.4}; run in {}", summary.run_dir.display());
            }
        }
        Command::Export { run_dir, out } => {
            emit!("{}", segtune::export::export(&run_dir, &out)?);
        }
        Command::Validate(args) => return validate_command(args),
        Command::Quantize(args) => return quantize_command(args),
        Command::Infer(args) => return infer_command(args),
        Command::Doctor { config, json, steps } => {
            let mut cfg = *config;
            model_from_weights(&mut cfg, model_given)?;
            let opts = segtune::doctor::DoctorOptions { steps, ..Default::default() };
            let report = segtune::doctor::doctor(&cfg, &opts)?;
            emit!("{}", report.to_string().trim_end());
            if let Some(path) = json {
                segtune::doctor::write_json(&report, &path)?;
            }
            if report.failures() > 0 {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Inspect { file, json } => {
            let report = segtune::inspect::inspect(&file)?;
            if json {
                emit!("{}", serde_json::to_string_pretty(&report).context("serializing the report")?);
            } else {
                emit!("{}", report.to_string().trim_end());
            }
        }
        Command::Parity(args) => return parity_command(args),
    }
    Ok(ExitCode::SUCCESS)
}

fn validate_command(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let ValidateArgs {
        file,
        data,
        split,
        dataset,
        json,
        parity,
        report,
        worst,
        baseline,
        predict: PredictArgs { threads: Threads { threads }, provider, pipeline, test_time },
    } = args;
    let opts = validate::ValidateOptions {
        spec: dataset.spec(),
        class_names: dataset.class_names.as_deref(),
        parity: parity.as_deref(),
        threads,
        report: report.as_deref(),
        worst,
        size: pipeline.size,
        square: pipeline.square,
        provider,
        baseline: baseline.as_deref(),
        test_time,
    };
    let report = validate::validate_with(&file, &data, &split, &opts)?;
    emit!("{report}");
    if let Some(dir) = opts.report {
        emit!("report in {}", dir.join("index.html").display());
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report).context("serializing the report")?;
        data::write_atomic(&path, |f| std::io::Write::write_all(f, text.as_bytes()))?;
    }
    if report.parity.as_ref().is_some_and(|p| !p.pass) {
        eprintln!(
            "error: the export does not match the burn model of its run (max |Δ| > 1e-4 or argmax agreement < 99.99%)"
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn quantize_command(args: QuantizeArgs) -> anyhow::Result<ExitCode> {
    let QuantizeArgs {
        model,
        calibrate,
        fp16,
        out,
        split,
        images,
        method,
        percentile,
        exclude,
        threads: Threads { threads },
        json,
    } = args;
    use segtune::quantize::{QuantizeOptions, half_precision, quantize};
    let opts = QuantizeOptions { calibrate, split, images, method, percentile, threads, exclude };
    let (text, value) = if fp16 {
        let r = half_precision(&model, &out, &opts)?;
        (r.to_string(), serde_json::to_value(&r))
    } else {
        let r = quantize(&model, &out, &opts)?;
        (r.to_string(), serde_json::to_value(&r))
    };
    if json {
        emit!("{}", serde_json::to_string_pretty(&value.context("serializing the report")?)?);
    } else {
        emit!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

fn infer_command(args: InferArgs) -> anyhow::Result<ExitCode> {
    let InferArgs {
        model,
        inputs,
        out,
        overlay,
        batch,
        spin,
        predict: PredictArgs { threads: Threads { threads }, provider, pipeline, test_time },
    } = args;
    let (size, square) = (pipeline.size, pipeline.square);
    let opts = segtune::infer::InferOptions { out, overlay, batch, threads, size, square, provider, spin, test_time };
    let summary = segtune::infer::infer(&model, &inputs, &opts)?;
    emit!(
        "wrote {} masks to {} ({:.1} images/s, onnxruntime {:.1} s of {:.1} s){}",
        summary.images.len(),
        opts.out.display(),
        summary.images_per_s,
        summary.run_seconds,
        summary.seconds,
        if opts.overlay { ", with overlays" } else { "" }
    );
    emit!("input: {}", summary.pipeline.describe());
    if !summary.failed.is_empty() {
        let names: Vec<&str> = summary.failed.iter().map(|(f, _)| f.as_str()).collect();
        eprintln!("error: {} input(s) could not be read and were skipped: {}", names.len(), names.join(", "));
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn parity_command(args: ParityArgs) -> anyhow::Result<ExitCode> {
    let ParityArgs { model, weights, size, batch, tol, seed, threads: Threads { threads }, repeat, json } = args;
    let mut ckpt = Checkpoint::open(model.as_deref(), weights.as_deref())?;
    segtune::runtime::prepare(&mut ckpt)?;
    let (size, batch) = validate::parity_size(&ckpt, size, batch)?;
    let opts = validate::ParityOptions { batch, size, tol, seed, threads, repeat };
    let report = validate::parity_check(&ckpt, &opts)?;
    if json {
        emit!("{}", serde_json::to_string_pretty(&report).context("serializing the report")?);
    } else {
        emit!("{report}");
    }
    if !report.pass {
        eprintln!("error: parity failed: max |Δ| {:.3e} > tolerance {:.1e}", report.max_abs_diff, report.tol);
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    segtune::device::configure_cpu_kernels();
    match run(cli, model_given(&matches)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            let code = e.downcast_ref::<segtune::Error>().map_or(1, segtune::Error::exit_code);
            ExitCode::from(code as u8)
        }
    }
}
