//! `segtune train`: frozen backbone and BatchNorm, new classifier, learning, resume, outputs,
//! and bad input.

mod common;

use common::{segtune, stderr};

use std::collections::HashMap;
use std::path::Path;

use burn::store::burn_pack::Reader;
use segtune::data::{self, SynthOptions};
use segtune::model::{Checkpoint, generated::deeplabv3plus_mobilenetv2 as reference_model};
use segtune::train::{self, BackboneRuntime, BnMode, Freeze, TrainConfig};

fn small_set(dir: &Path, classes: usize, train: usize, size: u32) {
    data::synth(dir, &SynthOptions { classes, train, val: 4, size, seed: 5, ..Default::default() }).unwrap();
}

fn small_config(data: &Path) -> TrainConfig {
    let mut c = TrainConfig::new(data.to_path_buf());
    c.classes = 4;
    c.epochs = 1;
    c.batch = 2;
    c.crop = 64;
    c.lr = Some(0.01);
    c
}

/// burn path → raw bytes of a run's newest checkpoint.
fn checkpoint_tensors(run: &Path) -> HashMap<String, Vec<u8>> {
    let dir = train::RunDir(run.to_path_buf()).latest_checkpoint().expect("a checkpoint");
    let reader = Reader::from_file(dir.join("model.bpk")).unwrap();
    reader.tensor_names().into_iter().map(|n| (n.to_string(), reader.tensor_data(n).unwrap())).collect()
}

/// burn path → raw bytes of the weights of the compiled-in model `name` (default: the shipped one).
fn initial_tensors_of(name: Option<&str>) -> HashMap<String, Vec<u8>> {
    let ckpt = Checkpoint::open(name, None).unwrap();
    ckpt.tensors().unwrap().into_iter().map(|t| (t.name.clone(), t.to_bytes().unwrap().to_vec())).collect()
}

fn initial_tensors() -> HashMap<String, Vec<u8>> {
    initial_tensors_of(None)
}

#[test]
fn frozen_backbone_and_frozen_bn_stay_bit_identical_while_the_decoder_learns() {
    let dir = tempfile::tempdir().unwrap();
    small_set(&dir.path().join("data"), 4, 8, 64);
    let mut cfg = small_config(&dir.path().join("data"));
    cfg.freeze = vec![Freeze::Backbone];
    cfg.bn = BnMode::Frozen;
    cfg.epochs = 2;
    let summary = train::train(cfg, &dir.path().join("run")).unwrap();
    assert!(summary.trainable < summary.total / 2, "{} of {} trainable", summary.trainable, summary.total);

    let before = initial_tensors();
    let after = checkpoint_tensors(&dir.path().join("run"));
    let (mut backbone, mut stats, mut decoder_changed, mut decoder) = (0, 0, 0, 0);
    for e in reference_model::PARAMS {
        let (b, a) = (&before[e.burn], &after[e.burn]);
        let is_stat = e.burn.ends_with("running_mean") || e.burn.ends_with("running_var");
        if e.value.starts_with("encoder.") || is_stat {
            assert!(a == b, "{} ({}) changed", e.burn, e.value);
            backbone += !is_stat as usize;
            stats += is_stat as usize;
        } else if e.burn.ends_with("weight") && a.len() == b.len() {
            decoder += 1;
            decoder_changed += (a != b) as usize;
        }
    }
    assert_eq!(stats, 122);
    assert!(backbone > 150, "{backbone} backbone tensors checked");
    assert!(decoder > 5 && decoder_changed == decoder, "{decoder_changed} of {decoder} decoder weights changed");
}

/// The same (b) run of the compiled-in model `name` with the frozen backbone in burn and in
/// onnxruntime: the same losses and weights up to float rounding (the two compute the
/// backbone's features within ~1e-6).
fn backbone_runtimes_train_alike(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    small_set(&dir.path().join("data"), 4, 8, 64);
    let mut runs = vec![];
    for runtime in [BackboneRuntime::Burn, BackboneRuntime::Onnxruntime] {
        let mut cfg = small_config(&dir.path().join("data"));
        cfg.model = name.into();
        cfg.freeze = vec![Freeze::Backbone];
        cfg.bn = BnMode::Frozen;
        cfg.epochs = 2;
        cfg.backbone_runtime = runtime;
        let run = dir.path().join(format!("{runtime:?}"));
        let summary = train::train(cfg, &run).unwrap();
        runs.push((summary, checkpoint_tensors(&run)));
    }
    let ((burn, burn_w), (ort, ort_w)) = (&runs[0], &runs[1]);
    for (a, b) in burn.history.iter().zip(&ort.history) {
        for (x, y) in [(a.train_loss, b.train_loss), (a.val_loss, b.val_loss)] {
            assert!((x - y).abs() <= 1e-3 * x.abs().max(1e-3), "{name}: losses {x} (burn) vs {y} (onnxruntime)");
        }
    }
    let f32s = |b: &Vec<u8>| b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
    let initial = initial_tensors_of(Some(name));
    let (mut changed, mut worst) = (0, 0f32);
    for e in segtune::model::find(name).unwrap().params {
        let (a, b) = (f32s(&burn_w[e.burn]), f32s(&ort_w[e.burn]));
        worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(worst, f32::max);
        changed += (burn_w[e.burn] != initial[e.burn]) as usize;
    }
    assert!(changed > 10, "{name}: only {changed} tensors trained");
    assert!(worst <= 1e-4, "{name}: weights differ by {worst:e}");
}

#[test]
fn the_backbone_in_onnxruntime_trains_as_in_burn() {
    backbone_runtimes_train_alike("deeplabv3plus_mobilenetv2");
}

/// The Keras model: NHWC batches, and a head that takes the image for its shape.
#[test]
fn the_keras_backbone_in_onnxruntime_trains_as_in_burn() {
    backbone_runtimes_train_alike("keras_deeplabv3plus_mobilenetv2");
}

#[test]
fn the_backbone_runs_in_onnxruntime_only_where_it_can() {
    let dir = tempfile::tempdir().unwrap();
    small_set(&dir.path().join("data"), 4, 4, 64);
    let mut cfg = small_config(&dir.path().join("data"));
    cfg.freeze = vec![Freeze::Backbone];
    cfg.bn = BnMode::Train;
    cfg.backbone_runtime = BackboneRuntime::Onnxruntime;
    let err = train::train(cfg, &dir.path().join("run")).unwrap_err().to_string();
    assert!(
        err.contains("--backbone-runtime onnxruntime: --bn train updates the backbone's BatchNorm statistics"),
        "{err}"
    );
    assert!(!dir.path().join("run").exists(), "nothing is written");
}

#[test]
fn freezing_parameters_alone_does_not_freeze_batchnorm() {
    // The counterpart of the test above, and burn's pitfall: with the backbone's parameters
    // frozen but --bn train, BN still normalizes with batch statistics and updates its running
    // statistics on an autodiff device, backbone BN layers included.
    let dir = tempfile::tempdir().unwrap();
    small_set(&dir.path().join("data"), 4, 4, 64);
    let mut cfg = small_config(&dir.path().join("data"));
    cfg.freeze = vec![Freeze::Backbone];
    cfg.bn = BnMode::Train;
    train::train(cfg, &dir.path().join("run")).unwrap();
    let (before, after) = (initial_tensors(), checkpoint_tensors(&dir.path().join("run")));
    let changed = |suffix: &str| {
        reference_model::PARAMS.iter().filter(|e| e.burn.ends_with(suffix) && before[e.burn] != after[e.burn]).count()
    };
    assert_eq!(changed("running_var"), 61);
    assert_eq!(changed("running_mean"), 61);
    let frozen_weights_changed = reference_model::PARAMS
        .iter()
        .filter(|e| e.value.starts_with("encoder.") && e.burn.ends_with("weight") && before[e.burn] != after[e.burn])
        .count();
    assert_eq!(frozen_weights_changed, 0);
}

#[test]
fn without_freezing_everything_trains_including_the_new_head() {
    let dir = tempfile::tempdir().unwrap();
    small_set(&dir.path().join("data"), 4, 4, 64);
    let mut cfg = small_config(&dir.path().join("data"));
    cfg.bn = BnMode::Train;
    let summary = train::train(cfg, &dir.path().join("run")).unwrap();
    assert_eq!(summary.trainable, summary.total, "nothing frozen, the new 4-class head included");
    // Every burn parameter (Identity-shared ONNX tensors count once per user) but the BN running
    // statistics (state, not parameters), with the 21-class head (21·256 + 21) replaced by a
    // 4-class one.
    let init = initial_tensors();
    let params: usize = reference_model::PARAMS
        .iter()
        .filter(|e| !e.burn.ends_with("running_mean") && !e.burn.ends_with("running_var"))
        .map(|e| init[e.burn].len() / 4)
        .sum();
    assert_eq!(summary.total, params - (21 * 256 + 21) + (4 * 256 + 4));
}

#[test]
fn loss_falls_on_a_small_set() {
    let dir = tempfile::tempdir().unwrap();
    small_set(&dir.path().join("data"), 4, 16, 64);
    let mut cfg = small_config(&dir.path().join("data"));
    cfg.bn = BnMode::Train;
    cfg.batch = 4;
    cfg.epochs = 5;
    cfg.lr = Some(0.02);
    let s = train::train(cfg, &dir.path().join("run")).unwrap();
    let (first, last) = (s.history[0].train_loss, s.history.last().unwrap().train_loss);
    assert!(last <= 0.7 * first, "train loss {first:.4} -> {last:.4}: expected a fall of at least 30%");
    // What a person sees.
    let run = dir.path().join("run");
    let metrics: serde_json::Value = common::read_json(run.join("metrics.json"));
    assert_eq!(metrics.as_array().unwrap().len(), 5);
    for key in ["epoch", "train_loss", "val_loss", "val_miou", "val_pixel_accuracy", "lr"] {
        assert!(metrics[4][key].is_number(), "metrics.json lacks {key}");
    }
    // A step's median time is positive and fits in the epoch's training time.
    let (step_ms, seconds) = (metrics[4]["step_ms_median"].as_f64().unwrap(), metrics[4]["seconds"].as_f64().unwrap());
    assert!(step_ms > 0.0 && step_ms < 1e3 * seconds, "step_ms_median {step_ms} of an epoch of {seconds} s");
    assert_eq!(std::fs::read_to_string(run.join("metrics.csv")).unwrap().lines().count(), 6);
    assert!(run.join("curves.png").is_file() && run.join("snapshots/epoch_005.png").is_file());
    let config: serde_json::Value = common::read_json(run.join("config.json"));
    assert_eq!(config["crop"], 64);
    assert_eq!(image::image_dimensions(run.join("snapshots/epoch_001.png")).unwrap(), (3 * 64, 64));
}

#[test]
fn resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one() {
    resume_matches(|cfg| cfg.bn = BnMode::Train);
}

/// The head trains in burn behind the backbone in onnxruntime: its optimizer state (keyed by the
/// whole model's parameter ids) survives the checkpoint.
#[test]
fn resumed_run_with_the_backbone_in_onnxruntime_ends_with_the_same_weights() {
    resume_matches(|cfg| {
        cfg.freeze = vec![Freeze::Backbone];
        cfg.bn = BnMode::Frozen;
        cfg.backbone_runtime = BackboneRuntime::Onnxruntime;
    });
}

/// A 3-epoch run interrupted after epoch 2 and resumed ends bit-identical to an uninterrupted one.
fn resume_matches(setup: impl Fn(&mut TrainConfig)) {
    let dir = tempfile::tempdir().unwrap();
    small_set(&dir.path().join("data"), 4, 6, 64);
    let mut cfg = small_config(&dir.path().join("data"));
    cfg.epochs = 3;
    cfg.seed = 9;
    setup(&mut cfg);
    train::train(cfg.clone(), &dir.path().join("whole")).unwrap();
    cfg.stop_after = Some(2);
    let partial = train::train(cfg, &dir.path().join("split")).unwrap();
    assert_eq!(partial.history.len(), 2);
    let resumed = train::resume(&dir.path().join("split")).unwrap();
    assert_eq!(resumed.history.len(), 3);
    let (a, b) = (checkpoint_tensors(&dir.path().join("whole")), checkpoint_tensors(&dir.path().join("split")));
    assert_eq!(a.len(), b.len());
    for (name, bytes) in &a {
        assert!(bytes == &b[name], "{name} differs after resume");
    }
}

#[test]
fn bad_training_input_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    small_set(&data, 4, 4, 64);
    let d = data.to_str().unwrap();
    let run = dir.path().join("run");
    let r = run.to_str().unwrap();

    let out = segtune(&["train", "--data", d, "--out", r, "--classes", "4", "--crop", "50"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--crop 50: expected a positive multiple of 16"));

    let out =
        segtune(&["train", "--data", d, "--out", r, "--classes", "4", "--bn", "train", "--batch", "1", "--crop", "64"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--bn train with --batch 1: BatchNorm needs more than one value per channel"),
        "{}",
        stderr(&out)
    );

    // Labels go up to 3: two classes are too few, and the error names the mask and the value.
    let out =
        segtune(&["train", "--data", d, "--out", r, "--classes", "2", "--crop", "64", "--epochs", "1", "--batch", "2"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("SegmentationClass/") && err.contains("is outside [0, 2) and not 255"), "{err}");

    let list = data.join("ImageSets/Segmentation/val.txt");
    std::fs::write(&list, "").unwrap();
    let out = segtune(&["train", "--data", d, "--out", r, "--classes", "4", "--crop", "64"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("val.txt") && stderr(&out).contains("split \"val\" is empty"), "{}", stderr(&out));

    std::fs::write(&list, "nope\n").unwrap();
    let out = segtune(&["train", "--data", d, "--out", r, "--classes", "4", "--crop", "64"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("lists \"nope\", but") && stderr(&out).contains("nope.jpg does not exist"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"));
}

#[test]
fn a_nan_loss_stops_with_the_step() {
    let dir = tempfile::tempdir().unwrap();
    small_set(&dir.path().join("data"), 4, 4, 64);
    let weights = dir.path().join("nan.onnx");
    let mut m = common::reference();
    common::map_initializer(&mut m, "encoder.features.0.0.weight", |i, v| if i == 0 { f32::NAN } else { v });
    common::write_model(&m, &weights);
    let mut cfg = small_config(&dir.path().join("data"));
    cfg.weights = Some(weights);
    let err = train::train(cfg, &dir.path().join("run")).unwrap_err().to_string();
    assert!(err.contains("loss is NaN at epoch 1, step 1 of the epoch (global step 1); stopped"), "{err}");
    assert!(err.contains("last good checkpoint is none yet"), "{err}");
}

#[test]
fn frozen_bn_at_initial_statistics_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    small_set(&data, 4, 2, 64);
    let run = dir.path().join("run");
    let args = ["train", "--data", data.to_str().unwrap(), "--out", run.to_str().unwrap(), "--classes", "4"];
    // One epoch of batch 2 at 64² into `out`, with `extra` flags.
    let train = |out: &Path, extra: &[&str]| {
        let base = ["train", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "--classes", "4"];
        segtune(&[&base[..], &["--epochs", "1", "--batch", "2", "--crop", "64"], extra].concat())
    };
    // The shipped model's statistics are trained: the frozen-BN recipe raises no warning.
    let out = train(&run, &["--freeze", "backbone"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("initial values"), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("parameters trainable (--freeze backbone --bn frozen)"), "{stdout}");

    // A checkpoint whose statistics never trained does.
    let untrained = dir.path().join("untrained_bn.onnx");
    let mut proto = common::reference();
    common::reset_bn_statistics(&mut proto);
    common::write_model(&proto, &untrained);
    let out = train(&dir.path().join("run1"), &["--weights", untrained.to_str().unwrap(), "--freeze", "backbone"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let want =
        format!("warning: the BatchNorm statistics of {} are still at their initial values", untrained.display());
    assert!(err.contains(&want), "{err}");
    assert!(err.contains("use --bn train, or start from a pretrained checkpoint"), "{err}");

    // --bn train: no warning.
    let out = train(&dir.path().join("run2"), &["--bn", "train"]);
    assert!(out.status.success());
    assert!(!stderr(&out).contains("initial values"));
    // A second run into the same directory is refused; --resume of a finished run changes nothing.
    let out = segtune(&[&args[..], &["--crop", "64"]].concat());
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("already holds a run (config.json); use --resume"), "{}", stderr(&out));
}

#[test]
fn adamw_with_warmup_and_gradient_clipping_trains() {
    let dir = tempfile::tempdir().unwrap();
    small_set(&dir.path().join("data"), 4, 8, 64);
    let mut cfg = small_config(&dir.path().join("data"));
    cfg.optimizer = train::OptimizerKind::Adamw;
    cfg.lr = Some(1e-3);
    cfg.weight_decay = 1e-2;
    cfg.warmup_steps = 2;
    cfg.grad_clip = Some(1.0);
    cfg.bn = BnMode::Train;
    cfg.batch = 4;
    cfg.epochs = 3;
    let s = train::train(cfg.clone(), &dir.path().join("run")).unwrap();
    let (first, last) = (s.history[0].train_loss, s.history[2].train_loss);
    assert!(last < first, "AdamW: train loss {first:.4} -> {last:.4}");
    // Warmup then poly: step 0 at lr/2, step 1 at lr, then decaying to 0 at the end.
    assert!((segtune::setup::learning_rate(&cfg, 0, 6) - 5e-4).abs() < 1e-12);
    assert!((segtune::setup::learning_rate(&cfg, 1, 6) - 1e-3).abs() < 1e-12);
    assert!((segtune::setup::learning_rate(&cfg, 3, 6) - 1e-3 * 0.5f64.powf(0.9)).abs() < 1e-12);
    assert!(segtune::setup::learning_rate(&cfg, 6, 6).abs() < 1e-12);
}

#[test]
fn a_checkpoint_with_other_initializer_names_trains() {
    // Eval-mode and other exporters name tensors differently (`onnx::Conv_312`); only the
    // architecture has to match.
    let dir = tempfile::tempdir().unwrap();
    let mut m = common::reference();
    let g = m.graph.as_mut().unwrap();
    let renames: HashMap<String, String> =
        g.initializer.iter().enumerate().map(|(i, t)| (t.name().to_string(), format!("onnx::Tensor_{i}"))).collect();
    for t in &mut g.initializer {
        t.name = Some(renames[t.name()].clone());
    }
    for n in &mut g.node {
        for input in &mut n.input {
            if let Some(new) = renames.get(input.as_str()) {
                *input = new.clone();
            }
        }
    }
    let weights = dir.path().join("renamed.onnx");
    common::write_model(&m, &weights);
    small_set(&dir.path().join("data"), 4, 2, 64);
    let mut cfg = small_config(&dir.path().join("data"));
    cfg.weights = Some(weights);
    cfg.bn = BnMode::Train;
    let s = train::train(cfg, &dir.path().join("run")).unwrap();
    assert_eq!(s.history.len(), 1);
    // The same weights as the shipped file, tensor for tensor.
    let ckpt = Checkpoint::open(None, Some(&dir.path().join("renamed.onnx"))).unwrap();
    let renamed: HashMap<String, Vec<u8>> =
        ckpt.tensors().unwrap().into_iter().map(|t| (t.name.clone(), t.to_bytes().unwrap().to_vec())).collect();
    assert_eq!(renamed, initial_tensors());
}

/// `--tensorboard` writes event files TensorBoard reads: each epoch's scalars as metrics.json
/// has them (read back by segtune's reader, which checks every record's CRC) and its snapshot.
#[test]
fn tensorboard_event_files_hold_each_epochs_scalars_and_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::synth_set(&dir.path().join("data"), 4, 8, 2, 64, 5);
    let run = dir.path().join("run");
    let out = segtune(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--model",
        "tiny_deeplabv3plus",
        "--classes",
        "4",
        "--epochs",
        "2",
        "--batch",
        "4",
        "--crop",
        "64",
        "--freeze",
        "backbone",
        "--tensorboard",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let history: Vec<serde_json::Value> = common::read_json(run.join("metrics.json"));
    let board = run.join("tensorboard");
    for (tag, key) in
        [("val/miou", "val_miou"), ("train/loss", "train_loss"), ("val/loss", "val_loss"), ("train/lr", "lr")]
    {
        let got = segtune::tensorboard::read_scalars(&board, tag).unwrap();
        let want: Vec<(i64, f32)> =
            history.iter().map(|m| (m["epoch"].as_i64().unwrap(), m[key].as_f64().unwrap() as f32)).collect();
        assert_eq!(got, want, "{tag}");
    }
    let files: Vec<_> = std::fs::read_dir(&board).unwrap().flatten().collect();
    assert_eq!(files.len(), 1);
    let images = segtune::tensorboard::read_events(&files[0].path())
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.what {
            Some(segtune::tensorboard::event::What::Summary(s)) => Some(s.value),
            _ => None,
        })
        .flatten()
        .filter_map(|v| match v.value {
            Some(segtune::tensorboard::summary_value::Value::Image(i)) => Some(i),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert_eq!(images.len(), 2, "one snapshot per epoch");
    assert!(images[0].encoded_image_string.starts_with(b"\x89PNG"));
    assert_eq!((images[0].width, images[0].height), (3 * 64, 64));
}
