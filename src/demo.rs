//! `segtune demo`: the whole spine on an embedded default, in a few minutes on a CPU —
//! synthesize a set, fine-tune the shipped pretrained model with the DeepLab recipe (frozen
//! backbone, frozen BatchNorm, new head), export, validate with onnxruntime, and segment a few
//! images, all under one folder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::data::{self, SynthOptions};
use crate::error::Result;
use crate::infer::{self, InferOptions};
use crate::train::{self, BnMode, Freeze, TrainConfig};
use crate::{export, validate};

/// What the demo wrote and measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub out: PathBuf,
    pub miou_before: f64,
    pub miou_after: f64,
    pub epochs: usize,
    pub seconds: f64,
}

/// The demo's training recipe on `data` (the DeepLab fine-tuning recipe): the shipped model's
/// backbone and every BatchNorm frozen at their pretrained values, a new 6-class head, SGD at
/// lr 0.02 with the poly schedule, batch 8, crop 128. `segtune doctor` finds nothing wrong with it.
pub fn recipe(data: PathBuf, epochs: usize) -> TrainConfig {
    let mut cfg = TrainConfig::new(data);
    cfg.classes = 6;
    cfg.epochs = epochs;
    cfg.batch = 8;
    cfg.crop = 128;
    cfg.lr = Some(0.02);
    cfg.freeze = vec![Freeze::Backbone];
    cfg.bn = BnMode::Frozen;
    cfg
}

/// Runs the demo into `out` (which must not hold a previous demo's run).
pub fn demo(out: &Path, epochs: usize) -> Result<DemoReport> {
    let started = Instant::now();
    if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        return Err(crate::Error::bad_file(
            out,
            "expected a new or empty folder for the demo, found files; remove it or pass --out",
        ));
    }
    let data_dir = out.join("data");
    let run_dir = out.join("run");
    let model_path = out.join("model.onnx");
    let pred_dir = out.join("predictions");
    println!("[1/5] synthesizing a 6-class set (128², 200 train, 50 val) into {}", data_dir.display());
    data::synth(
        &data_dir,
        &SynthOptions { classes: 6, train: 200, val: 50, size: 128, seed: 1, ..Default::default() },
    )?;

    let cfg = recipe(data_dir.clone(), epochs);
    let before = train::evaluate_start(&cfg)?;
    println!(
        "[2/5] fine-tuning {} (--freeze {} --bn {} --classes {} --lr {}) for {epochs} epochs into {} \
         (val mIoU before: {:.4})",
        cfg.model,
        train::freeze_flags(&cfg.freeze).trim_start_matches("--freeze "),
        format!("{:?}", cfg.bn).to_lowercase(),
        cfg.classes,
        cfg.base_lr(),
        run_dir.display(),
        before.miou
    );
    let summary = train::train(cfg, &run_dir)?;
    let after_train = summary.history.last().map_or(0.0, |m| m.val_miou);

    println!("[3/5] exporting the fine-tuned weights into the ONNX graph: {}", model_path.display());
    let exported = export::export(&run_dir, &model_path)?;
    println!("{exported}");

    println!("[4/5] validating {} with onnxruntime (and against the burn model)", model_path.display());
    let report = validate::validate_onnx(&model_path, &data_dir, "val", Some(&run_dir), 0)?;
    println!("{report}");
    let json = serde_json::to_string_pretty(&report).expect("report serializes");
    data::write_atomic(&out.join("validation.json"), |f| std::io::Write::write_all(f, json.as_bytes()))?;

    println!("[5/5] segmenting 8 val images into {}", pred_dir.display());
    let inputs: Vec<String> =
        (0..8).map(|i| data_dir.join("JPEGImages").join(format!("val_{i:05}.jpg")).display().to_string()).collect();
    let opts = InferOptions {
        out: pred_dir.clone(),
        overlay: true,
        batch: 4,
        threads: 0,
        size: None,
        square: false,
        provider: Default::default(),
        spin: false,
        test_time: Default::default(),
    };
    let inferred = infer::infer(&model_path, &inputs, &opts)?;

    let seconds = started.elapsed().as_secs_f64();
    println!();
    println!("demo done in {seconds:.0} s; everything is under {}:", out.display());
    println!("  data/                 the synthetic set (VOC layout)");
    println!("  run/                  config.json, checkpoints/, metrics.csv|json, curves.png, snapshots/");
    println!("  model.onnx            the export (ONNX, with segtune metadata)");
    println!("  validation.json       onnxruntime scores on val");
    println!("  predictions/          {} palette masks, overlay/, summary.json", inferred.images.len());
    println!(
        "val mIoU before fine-tuning {:.4} -> after {:.4} (onnxruntime; training's own evaluation of the last epoch: {:.4}); export parity {}",
        before.miou,
        report.miou,
        after_train,
        report.parity.as_ref().map_or("n/a", |p| if p.pass { "PASS" } else { "FAIL" })
    );
    Ok(DemoReport { out: out.to_path_buf(), miou_before: before.miou, miou_after: report.miou, epochs, seconds })
}
