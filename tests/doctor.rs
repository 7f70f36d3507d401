//! `segtune doctor`: each check triggered by a crafted fixture, a healthy setup with no FAIL,
//! and the JSON report.

mod common;

use std::path::Path;

use image::{GrayImage, Luma, Rgb, RgbImage};
use segtune::data;
use segtune::doctor::{self, DoctorOptions, DoctorReport, Status};
use segtune::train::{BnMode, TrainConfig};

fn set(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("data");
    common::synth_set(&data, 4, 8, 4, 64, 21);
    data
}

fn config(data: &Path) -> TrainConfig {
    let mut c = TrainConfig::new(data.to_path_buf());
    c.classes = 4;
    c.batch = 4;
    c.crop = 64;
    c.bn = BnMode::Train;
    c
}

fn run(cfg: &TrainConfig) -> DoctorReport {
    doctor::doctor(cfg, &DoctorOptions { steps: 20, ..Default::default() }).unwrap()
}

fn status(r: &DoctorReport, name: &str) -> (Status, String) {
    let c = r.checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check {name}: {r}"));
    (c.status, format!("{} | {}", c.measured, c.fix))
}

/// Rewrites every mask of the set with `f(index mask)`.
fn rewrite_masks(data: &Path, f: impl Fn(&GrayImage, &Path)) {
    for entry in std::fs::read_dir(data.join("SegmentationClass")).unwrap() {
        let path = entry.unwrap().path();
        let mask = data::load_mask(&path, 4).unwrap();
        f(&mask, &path);
    }
}

#[test]
fn healthy_setup_has_no_fail_and_json_lists_every_check() {
    let dir = tempfile::tempdir().unwrap();
    // DeepLab's recipe for small batches (BN frozen at the shipped model's trained statistics):
    // with --bn train at batch 4 the eval loss after 20 steps lands within ±10 % of the label
    // prior (the FAIL threshold), so float rounding alone decides that check.
    let mut cfg = config(&set(dir.path()));
    cfg.bn = BnMode::Frozen;
    let r = run(&cfg);
    assert_eq!(r.failures(), 0, "{r}");
    assert_eq!(status(&r, "train.overfit").0, Status::Pass);
    assert!(r.summary[0].contains("nothing found") || r.checks.iter().all(|c| c.status != Status::Fail), "{r}");
    let json = dir.path().join("doctor.json");
    doctor::write_json(&r, &json).unwrap();
    let v: serde_json::Value = common::read_json(json);
    let checks = v["checks"].as_array().unwrap();
    assert!(checks.len() >= 15);
    for c in checks {
        for key in ["name", "status", "measured", "fix"] {
            assert!(c[key].is_string(), "{key} in {c}");
        }
    }
}

/// The synthetic set with the shipped (pretrained) model and the default training flags, sized
/// to the set (classes, batch, crop): no FAIL. Default `--bn frozen` is right for a model whose
/// BatchNorm statistics were trained.
#[test]
fn default_flags_on_the_shipped_model_have_no_fail() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = TrainConfig::new(set(dir.path()));
    (cfg.classes, cfg.batch, cfg.crop) = (4, 4, 64);
    assert_eq!(cfg.bn, BnMode::Frozen);
    let r = run(&cfg);
    assert_eq!(r.failures(), 0, "{r}");
    assert_eq!(status(&r, "bn.statistics").0, Status::Pass, "{r}");
}

/// `segtune demo`'s recipe (frozen backbone, frozen BN, new 6-class head, lr 0.02) on a set like
/// the demo's: no FAIL, and one batch overfits.
#[test]
fn the_demo_setup_has_no_fail() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::synth_set(&data, 6, 16, 8, 128, 1);
    let cfg = segtune::demo::recipe(data, 5);
    let r = run(&cfg);
    assert_eq!(r.failures(), 0, "{r}");
    assert_eq!(status(&r, "train.overfit").0, Status::Pass, "{r}");
}

#[test]
fn one_hot_masks_with_255_fail() {
    let dir = tempfile::tempdir().unwrap();
    let data = set(dir.path());
    rewrite_masks(&data, |m, p| {
        // One channel per class (classes 0..2 in R, G, B), 255 where hot.
        let img = RgbImage::from_fn(m.width(), m.height(), |x, y| {
            let v = m.get_pixel(x, y)[0].min(2) as usize;
            let mut px = [0u8; 3];
            px[v] = 255;
            Rgb(px)
        });
        img.save(p).unwrap();
    });
    let r = run(&config(&data));
    let (s, text) = status(&r, "labels.format");
    assert_eq!(s, Status::Fail);
    assert!(text.contains("one-hot or multi-channel") && text.contains("argmax"), "{text}");
    assert!(r.summary[0].starts_with("FAIL labels.format"), "{r}");
}

#[test]
fn rgb_colour_masks_fail_with_the_colour_to_index_hint() {
    let dir = tempfile::tempdir().unwrap();
    let data = set(dir.path());
    let palette = data::voc_palette();
    rewrite_masks(&data, |m, p| {
        let img = RgbImage::from_fn(m.width(), m.height(), |x, y| Rgb(palette[m.get_pixel(x, y)[0] as usize]));
        img.save(p).unwrap();
    });
    let r = run(&config(&data));
    let (s, text) = status(&r, "labels.format");
    assert_eq!(s, Status::Fail);
    assert!(text.contains("store RGB colours instead of class indices"), "{text}");
    assert!(text.contains("(0,0,0) -> 0") && text.contains("(128,0,0) -> 1"), "{text}");
}

#[test]
fn stray_label_values_fail_naming_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = set(dir.path());
    let p = data.join("SegmentationClass/train_00002.png");
    let mut m = data::load_mask(&p, 4).unwrap();
    m.put_pixel(1, 1, Luma([9]));
    data::write_index_png(&p, &m, &data::voc_palette()).unwrap();
    let r = run(&config(&data));
    let (s, text) = status(&r, "labels.range");
    assert_eq!(s, Status::Fail);
    assert!(text.contains("values {9} outside [0, 4)") && text.contains("train_00002.png"), "{text}");
    assert!(r.suggested_command.as_deref().unwrap_or("").contains("--classes 10"), "{r}");
}

#[test]
fn a_model_ending_in_softmax_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let data = set(dir.path());
    let weights = dir.path().join("softmax.onnx");
    let mut m = common::reference();
    common::append_softmax(&mut m);
    common::write_model(&m, &weights);
    let mut cfg = config(&data);
    cfg.weights = Some(weights);
    let r = run(&cfg);
    let (s, text) = status(&r, "model.softmax");
    assert_eq!(s, Status::Warn);
    assert!(
        text.contains("Softmax node \"probs\"") && text.contains("trains on the logits before the softmax"),
        "{text}"
    );
    assert!(text.contains("applies softmax twice"), "{text}");
}

#[test]
fn a_tiny_learning_rate_fails_and_the_sweep_finds_one_that_works() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&set(dir.path()));
    cfg.lr = Some(1e-5);
    let r = run(&cfg);
    let (s, text) = status(&r, "train.overfit");
    assert_eq!(s, Status::Fail, "{r}");
    assert!(text.contains("learning-rate sweep") && text.contains("cannot fit even one batch at --lr 1e-5"), "{text}");
    let cmd = r.suggested_command.clone().unwrap();
    assert!(cmd.contains("--lr 1e-3") || cmd.contains("--lr 1e-2"), "{cmd}");
    // The workable rate passes.
    cfg.lr = Some(1e-2);
    assert_eq!(status(&run(&cfg), "train.overfit").0, Status::Pass);
}

#[test]
fn bn_train_at_batch_1_fails_and_at_batch_2_warns() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&set(dir.path()));
    cfg.batch = 1;
    let r = run(&cfg);
    let (s, text) = status(&r, "bn.batch");
    assert_eq!(s, Status::Fail);
    assert!(text.contains("more than one value per channel"), "{text}");
    cfg.batch = 2;
    let r = run(&cfg);
    assert_eq!(status(&r, "bn.batch").0, Status::Warn);
    assert!(status(&r, "bn.batch").1.contains("noisy"));
}

#[test]
fn frozen_bn_on_untrained_statistics_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&set(dir.path()));
    // The shipped model's statistics are trained; a checkpoint's that never were.
    let untrained = dir.path().join("untrained_bn.onnx");
    let mut proto = common::reference();
    common::reset_bn_statistics(&mut proto);
    common::write_model(&proto, &untrained);
    cfg.weights = Some(untrained);
    cfg.bn = BnMode::Frozen;
    let r = run(&cfg);
    let (s, text) = status(&r, "bn.statistics");
    assert_eq!(s, Status::Fail);
    assert!(text.contains("never trained") && text.contains("0.14"), "{text}");
    assert!(r.summary[0].starts_with("FAIL bn.statistics"), "the most likely cause first: {r}");
    assert!(r.suggested_command.unwrap().contains("--bn train"));
}

/// A small training loss and a huge eval loss: training-mode loss falls while eval mode, which uses running
/// statistics that do not describe the data (here: every running variance 10⁸× too large, as a
/// momentum-convention bug leaves them), gives back most of the starting loss.
#[test]
fn running_statistics_that_do_not_fit_the_data_fail_the_train_eval_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&set(dir.path()));
    let mut proto = common::reference();
    common::map_bn_statistics(&mut proto, |m| m, |v| v * 1e8);
    let path = dir.path().join("bad_running_var.onnx");
    common::write_model(&proto, &path);
    cfg.weights = Some(path);
    let r = run(&cfg);
    let (s, text) = status(&r, "bn.train_eval_gap");
    assert_eq!(s, Status::Fail, "{r}");
    assert!(
        text.contains("predicting only the class frequencies")
            && text.contains("a small training loss and a huge eval loss"),
        "{text}"
    );
}
