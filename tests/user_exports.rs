//! Checkpoints as users export them (scripts/make_user_exports.py: one tiny DeepLabV3+ through
//! `torch.onnx.export` the ordinary ways): each form is found to be its architecture with its
//! backbone, fine-tunes behind a frozen backbone, exports, validates and infers, at sizes other
//! than the one it was exported at where its graph allows. The exports and burn's logits at two
//! sizes are kept under target/tmp/user_exports for .ci/run's Python onnxruntime check
//! (scripts/check_user_exports.py).

mod common;

use std::path::{Path, PathBuf};

use common::{assert_bad_input, segtune};
use segtune::backbone::Rule;
use segtune::model::{self, Checkpoint, ModelFn, SegModel};
use segtune::runtime::InputShape;
use segtune::train::{self, BnMode, Freeze, TrainConfig};
use segtune::{export, graph, infer, inspect, onnx, validate};

const CANONICAL: &str = "tiny_deeplabv3plus";
const FOLDED: &str = "tiny_deeplabv3plus_folded";
const DYNAMO: &str = "tiny_deeplabv3plus_dynamo";

/// One form a user brings.
struct Form {
    name: &'static str,
    /// The `--weights` fixture, or `None` for the compiled-in model itself.
    weights: Option<&'static str>,
    model: &'static str,
    freeze: &'static str,
    rule: Rule,
    /// The sizes its graph runs at.
    runs: InputShape,
    /// Whether it (and its export) keep their tensors in a side file.
    external: bool,
}

const ANY: InputShape = InputShape { batch: None, size: None };

const FORMS: &[Form] = &[
    Form {
        name: "canonical",
        weights: None,
        model: CANONICAL,
        freeze: "backbone",
        rule: Rule::Names,
        runs: ANY,
        external: false,
    },
    Form {
        name: "prefix_m",
        weights: Some("prefix_m.onnx"),
        model: CANONICAL,
        freeze: "m.encoder.*",
        rule: Rule::Names,
        runs: ANY,
        external: false,
    },
    Form {
        name: "prefix_model",
        weights: Some("prefix_model.onnx"),
        model: CANONICAL,
        freeze: "backbone",
        rule: Rule::Names,
        runs: ANY,
        external: false,
    },
    Form {
        name: "prefix_module",
        weights: Some("prefix_module.onnx"),
        model: CANONICAL,
        freeze: "backbone",
        rule: Rule::Names,
        runs: ANY,
        external: false,
    },
    Form {
        name: "fixed_hw",
        weights: Some("fixed_hw.onnx"),
        model: CANONICAL,
        freeze: "backbone",
        rule: Rule::Names,
        runs: ANY,
        external: false,
    },
    Form {
        name: "static",
        weights: Some("static.onnx"),
        model: CANONICAL,
        freeze: "backbone",
        rule: Rule::Names,
        runs: InputShape { batch: None, size: Some((64, 64)) },
        external: false,
    },
    Form {
        name: "external",
        weights: Some("external.onnx"),
        model: CANONICAL,
        freeze: "encoder.*",
        rule: Rule::Names,
        runs: ANY,
        external: true,
    },
    Form {
        name: "folded",
        weights: None,
        model: FOLDED,
        freeze: "backbone",
        rule: Rule::Structure,
        runs: ANY,
        external: false,
    },
    Form {
        name: "folded_other",
        weights: Some("folded_other.onnx"),
        model: FOLDED,
        freeze: "backbone",
        rule: Rule::Structure,
        runs: ANY,
        external: false,
    },
    Form {
        name: "dynamo",
        weights: None,
        model: DYNAMO,
        freeze: "backbone",
        rule: Rule::Names,
        runs: ANY,
        external: true,
    },
    Form {
        name: "dynamo_other",
        weights: Some("dynamo_other.onnx"),
        model: DYNAMO,
        freeze: "model.encoder.*",
        rule: Rule::Names,
        runs: ANY,
        external: true,
    },
];

fn fixture(name: &str) -> PathBuf {
    common::fixture("exports").join(name)
}

fn file_of(form: &Form) -> PathBuf {
    match form.weights {
        Some(w) => fixture(w),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(format!("{}.onnx", form.model)),
    }
}

#[test]
fn each_form_is_its_architecture_with_its_backbone_and_sizes() {
    for form in FORMS {
        let path = file_of(form);
        let mut ckpt = Checkpoint::open(None, Some(&path)).unwrap_or_else(|e| panic!("{}: {e}", form.name));
        assert_eq!(ckpt.info.name, form.model, "{}", form.name);
        assert_eq!(ckpt.external_data, form.external, "{}", form.name);
        assert_eq!(segtune::runtime::prepare(&mut ckpt).unwrap(), form.runs, "{}", form.name);
        // The rule the file's own graph gives, as `segtune inspect` reports it, is the rule
        // build.rs applied to the compiled-in architecture.
        let report = inspect::backbone_report(onnx::graph(&ckpt.proto));
        let rule = match form.rule {
            Rule::Names => "names",
            Rule::Structure => "structure",
        };
        assert_eq!(report.rule, Some(rule), "{}: {report:?}", form.name);
        assert_eq!(ckpt.info.backbone, Ok(form.rule), "{}", form.name);
        assert_eq!(report.boundary.len(), 3, "{}: the 1/4 skip and the two values the last block adds", form.name);
        assert_eq!(report.tensors, ckpt.info.params.iter().filter(|e| e.backbone).count(), "{}", form.name);
        assert!(ckpt.info.split.is_some(), "{}: build.rs cut the compiled-in model", form.name);
    }
    // The folded model's weights are onnx::Conv_N: no name says backbone, the structure does.
    let folded = onnx::read_model(&fixture("folded_other.onnx")).unwrap();
    let names: Vec<&str> = onnx::graph(&folded).initializer.iter().map(|t| t.name()).collect();
    assert!(names.iter().all(|n| !segtune::backbone::is_backbone_name(n)), "{names:?}");
    assert!(names.iter().filter(|n| n.starts_with("onnx::Conv_")).count() >= 18, "{names:?}");
}

fn config(form: &Form, data: &Path) -> TrainConfig {
    let mut cfg = TrainConfig::new(data.to_path_buf());
    cfg.model = form.model.to_string();
    cfg.weights = form.weights.map(fixture);
    (cfg.classes, cfg.epochs, cfg.batch, cfg.crop, cfg.lr) = (6, 1, 4, 64, Some(0.01));
    cfg.freeze = vec![form.freeze.parse().unwrap()];
    cfg.bn = BnMode::Frozen;
    cfg
}

/// burn's logits of a run's model on the seeded input at `size` (batch 2).
struct BurnLogits<'a>(&'a Path, usize, &'a model::Normalization);

impl ModelFn for BurnLogits<'_> {
    type Output = (ndarray::Array4<f32>, ndarray::Array4<f32>);
    fn call<M: SegModel>(self) -> Self::Output {
        let device = model::cpu_device();
        let m: M = train::load_trained(self.0, &device).unwrap();
        let x = validate::seeded_input(2, self.1, self.2, 9);
        let logits = validate::to_array(m.logits(validate::to_tensor(x.view(), &device)));
        (x, logits)
    }
}

fn write_f32(path: &Path, a: &ndarray::Array4<f32>) {
    let bytes: Vec<u8> = a.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn each_form_fine_tunes_exports_validates_and_infers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // 96² images, 64² crops: evaluation, validation and inference run at a size no fixture was
    // exported at.
    common::synth_set(&data, 6, 8, 3, 96, 4);
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("user_exports");
    let _ = std::fs::remove_dir_all(&keep);
    let mut canonical_trainable = std::collections::HashMap::new();
    for form in FORMS {
        let run = dir.path().join(form.name);
        let summary = train::train(config(form, &data), &run).unwrap_or_else(|e| panic!("{}: {e}", form.name));
        assert!(summary.backbone_in_onnxruntime, "{}: the frozen backbone runs in onnxruntime", form.name);
        // The trainable-parameter count under any prefix or glob is the compiled-in model's own.
        let want = *canonical_trainable.entry(form.model).or_insert(summary.trainable);
        assert_eq!(summary.trainable, want, "{}", form.name);
        assert!(summary.trainable < summary.total, "{}", form.name);

        let out_dir = keep.join(form.name);
        std::fs::create_dir_all(&out_dir).unwrap();
        let out = out_dir.join("export.onnx");
        let report = export::export(&run, &out).unwrap();
        assert_eq!(report.external_data.is_some(), form.external, "{}", form.name);
        assert_eq!(out_dir.join("export.onnx.data").is_file(), form.external, "{}", form.name);
        let exported = onnx::read_model(&out).unwrap();
        let declared = graph::declared_input(&exported, model::Layout::Nchw);
        let want_declared = match form.runs.size {
            None => graph::DeclaredInput::default(),
            Some((h, w)) => graph::DeclaredInput { batch: None, height: Some(h), width: Some(w) },
        };
        assert_eq!(declared, want_declared, "{}: the export's input sizes", form.name);

        let v = validate::validate_onnx(&out, &data, "val", Some(&run), 1).unwrap();
        let p = v.parity.as_ref().unwrap();
        let trained = summary.history.last().unwrap();
        if form.runs.size.is_none() {
            assert!(p.pass, "{}: export vs burn {p:?}", form.name);
            assert!((v.miou - trained.val_miou).abs() < 1e-3, "{}: {} vs {}", form.name, v.miou, trained.val_miou);
        } else {
            assert!(v.input.contains("letterboxed into 64×64"), "{}: {}", form.name, v.input);
        }

        let preds = out_dir.join("pred");
        let opts = infer::InferOptions {
            out: preds.clone(),
            overlay: false,
            batch: 2,
            threads: 1,
            size: None,
            square: false,
            provider: Default::default(),
            spin: false,
            test_time: Default::default(),
        };
        let images = data.join("JPEGImages").display().to_string();
        let s = infer::infer(&out, &[images], &opts).unwrap();
        assert_eq!((s.images.len(), s.failed.len()), (11, 0), "{}", form.name);
        assert!(s.images.iter().all(|i| (i.width, i.height) == (96, 96)), "{}", form.name);

        // For the Python check: the input and burn's logits at two sizes (one where fixed).
        let sizes: &[usize] = if form.runs.size.is_some() { &[64] } else { &[64, 96] };
        let ckpt = Checkpoint::open(Some(form.model), form.weights.map(fixture).as_deref()).unwrap();
        for &size in sizes {
            let (x, logits) = model::with_model(ckpt.info, BurnLogits(&run, size, &ckpt.normalization));
            write_f32(&out_dir.join(format!("input_{size}.bin")), &x);
            write_f32(&out_dir.join(format!("logits_{size}.bin")), &logits);
        }
    }
}

#[test]
fn a_graph_fixed_at_one_size_refuses_another_naming_the_flag_that_fits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::synth_set(&data, 6, 4, 1, 96, 4);
    let stat = fixture("static.onnx");
    let (d, s) = (data.to_str().unwrap(), stat.to_str().unwrap());
    let run = dir.path().join("run");
    let out = segtune(&[
        "train",
        "--data",
        d,
        "--out",
        run.to_str().unwrap(),
        "--weights",
        s,
        "--crop",
        "96",
        "--batch",
        "2",
    ]);
    assert_bad_input(&out, &stat, "its graph runs at 64×64 only");
    assert!(common::stderr(&out).contains("use --crop 64"), "{}", common::stderr(&out));
    assert!(!run.exists(), "nothing written");
    let out = segtune(&["parity", "--weights", s, "--size", "96"]);
    assert_bad_input(&out, &stat, "use --size 64");
    let out = segtune(&["parity", "--weights", s]);
    assert!(out.status.success(), "parity at the graph's own size: {}", common::stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("batch 2 x 64x64"));
    let pred = dir.path().join("pred");
    let img = data.join("JPEGImages").display().to_string();
    let out = segtune(&["infer", s, &img, "--out", pred.to_str().unwrap(), "--size", "96"]);
    assert_bad_input(&out, &stat, "use --size 64 or leave --size out");
    assert!(!pred.exists(), "nothing written");
}

#[test]
fn a_model_without_batchnorm_says_bn_has_no_effect() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::synth_set(&data, 6, 4, 1, 64, 4);
    let run = dir.path().join("run");
    let out = segtune(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--model",
        FOLDED,
        "--bn",
        "train",
        "--batch",
        "1",
        "--crop",
        "64",
        "--epochs",
        "1",
        "--freeze",
        "backbone",
    ]);
    assert!(out.status.success(), "--bn train with batch 1 is no error without BN: {}", common::stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let note = format!(
        "batchnorm: none in {FOLDED} (folded into its convolutions when it was exported), so --bn has no effect"
    );
    assert_eq!(stdout.matches(&note).count(), 1, "{stdout}");
    assert!(stdout.contains("frozen backbone: onnxruntime"), "{stdout}");
}

/// Sets `name` on every node of `op` that lacks it.
fn write_out(model: &mut onnx::ModelProto, op: &str, name: &str, value: onnx::AttributeProto) {
    for n in model.graph.as_mut().unwrap().node.iter_mut().filter(|n| n.op_type() == op) {
        if onnx::attr(n, name).is_none() {
            n.attribute.push(onnx::AttributeProto { name: Some(name.into()), ..value.clone() });
        }
    }
}

#[test]
fn attributes_written_out_at_their_defaults_match_and_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = onnx::read_model(&fixture("prefix_model.onnx")).unwrap();
    let ints = |v: Vec<i64>| onnx::AttributeProto { ints: v, r#type: Some(7), ..Default::default() };
    let text = |v: &str| onnx::AttributeProto { s: Some(v.as_bytes().to_vec()), r#type: Some(3), ..Default::default() };
    write_out(&mut m, "Conv", "auto_pad", text("NOTSET"));
    write_out(&mut m, "Conv", "strides", ints(vec![1, 1]));
    write_out(
        &mut m,
        "BatchNormalization",
        "training_mode",
        onnx::AttributeProto { i: Some(0), r#type: Some(2), ..Default::default() },
    );
    write_out(
        &mut m,
        "Resize",
        "antialias",
        onnx::AttributeProto { i: Some(0), r#type: Some(2), ..Default::default() },
    );
    let path = dir.path().join("defaults_written.onnx");
    common::write_model(&m, &path);
    assert_eq!(Checkpoint::open(None, Some(&path)).unwrap().info.name, CANONICAL);

    let g = m.graph.as_mut().unwrap();
    let conv = g.node.iter_mut().find(|n| n.op_type() == "Conv").unwrap();
    conv.attribute.retain(|a| a.name() != "auto_pad");
    conv.attribute.push(onnx::AttributeProto { name: Some("auto_pad".into()), ..text("SAME_UPPER") });
    let path = dir.path().join("same_upper.onnx");
    common::write_model(&m, &path);
    let e = Checkpoint::open(Some(CANONICAL), Some(&path)).err().unwrap().to_string();
    assert!(e.contains("attribute auto_pad: expected none as in tiny_deeplabv3plus, found \"SAME_UPPER\""), "{e}");
}

#[test]
fn external_data_outside_the_model_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = onnx::read_model(&fixture("external.onnx")).unwrap();
    let t = m.graph.as_mut().unwrap().initializer.iter_mut().find(|t| onnx::is_external(t)).unwrap();
    t.external_data.iter_mut().find(|e| e.key() == "location").unwrap().value = Some("../external.onnx.data".into());
    let path = dir.path().join("escapes.onnx");
    common::write_model(&m, &path);
    let out = segtune(&["import", path.to_str().unwrap()]);
    assert_bad_input(&out, &path, "must be a relative path inside the model's directory");
    // Its data beside it, it loads.
    let ok = dir.path().join("external.onnx");
    std::fs::copy(fixture("external.onnx"), &ok).unwrap();
    std::fs::copy(fixture("external.onnx.data"), dir.path().join("external.onnx.data")).unwrap();
    assert!(segtune(&["import", ok.to_str().unwrap()]).status.success());
    std::fs::remove_file(dir.path().join("external.onnx.data")).unwrap();
    let out = segtune(&["import", ok.to_str().unwrap()]);
    assert_bad_input(&out, &ok, "external.onnx.data");
}

#[test]
fn inspect_says_what_it_found() {
    let out = segtune(&["inspect", fixture("folded_other.onnx").to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    for want in [
        "batchnorm   folded",
        "backbone    found by structure (everything upstream of the feature the ASPP reads): 18 tensors, 2148 parameters",
        "the ASPP reads \"/m/encoder/features.4/Add_output_0\"",
        "runs at     any size: the fixed size its input declares is made symbolic (checked at two sizes)",
        "segtune     loads as --weights of compiled-in model tiny_deeplabv3plus_folded",
    ] {
        assert!(s.contains(want), "missing {want:?} in:\n{s}");
    }
    let out = segtune(&["inspect", fixture("static.onnx").to_str().unwrap()]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("runs at     64×64 only (fixed inside the graph; segtune resizes to it)"), "{s}");
    let out = segtune(&["inspect", fixture("dynamo_other.onnx").to_str().unwrap()]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("data        22 tensors in a side file (external data)"), "{s}");
    assert!(s.contains("backbone    found by name"), "{s}");
    // A graph with neither names nor an ASPP says why.
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("two_conv.onnx");
    common::write_model(&common::two_conv_model(&[1, 3, 8, 8]), &foreign);
    let s = String::from_utf8_lossy(&segtune(&["inspect", foreign.to_str().unwrap()]).stdout).into_owned();
    assert!(s.contains("backbone    none found: no parameter is named encoder.* or backbone.*"), "{s}");
    assert!(s.contains("segtune     matches no compiled-in model"), "{s}");
}

#[test]
fn a_freeze_glob_that_matches_nothing_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::synth_set(&data, 6, 4, 1, 64, 4);
    let w = fixture("prefix_m.onnx");
    let run = dir.path().join("run");
    let out = segtune(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--weights",
        w.to_str().unwrap(),
        "--freeze",
        "encoder.*",
        "--crop",
        "64",
    ]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--freeze 'encoder.*': expected a glob matching initializer names of"), "{err}");
    assert!(err.contains("m.encoder."), "names what there is: {err}");
    assert!(!run.exists());
    // Two rules freeze their union: the backbone and the ASPP.
    let mut cfg = config(&FORMS[1], &data);
    let ckpt = Checkpoint::open(Some(CANONICAL), cfg.weights.as_deref()).unwrap();
    let backbone = segtune::setup::frozen_paths(&cfg, &ckpt).unwrap();
    cfg.freeze.push(Freeze::Glob("m.decoder.aspp.*".into()));
    let both = segtune::setup::frozen_paths(&cfg, &ckpt).unwrap();
    assert!(both.is_superset(&backbone) && both.len() > backbone.len());
}

#[test]
fn inputs_with_the_same_file_name_keep_their_own_masks() {
    let dir = tempfile::tempdir().unwrap();
    for (sub, shade) in [("a", 40u8), ("b", 200)] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        image::RgbImage::from_pixel(48, 32, image::Rgb([shade, shade, shade]))
            .save(dir.path().join(sub).join("x.png"))
            .unwrap();
    }
    let model = file_of(&FORMS[0]);
    let out = dir.path().join("pred");
    let inputs = [dir.path().join("a/x.png").display().to_string(), dir.path().join("b/x.png").display().to_string()];
    let opts = infer::InferOptions {
        out: out.clone(),
        overlay: true,
        batch: 2,
        threads: 1,
        size: Some(64),
        square: false,
        provider: Default::default(),
        spin: false,
        test_time: Default::default(),
    };
    let s = infer::infer(&model, &inputs, &opts).unwrap();
    let masks: Vec<&str> = s.images.iter().map(|i| i.mask.as_str()).collect();
    assert_eq!(masks, [out.join("a/x.png").display().to_string(), out.join("b/x.png").display().to_string()]);
    for sub in ["a/x.png", "b/x.png", "overlay/a/x.jpg", "overlay/b/x.jpg"] {
        assert!(out.join(sub).is_file(), "{sub}");
    }
}

#[test]
fn doctor_on_a_folded_model_does_not_blame_batchnorm_it_does_not_have() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::synth_set(&data, 6, 4, 2, 64, 4);
    let mut cfg = config(&FORMS[8], &data);
    cfg.bn = BnMode::Train;
    cfg.batch = 1;
    let opts = segtune::doctor::DoctorOptions { steps: 3, ..Default::default() };
    let report = segtune::doctor::doctor(&cfg, &opts).unwrap();
    for name in ["bn.batch", "bn.statistics", "bn.drift"] {
        let c = report.checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("{name} ran"));
        assert_eq!(c.status, segtune::doctor::Status::Pass, "{name}: {}", c.measured);
        assert!(c.measured.starts_with("no BatchNorm layers"), "{name}: {}", c.measured);
    }
    assert!(report.checks.iter().any(|c| c.name == "train.overfit"), "the overfit check runs at batch 1 without BN");
}

/// infer folds the head's final ×4 Resize into the mask's upsampling in every form users bring
/// (prefixes, BN folded into Conv, fixed sizes, external data, dynamo).
#[test]
fn every_forms_final_resize_is_folded() {
    for form in FORMS {
        let path = file_of(form);
        let mut model = segtune::onnx::read_model(&path).unwrap();
        segtune::graph::inline_external(&mut model, path.parent()).unwrap();
        let folded = segtune::final_resize::without_final_resize(&model, segtune::layout::Layout::Nchw)
            .map(|f| f.upsampling.describe());
        assert!(folded.as_ref().is_some_and(|d| d.starts_with("bilinear ×4×4")), "{}: {folded:?}", form.name);
        // As infer opens it, against the full graph: the same mask of a 64×64 input, at 50×40.
        let open = |fold| segtune::runtime::OpenedModel::open(&path, 1, true, segtune::runtime::Provider::Cpu, fold);
        let (mut full, mut cut) = (open(false).unwrap(), open(true).unwrap());
        assert!(full.upsampling.is_none() && cut.upsampling.is_some(), "{}", form.name);
        let x = ndarray::Array4::<f32>::from_shape_fn((1, 3, 64, 64), |(_, c, y, x)| {
            ((c * 7 + y * 3 + x) % 11) as f32 / 5.0 - 1.0
        });
        let logits = full.session.run_logits(x.view(), full.norm.layout).unwrap();
        let small = cut.session.run_logits(x.view(), cut.norm.layout).unwrap();
        let up = cut.upsampling.unwrap();
        let want = segtune::upsample::upsample_argmax(logits.index_axis(ndarray::Axis(0), 0), (64, 64), 50, 40);
        let got = segtune::upsample::upsample_argmax_through(
            small.index_axis(ndarray::Axis(0), 0),
            &up,
            (64, 64),
            (64, 64),
            (50, 40),
        )
        .unwrap();
        let classes: std::collections::HashSet<u8> = want.pixels().map(|p| p[0]).collect();
        assert!(classes.len() >= 4, "{}: {} classes, boundaries to blend", form.name, classes.len());
        assert_eq!(want, got, "{}: the folded mask", form.name);
    }
}
