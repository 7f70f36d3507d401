//! The `segtune` command line: parses arguments (clap) and dispatches to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use segtune::model::{self, Checkpoint};
use segtune::{onnx, validate};

/// Fine-tune and deploy DeepLabv3+ semantic-segmentation models through ONNX.
#[derive(Parser)]
#[command(name = "segtune", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that an ONNX checkpoint matches a compiled-in architecture and load its weights.
    Import {
        /// The checkpoint (.onnx) to load.
        checkpoint: PathBuf,
        /// Compiled-in model to match; default: the first whose architecture matches.
        #[arg(long)]
        model: Option<String>,
    },
    /// Describe an ONNX model: opset, inputs/outputs, ops, BatchNorm, softmax, Resize, metadata.
    Inspect {
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Compare the burn model (CPU) with onnxruntime on the same seeded input.
    Parity {
        /// Compiled-in model (default: deeplabv3plus_mobilenetv2, or the one matching --weights).
        #[arg(long)]
        model: Option<String>,
        /// Checkpoint (.onnx) whose weights to use instead of the compiled-in model's.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Input height and width in pixels (a multiple of 16).
        #[arg(long, default_value_t = 256)]
        size: usize,
        /// Images per batch.
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Largest max |Δ| of logits that passes.
        #[arg(long, default_value_t = 1e-4)]
        tol: f32,
        /// Seed of the random input.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// onnxruntime intra-op threads (0: its default).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Timed runs of each after one warm-up (the median is reported).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Import { checkpoint, model } => {
            let summary = model::import(model.as_deref(), &checkpoint)?;
            println!("{summary}");
        }
        Command::Inspect { file, json } => {
            let proto = onnx::read_model(&file)?;
            let report = onnx::inspect(&proto, &file);
            if json {
                println!("{}", serde_json::to_string_pretty(&report).context("serializing the report")?);
            } else {
                print!("{report}");
            }
        }
        Command::Parity { model, weights, size, batch, tol, seed, threads, repeat, json } => {
            let ckpt = Checkpoint::open(model.as_deref(), weights.as_deref())?;
            let opts = validate::ParityOptions { batch, size, tol, seed, threads, repeat };
            let report = validate::parity_check(&ckpt, &opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report).context("serializing the report")?);
            } else {
                println!("{report}");
            }
            if !report.pass {
                eprintln!("error: parity failed: max |Δ| {:.3e} > tolerance {:.1e}", report.max_abs_diff, report.tol);
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            let code = e.downcast_ref::<segtune::Error>().map_or(1, segtune::Error::exit_code);
            ExitCode::from(code as u8)
        }
    }
}
