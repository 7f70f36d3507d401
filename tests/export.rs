//! Round trip: train a few steps, export, load the export in onnxruntime with its metadata, and
//! match the burn model; validate and infer on it; and their bad input.

mod common;

use common::{segtune, stderr};

use std::path::{Path, PathBuf};

use segtune::data::{self, SynthOptions};
use segtune::train::{self, BnMode, TrainConfig};
use segtune::{export, onnx, validate};

/// A run trained for one epoch on a small 4-class set, shared by the tests of this file.
fn trained_run(dir: &Path) -> (PathBuf, PathBuf) {
    trained_run_from(dir, None)
}

/// The same run, starting from `weights` (default: the compiled-in model's own).
fn trained_run_from(dir: &Path, weights: Option<PathBuf>) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    common::synth_set(&data, 4, 4, 3, 64, 11);
    let mut cfg = TrainConfig::new(data.clone());
    cfg.weights = weights;
    cfg.classes = 4;
    cfg.epochs = 1;
    cfg.batch = 2;
    cfg.crop = 64;
    cfg.bn = BnMode::Train;
    let run = dir.join("run");
    train::train(cfg, &run).unwrap();
    (data, run)
}

/// `trained_run` exported to `DIR/NAME`: (data, run, the export).
fn exported_run(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (data, run) = trained_run(dir);
    let model = dir.join(name);
    export::export(&run, &model).unwrap();
    (data, run, model)
}

#[test]
fn export_round_trip_matches_burn_and_keeps_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let (data, run) = trained_run(dir.path());
    // Also kept under target/tmp for .ci/run's check with Python onnxruntime.
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("roundtrip");
    std::fs::create_dir_all(&keep).unwrap();
    let out = keep.join("export.onnx");
    let report = export::export(&run, &out).unwrap();
    assert_eq!((report.tensors_written, report.classes), (312, 4));
    assert_eq!(report.unshared, 0, "the shipped model shares nothing through Identity nodes any more");

    let (reference, exported) = (common::reference(), onnx::read_model(&out).unwrap());
    let names = |m: &onnx::ModelProto| onnx::graph(m).node.iter().map(|n| n.name().to_string()).collect::<Vec<_>>();
    assert_eq!(names(&reference), names(&exported), "node order and names kept");
    assert_eq!(onnx::opset(&exported), Some(17));
    let meta = onnx::metadata(&exported);
    assert_eq!(meta["segtune.classes"], "4");
    // From the set's classes.txt (written by `segtune synth`).
    assert_eq!(meta["segtune.class_names"], data::synth_class_names(data::SynthStyle::Shapes, 4).join(","));
    assert_eq!(meta["segtune.ignore_index"], "255");
    assert_eq!(meta["segtune.mean"], "0.485,0.456,0.406");
    let training: serde_json::Value = serde_json::from_str(&meta["segtune.training"]).unwrap();
    assert!(training["best_val_miou"].is_number());
    let inspect = onnx::inspect(&exported, &out);
    assert_eq!(inspect.outputs[0].dims[1], onnx::Dim::Fixed(4));

    // onnxruntime from Rust against the run's burn model, on val images.
    let v = validate::validate_onnx(&out, &data, "val", Some(&run), 0).unwrap();
    let p = v.parity.as_ref().unwrap();
    assert!(p.pass && p.max_abs_diff <= 1e-4 && p.argmax_agreement >= 0.9999, "{p:?}");
    assert_eq!(v.folded_resize, None, "parity compares the full graph's logits");
    assert_eq!(v.num_images, 3);
    assert_eq!(v.per_class_iou.len(), 4);

    // What .ci/run's Python check compares against: the input and the burn logits.
    let device = segtune::model::cpu_device();
    let model: segtune::model::generated::deeplabv3plus_mobilenetv2::Model =
        train::load_trained(&run, &device).unwrap();
    let input = validate::seeded_input(1, 64, &segtune::model::Normalization::IMAGENET, 5);
    let logits =
        validate::to_array(segtune::model::SegModel::logits(&model, validate::to_tensor(input.view(), &device)));
    let f32s = |a: &ndarray::Array4<f32>| a.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(keep.join("input.bin"), f32s(&input)).unwrap();
    std::fs::write(keep.join("logits.bin"), f32s(&logits)).unwrap();
}

#[test]
fn validate_json_and_class_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _, model) = exported_run(dir.path(), "m.onnx");
    let json = dir.path().join("report.json");
    let out = segtune(&[
        "validate",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = common::read_json(&json);
    for key in ["miou", "pixel_accuracy", "per_class_iou", "num_images"] {
        assert!(!v[key].is_null(), "{key} missing");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("background") && text.contains("mIoU"), "{text}");
    validate_report(&model, &data, dir.path(), &v);

    // A 6-class dataset against the 4-class export.
    let six = dir.path().join("six");
    common::synth_set(&six, 6, 1, 6, 32, 2);
    let out = segtune(&["validate", model.to_str().unwrap(), "--data", six.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("SegmentationClass/val_") && err.contains("is outside [0, 4)"), "{err}");
    assert!(err.contains("has 4 output classes"), "{err}");
}

/// `validate --report`: the pictures, and the worst images in order, each 3 × its image wide;
/// a smaller `--worst` keeps the first of the same order and removes the pictures it no longer shows.
fn validate_report(model: &Path, data: &Path, dir: &Path, json: &serde_json::Value) {
    let report = dir.join("report");
    let run = |k: &str| {
        let (m, d, r) = (model.to_str().unwrap(), data.to_str().unwrap(), report.to_str().unwrap());
        let out = segtune(&["validate", m, "--data", d, "--report", r, "--worst", k]);
        assert!(out.status.success(), "{}", stderr(&out));
        let html = std::fs::read_to_string(report.join("index.html")).unwrap();
        let mut worst: Vec<String> = std::fs::read_dir(report.join("worst"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        worst.sort();
        (html, worst)
    };
    let (html, all) = run("3");
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(html.contains(&format!("<td>{:.4}</td>", json["miou"].as_f64().unwrap())), "{html}");
    let captions: Vec<f64> = html
        .split("</figcaption>")
        .filter_map(|s| s.rsplit("mIoU ").next().filter(|_| s.contains("<figcaption>")))
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(captions.len(), 3, "{html}");
    assert!(captions.windows(2).all(|w| w[0] <= w[1]), "worst first: {captions:?}");
    for file in &all {
        assert!(html.contains(&format!("src=\"worst/{file}\"")), "{file} not shown");
        assert_eq!(image::image_dimensions(report.join("worst").join(file)).unwrap(), (192, 64), "{file}");
    }
    for png in ["confusion.png", "iou.png"] {
        let (w, h) = image::image_dimensions(report.join(png)).unwrap();
        assert!(w >= 400 && h >= 300, "{png} is {w}×{h}");
    }
    let (_, two) = run("2");
    assert_eq!(two, all[..2], "the same order; the third picture removed");
}

#[test]
fn export_bad_input_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, run) = trained_run(dir.path());
    let missing = dir.path().join("no/such/dir/m.onnx");
    let out = segtune(&["export", run.to_str().unwrap(), "--out", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("expected an existing directory"), "{}", stderr(&out));
    assert!(!missing.exists());

    // The run's source checkpoint replaced by a foreign graph: the run no longer matches it.
    let foreign = dir.path().join("foreign.onnx");
    common::write_model(&common::two_conv_model(&[1, 3, 8, 8]), &foreign);
    let cfg_path = run.join("config.json");
    let mut cfg: serde_json::Value = common::read_json(&cfg_path);
    cfg["weights"] = serde_json::json!(foreign);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let target = dir.path().join("m.onnx");
    let out = segtune(&["export", run.to_str().unwrap(), "--out", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("foreign.onnx: expected the architecture of deeplabv3plus_mobilenetv2"),
        "{}",
        stderr(&out)
    );
    assert!(!target.exists());
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".tmp"))
            .count(),
        0
    );

    let out = segtune(&["export", dir.path().join("nope").to_str().unwrap(), "--out", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("expected a segtune run directory"));
}

#[test]
fn infer_writes_masks_and_skips_a_corrupt_image_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _, model) = exported_run(dir.path(), "m.onnx");
    let imgs = dir.path().join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    for i in 0..3 {
        std::fs::copy(data.join(format!("JPEGImages/val_{i:05}.jpg")), imgs.join(format!("v{i}.jpg"))).unwrap();
    }
    // A 100x60 image: masks come back at the original size.
    image::RgbImage::from_pixel(100, 60, image::Rgb([40, 90, 200])).save(imgs.join("wide.png")).unwrap();
    std::fs::write(imgs.join("broken.jpg"), b"this is not a jpeg").unwrap();
    let out_dir = dir.path().join("pred");
    let out = segtune(&[
        "infer",
        model.to_str().unwrap(),
        imgs.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--overlay",
        "--batch",
        "2",
        "--size",
        "64",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("broken.jpg") && err.contains("skipped"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for stem in ["v0", "v1", "v2", "wide"] {
        assert!(out_dir.join(format!("{stem}.png")).is_file(), "{stem}.png");
        assert!(out_dir.join(format!("overlay/{stem}.jpg")).is_file());
    }
    assert_eq!(image::image_dimensions(out_dir.join("wide.png")).unwrap(), (100, 60));
    let mask = segtune::data::load_mask(&out_dir.join("v0.png"), 4).unwrap();
    assert_eq!(mask.dimensions(), (64, 64));
    let summary: serde_json::Value = common::read_json(out_dir.join("summary.json"));
    assert_eq!(summary["images"].as_array().unwrap().len(), 4);
    assert_eq!(summary["failed"].as_array().unwrap().len(), 1);
    let fractions: f64 =
        summary["images"][0]["class_fractions"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).sum();
    assert!((fractions - 1.0).abs() < 1e-9);
    assert_eq!(summary["spinning"], false, "onnxruntime's threads block by default");
    // A glob, with onnxruntime's threads spin-waiting.
    let pattern = imgs.join("v?.jpg");
    let out = segtune(&[
        "infer",
        model.to_str().unwrap(),
        pattern.to_str().unwrap(),
        "--out",
        dir.path().join("p2").to_str().unwrap(),
        "--size",
        "64",
        "--spin",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(dir.path().join("p2")).unwrap().count(), 4, "3 masks and summary.json");
    let summary: serde_json::Value = common::read_json(dir.path().join("p2/summary.json"));
    assert_eq!(summary["spinning"], true);
}

#[test]
fn demo_runs_the_whole_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let o = segtune(&["demo", "--out", out.to_str().unwrap(), "--epochs", "1"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}{}", text, stderr(&o));
    for p in
        ["data/ImageSets/Segmentation/train.txt", "run/config.json", "run/curves.png", "model.onnx", "validation.json"]
    {
        assert!(out.join(p).is_file(), "{p}");
    }
    assert_eq!(std::fs::read_dir(out.join("predictions/overlay")).unwrap().count(), 8);
    assert!(text.contains("val mIoU before fine-tuning") && text.contains("export parity PASS"), "{text}");
    // The pretrained model transfers: one epoch of the frozen-backbone recipe takes a fresh
    // 6-class head from chance to most of the way (measured: 0.0375 -> 0.7471).
    let line = text.lines().find(|l| l.starts_with("val mIoU before fine-tuning")).unwrap();
    let nums: Vec<f64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let (before, after) = (nums[0], nums[1]);
    assert!(before < 0.2 && after > 0.6, "{line}");
    // A second demo into the same folder is refused rather than mixed with the first.
    let again = segtune(&["demo", "--out", out.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("expected a new or empty folder"));
}

/// Fine-tuning a checkpoint whose equal tensors torch shared through `Identity` nodes trains
/// them apart; the export gives each its own initializer and still matches the burn model.
#[test]
fn export_from_an_identity_shared_checkpoint_unshares_the_aliases() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared.onnx");
    common::write_model(&common::identity_shared_reference(), &shared);
    let (data, run) = trained_run_from(dir.path(), Some(shared));
    let out = dir.path().join("export.onnx");
    let report = export::export(&run, &out).unwrap();
    assert!(report.unshared > 100, "BN trained apart what Identity nodes shared: {}", report.unshared);
    let v = validate::validate_onnx(&out, &data, "val", Some(&run), 1).unwrap();
    assert!(v.parity.as_ref().is_some_and(|p| p.pass), "{v}");
}

#[test]
fn infer_keeps_the_aspect_ratio_and_agrees_with_square_letterboxing() {
    // The shipped model on 4:3 crops of corpus images (what it was pretrained on): aspect-
    // preserving inputs (128×96, the default) and square letterboxes (128×128, --square) see the
    // same pixels, with different padding around them: the masks must nearly agree.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("corpus");
    let opts =
        SynthOptions { classes: 21, train: 1, val: 4, size: 128, seed: 5, style: segtune::data::SynthStyle::Corpus };
    data::synth(&data, &opts).unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    for i in 0..4 {
        let img = image::open(data.join(format!("JPEGImages/val_{i:05}.jpg"))).unwrap().to_rgb8();
        image::imageops::crop_imm(&img, 0, 16, 128, 96).to_image().save(imgs.join(format!("c{i}.png"))).unwrap();
    }
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/deeplabv3plus_mobilenetv2.onnx");
    let (mut same, mut objects, mut total) = (0usize, 0usize, 0usize);
    let run = |name: &str, extra: &[&str]| {
        let out_dir = dir.path().join(name);
        let mut args =
            vec!["infer", model.to_str().unwrap(), imgs.to_str().unwrap(), "--out", out_dir.to_str().unwrap()];
        args.extend_from_slice(&["--size", "128", "--batch", "4"]);
        args.extend_from_slice(extra);
        let out = segtune(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        out_dir
    };
    let (rect, square) = (run("rect", &[]), run("square", &["--square"]));
    for i in 0..4 {
        let a = segtune::data::load_mask(&rect.join(format!("c{i}.png")), 21).unwrap();
        let b = segtune::data::load_mask(&square.join(format!("c{i}.png")), 21).unwrap();
        assert_eq!(a.dimensions(), (128, 96));
        same += a.pixels().zip(b.pixels()).filter(|(p, q)| p == q).count();
        objects += a.pixels().filter(|p| p[0] != 0).count();
        total += (128 * 96) as usize;
    }
    let agreement = same as f64 / total as f64;
    let object_share = objects as f64 / total as f64;
    assert!(object_share > 0.05, "only {:.1}% of pixels are objects: agreement would be trivial", object_share * 100.0);
    assert!(agreement > 0.97, "masks agree on {:.2}% of pixels", agreement * 100.0);
    eprintln!("rect vs square: {:.2}% of pixels agree, {:.1}% objects", agreement * 100.0, object_share * 100.0);
}

#[test]
fn an_export_with_its_own_class_count_is_a_checkpoint_again() {
    // Fine-tune the 21-class model to 4 classes and export: that file must work as --weights
    // (continue training, doctor, parity) with its trained 4-class head, not be refused for
    // differing from the compiled-in 21-class graph.
    let dir = tempfile::tempdir().unwrap();
    let (data, run, out) = exported_run(dir.path(), "four.onnx");
    let ckpt = segtune::model::Checkpoint::open(None, Some(&out)).unwrap();
    assert_eq!((ckpt.info.name, ckpt.classes().unwrap()), ("deeplabv3plus_mobilenetv2", 4));
    let r =
        validate::parity_check(&ckpt, &validate::ParityOptions { batch: 1, size: 64, repeat: 0, ..Default::default() })
            .unwrap();
    assert!(r.pass, "burn with the 4-class head vs onnxruntime on the export: {r}");

    // Starting a new run from it keeps the trained head: the start scores equal the run's last
    // evaluation (same weights, same val set, BN frozen in both evaluations).
    let last = &serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(run.join("metrics.json")).unwrap())
        .unwrap()[0];
    let mut cfg = TrainConfig::new(data.clone());
    (cfg.weights, cfg.classes, cfg.crop) = (Some(out.clone()), 4, 64);
    let start = train::evaluate_start(&cfg).unwrap();
    assert!((start.miou - last["val_miou"].as_f64().unwrap()).abs() < 1e-6, "{start:?} vs {last}");
    // And a run continues from it.
    (cfg.epochs, cfg.batch) = (1, 2);
    let next = train::train(cfg, &dir.path().join("next")).unwrap();
    assert!(next.history[0].val_loss.is_finite());

    // Only the class dimension may differ: a bias of another length than the weight's is refused.
    let mut proto = onnx::read_model(&out).unwrap();
    let g = proto.graph.as_mut().unwrap();
    let conv = g.node.iter().rev().find(|n| n.op_type() == "Conv").unwrap().clone();
    let bias = conv.input[2].clone();
    let t = g.initializer.iter_mut().find(|t| t.name() == bias).unwrap();
    t.dims = vec![5];
    t.raw_data = Some(vec![0u8; 20]);
    t.float_data.clear();
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, prost::Message::encode_to_vec(&proto)).unwrap();
    let e = segtune::model::Checkpoint::open(None, Some(&bad)).err().unwrap().to_string();
    assert!(e.contains("classifier initializer") && e.contains("its other tensor"), "{e}");
}

/// One test-time pipeline (#22): with default flags, `infer`'s masks on the val images score what
/// `validate` reports; the export records the pipeline, and the flags that override it are
/// reported in summary.json.
#[test]
fn infer_by_default_scores_what_validate_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _, model) = exported_run(dir.path(), "m.onnx");
    let meta = onnx::metadata(&onnx::read_model(&model).unwrap());
    assert_eq!(meta["segtune.resize"], "native");
    let v = validate::validate_onnx(&model, &data, "val", None, 1).unwrap();
    assert!(v.input.contains("native resolution"), "{}", v.input);

    let val: Vec<String> =
        (0..3).map(|i| data.join(format!("JPEGImages/val_{i:05}.jpg")).display().to_string()).collect();
    let run = |name: &str, extra: &[&str]| -> serde_json::Value {
        let out_dir = dir.path().join(name);
        let mut args = vec!["infer", model.to_str().unwrap(), "--out", out_dir.to_str().unwrap()];
        args.extend(val.iter().map(String::as_str));
        args.extend_from_slice(extra);
        let out = segtune(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        common::read_json(out_dir.join("summary.json"))
    };
    let summary = run("default", &[]);
    assert_eq!(summary["pipeline"]["resize"], "native");
    assert_eq!(summary["pipeline"]["source"], "metadata");
    assert_eq!(
        summary["folded_resize"], "bilinear ×4×4 (align_corners)",
        "the head's Resize, in the mask's upsampling"
    );
    let mut cm = segtune::metrics::ConfusionMatrix::new(4);
    for i in 0..3 {
        let truth = segtune::data::load_mask(&data.join(format!("SegmentationClass/val_{i:05}.png")), 4).unwrap();
        let pred = segtune::data::load_mask(&dir.path().join(format!("default/val_{i:05}.png")), 4).unwrap();
        cm.update(truth.as_raw(), pred.as_raw());
    }
    let miou = cm.scores().miou;
    eprintln!("infer's masks: {miou:.4} mIoU; validate: {:.4}", v.miou);
    assert!((miou - v.miou).abs() <= 0.002, "infer's masks score {miou:.4}, validate reports {:.4}", v.miou);

    let flagged = run("flagged", &["--size", "40", "--square"]);
    assert_eq!(flagged["pipeline"]["resize"], "square:48", "rounded up to the size multiple");
    assert_eq!(flagged["pipeline"]["source"], "flags");
}

/// infer never writes what the model cannot mean (#22): an output whose channels disagree with
/// the classes the metadata promises is refused (at open where the graph fixes the channels, at
/// the first run where it leaves them symbolic), and a provider the onnxruntime library lacks is
/// refused naming what it has; nothing is written in each case.
#[test]
fn infer_refuses_wrong_channels_and_a_missing_provider() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _, model) = exported_run(dir.path(), "m.onnx");
    let image = data.join("JPEGImages/val_00000.jpg");
    let refused = |model: &Path, extra: &[&str]| -> String {
        let out_dir = dir.path().join("never");
        let mut args =
            vec!["infer", model.to_str().unwrap(), image.to_str().unwrap(), "--out", out_dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = segtune(&args);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(!out_dir.join("val_00000.png").exists(), "nothing written");
        stderr(&out)
    };
    let mut wrong = onnx::read_model(&model).unwrap();
    for p in wrong.metadata_props.iter_mut().filter(|p| p.key() == "segtune.classes") {
        p.value = Some("5".into());
    }
    let fixed = dir.path().join("fixed.onnx");
    common::write_model(&wrong, &fixed);
    let err = refused(&fixed, &[]);
    assert!(
        err.contains("fixed.onnx") && err.contains("segtune.classes says 5 classes, but its output has 4 channels"),
        "{err}"
    );
    // The output's class dimension symbolic: found at the first run.
    let out = &mut wrong.graph.as_mut().unwrap().output[0];
    let onnx::proto::type_proto::Value::TensorType(t) = out.r#type.as_mut().unwrap().value.as_mut().unwrap() else {
        panic!("a tensor output")
    };
    t.shape.as_mut().unwrap().dim[1].value =
        Some(onnx::proto::tensor_shape_proto::dimension::Value::DimParam("c".into()));
    let symbolic = dir.path().join("symbolic.onnx");
    common::write_model(&wrong, &symbolic);
    let err = refused(&symbolic, &[]);
    assert!(
        err.contains("symbolic.onnx") && err.contains("expected 5 output channels") && err.contains("found 4"),
        "{err}"
    );

    let err = refused(&model, &["--provider", "cuda"]);
    assert!(err.contains("--provider cuda") && err.contains("no CUDAExecutionProvider"), "{err}");
    assert!(err.contains("it has CPUExecutionProvider") && err.lines().count() == 1, "{err}");
}

/// A GPU build of onnxruntime on a machine that cannot start its provider (no NVIDIA driver, no
/// CUDA libraries on the loader path): `--provider cuda` and `tensorrt` are refused in one line
/// that names the library, the provider it has and what it lacks, before anything is written,
/// by infer and by validate. Needs `SEGTUNE_TEST_ORT_GPU_LIB`, the libonnxruntime.so of an
/// onnxruntime-gpu wheel (`.ci/run` extracts one from PyPI's); skipped, saying so, without it.
/// On a GPU host `bench/gpu.sh providers` measures the providers instead.
#[test]
fn a_gpu_library_whose_provider_cannot_start_is_named() {
    let Some(lib) = std::env::var_os("SEGTUNE_TEST_ORT_GPU_LIB") else {
        eprintln!("skipped: SEGTUNE_TEST_ORT_GPU_LIB (an onnxruntime-gpu libonnxruntime.so) is not set");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = common::synth_set(&dir.path().join("data"), 21, 1, 1, 64, 1);
    let model = common::reference_path();
    let out_dir = dir.path().join("never");
    let (m, d, o) = (model.to_str().unwrap(), data.to_str().unwrap(), out_dir.to_str().unwrap());
    let image = data.join("JPEGImages/val_00000.jpg");
    let json = dir.path().join("never.json");
    for (provider, name) in [("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")] {
        let infer: &[&str] = &["infer", m, image.to_str().unwrap(), "--out", o, "--provider", provider];
        let validate: &[&str] = &["validate", m, "--data", d, "--json", json.to_str().unwrap(), "--provider", provider];
        for args in [infer, validate] {
            let out = common::command().args(args).env("ORT_DYLIB_PATH", &lib).output().expect("segtune runs");
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{err}");
            assert!(
                err.contains(&format!("--provider {provider}: ")) && err.contains(&*lib.to_string_lossy()),
                "{err}"
            );
            assert!(err.contains(&format!("has {name} but could not start it")), "{err}");
            assert!(err.contains("cannot open shared object file") && err.contains("LD_LIBRARY_PATH"), "{err}");
            assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
            assert!(!out_dir.exists() && !json.exists(), "nothing written");
        }
    }
}
