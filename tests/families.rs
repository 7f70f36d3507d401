//! Checkpoint families beyond the shipped smp model, compiled in from `models/` when their files
//! are there. They are too large to commit (~44 MB), so scripts make them:
//! torchvision DeepLabv3 with a MobileNetV3-Large backbone (`scripts/export_torchvision.py`).
//! Each test prints why it is skipped when its model is absent (as in CI).

mod common;

use std::path::Path;

use segtune::data::{self, SynthOptions};
use segtune::export;
use segtune::model::{self, Checkpoint};
use segtune::train::{self, BnMode, Freeze, TrainConfig};
use segtune::validate::{self, ParityOptions};

const TORCHVISION: &str = "deeplabv3_mobilenet_v3_large";

fn present(name: &str) -> bool {
    if model::find(name).is_ok() {
        return true;
    }
    eprintln!(
        "skipped: model {name} is not compiled in (make models/{name}.onnx with scripts/export_torchvision.py, \
         then rebuild)"
    );
    false
}

#[test]
fn torchvision_matches_onnxruntime() {
    if !present(TORCHVISION) {
        return;
    }
    let ckpt = Checkpoint::open(Some(TORCHVISION), None).unwrap();
    for (batch, size) in [(1, 64), (2, 128)] {
        let opts = ParityOptions { batch, size, seed: 1, repeat: 0, ..Default::default() };
        let r = validate::parity_check(&ckpt, &opts).unwrap();
        assert!(r.pass && r.max_abs_diff <= 1e-4, "batch {batch}, {size}²: max |Δ| {:e}", r.max_abs_diff);
    }
}

#[test]
fn torchvision_checkpoint_is_recognized_by_its_architecture() {
    if !present(TORCHVISION) {
        return;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/{TORCHVISION}.onnx"));
    let ckpt = Checkpoint::open(None, Some(&path)).unwrap();
    assert_eq!(ckpt.info.name, TORCHVISION);
    // The shipped smp model is not mistaken for it.
    assert_eq!(Checkpoint::open(None, Some(&common::reference_path())).unwrap().info.name, "deeplabv3plus_mobilenetv2");
}

#[test]
fn torchvision_fine_tunes_exports_and_validates() {
    if !present(TORCHVISION) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    data::synth(&data, &SynthOptions { classes: 4, train: 4, val: 2, size: 64, seed: 9, ..Default::default() })
        .unwrap();
    let mut cfg = TrainConfig::new(data.clone());
    cfg.model = TORCHVISION.into();
    (cfg.classes, cfg.epochs, cfg.batch, cfg.crop, cfg.bn) = (4, 1, 2, 64, BnMode::Train);
    let run = dir.path().join("run");
    let summary = train::train(cfg.clone(), &run).unwrap();
    let m = &summary.history[0];
    assert!(m.train_loss.is_finite() && m.val_loss.is_finite(), "{m:?}");
    let out = dir.path().join("export.onnx");
    let report = export::export(&run, &out).unwrap();
    assert_eq!(report.classes, 4);
    let v = validate::validate_onnx(&out, &data, "val", Some(&run), 1).unwrap();
    assert!(v.parity.as_ref().is_some_and(|p| p.pass), "{v}");

    // --freeze backbone finds torchvision's `backbone.` parameters.
    cfg.freeze = Freeze::Backbone;
    cfg.bn = BnMode::Frozen;
    let frozen = train::train(cfg, &dir.path().join("frozen")).unwrap();
    // MobileNetV3-Large's features: 2,971,952 parameters; the DeepLabHead (ASPP) is the rest.
    assert_eq!(frozen.total - frozen.trainable, 2_971_952, "{} of {} trainable", frozen.trainable, frozen.total);
}
