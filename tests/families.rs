//! Checkpoint families beyond the shipped smp model.
//! - Keras DeepLabv3+ converted by tf2onnx (`scripts/export_keras_deeplabv3plus.py`): the
//!   MobileNetV2 option is committed (pretrained by segtune, models/README.md) and always tested;
//!   the Xception-65 one (~165 MB) is made by the script.
//! - torchvision DeepLabv3 with a MobileNetV3-Large backbone (`scripts/export_torchvision.py`,
//!   ~44 MB, made by the script).
//!
//! Tests of a model that is not in `models/` are ignored, with the reason (as in CI): build.rs
//! sets `cfg(segtune_model = "STEM")` for each compiled-in model.

mod common;

use std::path::Path;

use segtune::data::{self, SynthOptions};
use segtune::export;
use segtune::model::{self, Checkpoint};
use segtune::train::{self, BnMode, Freeze, TrainConfig};
use segtune::validate::{self, ParityOptions};

const TORCHVISION: &str = "deeplabv3_mobilenet_v3_large";
const KERAS: &str = "keras_deeplabv3plus_mobilenetv2";
const XCEPTION: &str = "keras_deeplabv3plus_xception65";
/// TensorFlow's count of the Xception-65 model's trainable weights (21 classes), and of those in
/// its `backbone_*` layers.
const XCEPTION_TRAINABLE: usize = 41_055_413;
const XCEPTION_BACKBONE: usize = 37_867_312;

fn present(name: &str) -> bool {
    if model::find(name).is_ok() {
        return true;
    }
    let script = match name {
        TORCHVISION => "scripts/export_torchvision.py",
        XCEPTION => "scripts/export_keras_deeplabv3plus.py --backbone xception65 --calibrate-bn",
        _ => "its script",
    };
    eprintln!("skipped: model {name} is not compiled in (make models/{name}.onnx with {script}, then rebuild)");
    false
}

fn model_path(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/{name}.onnx"))
}

/// The largest |logit| onnxruntime gives for the ONNX `bytes` on the seeded parity input.
fn largest_logit(bytes: &[u8], norm: &model::Normalization, batch: usize, size: usize) -> f32 {
    let input = validate::seeded_input(batch, size, norm, 1);
    let mut ort = segtune::runtime::OrtModel::from_bytes(bytes, "model", 1).unwrap();
    let logits = ort.run_logits(input.view(), norm.layout).unwrap();
    logits.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// Parity of the burn model with onnxruntime at two batch sizes and sizes: max |Δ| ≤ 1e-4, or with
/// `relative`, ≤ 1e-4 × the largest |logit| (when that is above 1). The logits must reach
/// `min_logit`: at Keras' initial BN statistics a random network's logits are ~1e-11, and any
/// difference passes.
fn assert_parity(name: &str, min_logit: f32, relative: bool) {
    let ckpt = Checkpoint::open(Some(name), None).unwrap();
    for (batch, size) in [(1, 64), (2, 128)] {
        let scale = largest_logit(&ckpt.onnx_bytes().unwrap(), &ckpt.normalization, batch, size);
        assert!(scale > min_logit, "{name}: largest |logit| {scale:e}: parity on it proves little");
        let tol = if relative { 1e-4 * scale.max(1.0) } else { 1e-4 };
        let opts = ParityOptions { batch, size, seed: 1, repeat: 0, tol, ..Default::default() };
        let r = validate::parity_check(&ckpt, &opts).unwrap();
        assert!(
            r.pass,
            "{name} batch {batch}, {size}²: max |Δ| {:e} > {tol:e} (largest |logit| {scale})",
            r.max_abs_diff
        );
        assert!(r.argmax_agreement >= 0.999, "{name}: argmax agreement {}", r.argmax_agreement);
    }
}

/// One epoch of fine-tuning `name` (4 classes, BN in train mode, 64² crops), its export, and the
/// export's validation with parity against the run's burn model (max |Δ| ≤ 1e-4, or with
/// `relative`, ≤ 1e-4 × the export's largest |logit|); then the same run with `--freeze backbone
/// --bn frozen`. Returns the export's ONNX graph, the full run's (trainable, total) and the frozen
/// run's frozen parameter count.
fn fine_tune_export_validate(name: &str, relative: bool) -> (segtune::onnx::ModelProto, (usize, usize), usize) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::synth_set(&data, 4, 4, 2, 64, 9);
    let mut cfg = TrainConfig::new(data.clone());
    cfg.model = name.into();
    (cfg.classes, cfg.epochs, cfg.batch, cfg.crop, cfg.bn) = (4, 1, 2, 64, BnMode::Train);
    let run = dir.path().join("run");
    let summary = train::train(cfg.clone(), &run).unwrap();
    let m = &summary.history[0];
    assert!(m.train_loss.is_finite() && m.val_loss.is_finite(), "{name}: {m:?}");
    let out = dir.path().join("export.onnx");
    let report = export::export(&run, &out).unwrap();
    assert_eq!(report.classes, 4);
    let v = validate::validate_onnx(&out, &data, "val", Some(&run), 1).unwrap();
    let parity = v.parity.as_ref().unwrap();
    if relative {
        let norm = model::Normalization::from_metadata(&segtune::onnx::metadata(&proto_of(&out))).unwrap();
        let scale = largest_logit(&std::fs::read(&out).unwrap(), &norm, 1, 64).max(1.0);
        assert!(
            parity.max_abs_diff <= 1e-4 * scale && parity.argmax_agreement >= 0.999,
            "{name}: {v} (largest |logit| {scale})"
        );
    } else {
        assert!(parity.pass, "{name}: {v}");
    }
    cfg.freeze = vec![Freeze::Backbone];
    cfg.bn = BnMode::Frozen;
    let frozen = train::train(cfg, &dir.path().join("frozen")).unwrap();
    assert!(
        frozen.trainable > 0 && frozen.trainable < frozen.total,
        "{name}: {} of {}",
        frozen.trainable,
        frozen.total
    );
    (proto_of(&out), (summary.trainable, summary.total), frozen.total - frozen.trainable)
}

fn proto_of(path: &Path) -> segtune::onnx::ModelProto {
    segtune::onnx::read_model(path).unwrap()
}

#[test]
fn keras_graph_is_tf2onnx_nhwc_with_pads_transposes_and_depthwise_convolutions() {
    let proto = segtune::onnx::read_model(&model_path(KERAS)).unwrap();
    let i = segtune::onnx::inspect(&proto, &model_path(KERAS));
    assert!(i.producer.starts_with("tf2onnx"), "{}", i.producer);
    for op in ["Transpose", "Pad", "BatchNormalization", "Resize", "Clip"] {
        assert!(i.op_histogram.get(op).is_some_and(|&n| n > 0), "no {op} in {:?}", i.op_histogram);
    }
    let g = segtune::onnx::graph(&proto);
    let depthwise = g
        .node
        .iter()
        .filter(|n| n.op_type() == "Conv" && segtune::onnx::attr(n, "group").and_then(|a| a.i).unwrap_or(1) > 1)
        .count();
    assert_eq!(depthwise, 17 + 5, "MobileNetV2's 17 depthwise convolutions and 5 separable ones in ASPP/decoder");
    // Layout and normalization come from the model: NHWC, [-1, 1].
    let ckpt = Checkpoint::open(None, Some(&model_path(KERAS))).unwrap();
    assert_eq!(ckpt.info.name, KERAS);
    let n = ckpt.normalization;
    assert_eq!((n.layout, n.mean, n.std, n.size_multiple), (model::Layout::Nhwc, [0.5; 3], [0.5; 3], 16));
    assert_eq!(segtune::onnx::output_classes(segtune::onnx::graph(&proto), n.layout.class_axis()), Some(21));
}

#[test]
fn keras_matches_onnxruntime() {
    assert_parity(KERAS, 1.0, false);
}

#[test]
fn keras_fine_tunes_exports_and_validates_keeping_its_layout() {
    let (proto, (trainable, total), frozen) = fine_tune_export_validate(KERAS, false);
    // Every weight Keras counts as trainable (2,719,813 with 21 classes) trains here, the
    // classifier bias included; 4 classes leave 17 × (256 + 1) fewer.
    assert_eq!((trainable, total), (2_719_813 - 17 * 257, 2_719_813 - 17 * 257));
    let meta = segtune::onnx::metadata(&proto);
    assert_eq!(meta["segtune.layout"], "NHWC");
    assert_eq!(meta["segtune.mean"], "0.5,0.5,0.5");
    let axis = model::Layout::Nhwc.class_axis();
    assert_eq!(
        segtune::onnx::output_classes(segtune::onnx::graph(&proto), axis),
        Some(4),
        "the NHWC output's class axis is resized"
    );
    // --freeze backbone freezes exactly Keras' backbone: 1,811,712 trainable weights of the
    // `backbone_*` layers (convolutions and BN scale/offset), counted by TensorFlow.
    assert_eq!(frozen, 1_811_712);
}

#[test]
fn infer_masks_are_onnxruntimes_argmax_in_either_layout() {
    // Images already at the model's size (64×48, a multiple of 16, --size 64) are neither
    // scaled nor padded, and upsampling to the same size interpolates nothing: each mask must
    // be exactly the argmax of onnxruntime's logits, for the NCHW smp model and the NHWC Keras
    // one (whose output infer reads through a permuted view).
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("corpus");
    let opts = SynthOptions { classes: 21, train: 1, val: 3, size: 64, seed: 9, style: data::SynthStyle::Corpus };
    data::synth(&data, &opts).unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    let crops: Vec<image::RgbImage> = (0..3)
        .map(|i| {
            let img = image::open(data.join(format!("JPEGImages/val_{i:05}.jpg"))).unwrap().to_rgb8();
            let crop = image::imageops::crop_imm(&img, 0, 8, 64, 48).to_image();
            crop.save(imgs.join(format!("c{i}.png"))).unwrap();
            crop
        })
        .collect();
    for name in ["deeplabv3plus_mobilenetv2", KERAS] {
        let path = model_path(name);
        let out = dir.path().join(name);
        let infer_opts = segtune::infer::InferOptions {
            out: out.clone(),
            overlay: false,
            batch: 2,
            threads: 1,
            size: Some(64),
            square: false,
            provider: Default::default(),
            spin: false,
            test_time: Default::default(),
        };
        let summary = segtune::infer::infer(&path, &[imgs.display().to_string()], &infer_opts).unwrap();
        assert_eq!((summary.images.len(), summary.failed.len()), (3, 0));

        let ckpt = Checkpoint::open(None, Some(&path)).unwrap();
        let norm = ckpt.normalization;
        let mut ort = segtune::runtime::OrtModel::from_bytes(&ckpt.onnx_bytes().unwrap(), name, 1).unwrap();
        let mut objects = 0;
        for (i, crop) in crops.iter().enumerate() {
            let value =
                |c: usize, x: u32, y: u32| (crop.get_pixel(x, y)[c] as f32 / 255.0 - norm.mean[c]) / norm.std[c];
            let input = match norm.layout {
                model::Layout::Nchw => {
                    ndarray::Array4::from_shape_fn((1, 3, 48, 64), |(_, c, y, x)| value(c, x as u32, y as u32))
                }
                model::Layout::Nhwc => {
                    ndarray::Array4::from_shape_fn((1, 48, 64, 3), |(_, y, x, c)| value(c, x as u32, y as u32))
                }
            };
            let logits = ort.run_logits(input.view(), norm.layout).unwrap();
            let mask = data::load_mask(&out.join(format!("c{i}.png")), 21).unwrap();
            assert_eq!(mask.dimensions(), (64, 48));
            for (x, y, m) in mask.enumerate_pixels() {
                let column = logits.slice(ndarray::s![0, .., y as usize, x as usize]);
                let best = (0..21).fold(0, |b, k| if column[k] > column[b] { k } else { b });
                assert_eq!(m[0] as usize, best, "{name}: c{i}.png ({x}, {y})");
                objects += (best != 0) as usize;
            }
        }
        assert!(objects > 3 * 64 * 48 / 20, "{name}: {objects} object pixels: the masks are nearly all background");
    }
}

#[test]
fn keras_checkpoint_with_the_seeds_softmax_is_recognized_and_its_recipe_diagnosed() {
    use segtune::doctor::{self, DoctorOptions, Status};
    let dir = tempfile::tempdir().unwrap();
    let mut proto = segtune::onnx::read_model(&model_path(KERAS)).unwrap();
    common::insert_softmax_before_output_transpose(&mut proto);
    let softmax = dir.path().join("keras_softmax.onnx");
    common::write_model(&proto, &softmax);
    let ckpt = Checkpoint::open(None, Some(&softmax)).unwrap();
    assert_eq!(ckpt.info.name, KERAS, "the softmax before the final Transpose is not architecture");

    // The seed's recipe: softmax output, lr 1e-5, "frozen" backbone whose BN trains at batch 2.
    let data = dir.path().join("data");
    common::synth_set(&data, 4, 8, 4, 64, 21);
    let mut cfg = TrainConfig::new(data);
    cfg.model = KERAS.into();
    cfg.weights = Some(softmax);
    (cfg.classes, cfg.batch, cfg.crop, cfg.lr) = (4, 2, 64, Some(1e-5));
    (cfg.freeze, cfg.bn) = (vec![Freeze::Backbone], BnMode::Train);
    let r = doctor::doctor(&cfg, &DoctorOptions { steps: 20, ..Default::default() }).unwrap();
    let status = |name: &str| r.checks.iter().find(|c| c.name == name).map(|c| c.status).unwrap();
    assert_eq!(status("model.softmax"), Status::Warn, "{r}");
    assert_eq!(status("bn.batch"), Status::Warn, "{r}");
    assert_eq!(status("train.overfit"), Status::Fail, "{r}");
    let cmd = r.suggested_command.clone().unwrap();
    assert!(cmd.contains("--batch 8") && cmd.contains("--freeze backbone") && !cmd.contains("--lr 1e-5"), "{cmd}");
    let softmax_check = r.checks.iter().find(|c| c.name == "model.softmax").unwrap();
    assert!(softmax_check.measured.contains("Softmax") && softmax_check.measured.contains("(axis 1)"), "{r}");
}

#[test]
#[cfg_attr(
    not(segtune_model = "keras_deeplabv3plus_xception65"),
    ignore = "model keras_deeplabv3plus_xception65 is not compiled in: make it with scripts/export_keras_deeplabv3plus.py --backbone xception65 --calibrate-bn, then rebuild"
)]
fn xception65_matches_onnxruntime() {
    if !present(XCEPTION) {
        return;
    }
    // Random weights with BN statistics calibrated on noise (--calibrate-bn): logits of 10–60,
    // where float32 over 65 layers differs by ~1e-5 of the logits between any two runtimes
    // (TensorFlow vs onnxruntime: 9.2e-5 at 64², largest logit 13).
    assert_parity(XCEPTION, 1.0, true);
    let ckpt = Checkpoint::open(None, Some(&model_path(XCEPTION))).unwrap();
    assert_eq!(ckpt.info.name, XCEPTION);
}

#[test]
#[cfg_attr(
    not(segtune_model = "keras_deeplabv3plus_xception65"),
    ignore = "model keras_deeplabv3plus_xception65 is not compiled in: make it with scripts/export_keras_deeplabv3plus.py --backbone xception65 --calibrate-bn, then rebuild"
)]
fn xception65_fine_tunes_exports_and_validates() {
    if !present(XCEPTION) {
        return;
    }
    // Random weights whose BN statistics came from noise: after an epoch on 4 images the
    // eval-mode logits reach ~1e7 (the running statistics, momentum 0.99, trail the weights), so
    // parity is checked relative to them. This shows the mechanics on the Xception graph, not
    // a fine-tune that learns.
    let (proto, (trainable, _), frozen) = fine_tune_export_validate(XCEPTION, true);
    assert_eq!(segtune::onnx::metadata(&proto)["segtune.layout"], "NHWC");
    // Keras' trainable weights, 21-class head replaced by a 4-class one (17 × (256 + 1) fewer);
    // the backbone's share counted by TensorFlow (`backbone_*` layers).
    assert_eq!(trainable, XCEPTION_TRAINABLE - 17 * 257);
    assert_eq!(frozen, XCEPTION_BACKBONE);
}

#[test]
#[cfg_attr(
    not(segtune_model = "deeplabv3_mobilenet_v3_large"),
    ignore = "model deeplabv3_mobilenet_v3_large is not compiled in: make models/deeplabv3_mobilenet_v3_large.onnx with scripts/export_torchvision.py, then rebuild"
)]
fn torchvision_matches_onnxruntime() {
    if !present(TORCHVISION) {
        return;
    }
    assert_parity(TORCHVISION, 0.0, false);
}

#[test]
#[cfg_attr(
    not(segtune_model = "deeplabv3_mobilenet_v3_large"),
    ignore = "model deeplabv3_mobilenet_v3_large is not compiled in: make models/deeplabv3_mobilenet_v3_large.onnx with scripts/export_torchvision.py, then rebuild"
)]
fn torchvision_checkpoint_is_recognized_by_its_architecture() {
    if !present(TORCHVISION) {
        return;
    }
    let ckpt = Checkpoint::open(None, Some(&model_path(TORCHVISION))).unwrap();
    assert_eq!(ckpt.info.name, TORCHVISION);
    // The shipped smp model is not mistaken for it.
    assert_eq!(Checkpoint::open(None, Some(&common::reference_path())).unwrap().info.name, "deeplabv3plus_mobilenetv2");
}

#[test]
#[cfg_attr(
    not(segtune_model = "deeplabv3_mobilenet_v3_large"),
    ignore = "model deeplabv3_mobilenet_v3_large is not compiled in: make models/deeplabv3_mobilenet_v3_large.onnx with scripts/export_torchvision.py, then rebuild"
)]
fn torchvision_fine_tunes_exports_and_validates() {
    if !present(TORCHVISION) {
        return;
    }
    let (_, _, frozen) = fine_tune_export_validate(TORCHVISION, false);
    // --freeze backbone finds torchvision's `backbone.` parameters: MobileNetV3-Large's
    // features, 2,971,952 parameters; the DeepLabHead (ASPP) is the rest.
    assert_eq!(frozen, 2_971_952);
}

/// torchvision's head reads the image's shape (to upsample to it): the split passes the image
/// along, and the head on the onnxruntime backbone gives the whole model's logits.
#[test]
#[cfg_attr(
    not(segtune_model = "deeplabv3_mobilenet_v3_large"),
    ignore = "model deeplabv3_mobilenet_v3_large is not compiled in: make models/deeplabv3_mobilenet_v3_large.onnx with scripts/export_torchvision.py, then rebuild"
)]
fn torchvision_head_on_the_onnxruntime_backbone_gives_the_whole_models_logits() {
    if !present(TORCHVISION) {
        return;
    }
    common::assert_split(
        TORCHVISION,
        &["/backbone/backbone.16/backbone.16.1/BatchNormalization_output_0"],
        true,
        &[[1, 960, 4, 4], [1, 3, 64, 64]],
    );
}

#[test]
#[cfg_attr(
    not(segtune_model = "keras_deeplabv3plus_xception65"),
    ignore = "model keras_deeplabv3plus_xception65 is not compiled in: make it with scripts/export_keras_deeplabv3plus.py --backbone xception65 --calibrate-bn, then rebuild"
)]
fn xception65_head_on_the_onnxruntime_backbone_gives_the_whole_models_logits() {
    if !present(XCEPTION) {
        return;
    }
    common::assert_split(
        XCEPTION,
        &[
            "deeplabv3plus_xception65/backbone_entry_block2_sep2_pointwise_bn/FusedBatchNormV3:0",
            "deeplabv3plus_xception65/backbone_exit_block2_sep3_pointwise_bn/FusedBatchNormV3:0",
        ],
        true,
        &[[1, 256, 16, 16], [1, 2048, 4, 4], [1, 64, 64, 3]],
    );
}
