//! The `segtune` binary: inspect, import and parity, including bad input (exit 2, one clear
//! line naming the file, never a panic).

mod common;

use common::{assert_bad_input, segtune};

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

#[test]
fn inspect_reference_text() {
    let out = segtune(&["inspect", common::reference_path().to_str().unwrap()]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    for want in [
        "opset       17",
        "input       input [batch, 3, height, width] (float32)",
        "output      output [batch, 21, height, width] (float32)",
        "batchnorm   present: 61 BatchNormalization nodes",
        "softmax     none: outputs are logits",
        "resize      2 x mode=linear coordinate_transformation_mode=align_corners",
        "resize      1 x mode=linear coordinate_transformation_mode=half_pixel",
        "metadata    segtune.layout = NCHW",
        "Conv 67",
        "parameters  4421957 in 312 initializers",
    ] {
        assert!(s.contains(want), "missing {want:?} in:\n{s}");
    }
}

#[test]
fn inspect_reference_json() {
    let out = segtune(&["inspect", "--json", common::reference_path().to_str().unwrap()]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["opset"], 17);
    assert_eq!(v["op_histogram"]["BatchNormalization"], 61);
    assert_eq!(v["batchnorm"], "present");
    assert_eq!(v["inputs"][0]["dims"], serde_json::json!(["batch", 3, "height", "width"]));
    assert!(v["trailing_softmax"].is_null());
    assert_eq!(v["metadata_props"]["segtune.mean"], "0.485,0.456,0.406");
}

#[test]
fn inspect_flags_a_trailing_softmax() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("softmax.onnx");
    let mut m = common::reference();
    common::append_softmax(&mut m);
    common::write_model(&m, &path);
    let out = segtune(&["inspect", path.to_str().unwrap()]);
    let s = text(&out.stdout);
    assert!(
        s.contains("softmax     FLAGGED: output \"probabilities\" comes from Softmax node \"probs\" (axis 1)"),
        "{s}"
    );
    assert!(s.contains("double-applies softmax"), "{s}");
    let out = segtune(&["inspect", "--json", path.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["trailing_softmax"]["node"], "probs");
}

#[test]
fn import_reference_prints_a_summary() {
    let out = segtune(&["import", common::reference_path().to_str().unwrap()]);
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(s.contains("matches compiled-in model deeplabv3plus_mobilenetv2"), "{s}");
    assert!(s.contains("loaded        312 tensors"), "{s}");
    // The shipped model is pretrained: its BN statistics are not at their initial values.
    assert!(s.contains("61 layers") && !s.contains("initial values"), "{s}");
    assert!(s.contains("classes       21"), "{s}");
}

#[test]
fn import_rejects_a_truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truncated.onnx");
    let bytes = std::fs::read(common::reference_path()).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_bad_input(&segtune(&["import", path.to_str().unwrap()]), &path, "truncated or corrupt");
}

#[test]
fn import_rejects_a_foreign_graph_naming_the_first_difference() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two_conv.onnx");
    common::write_model(&common::two_conv_model(&[1, 3, 8, 8]), &path);
    let out = segtune(&["import", path.to_str().unwrap()]);
    assert_bad_input(&out, &path, "expected the architecture of a compiled-in model");
    let err = text(&out.stderr);
    assert!(
        // The reference's dilations [1, 1] are ONNX's default, as good as absent: the first
        // difference is the kernel shape.
        err.contains(
            "node 0 (\"conv_h\", Conv): attribute kernel_shape: expected [3, 3] as in deeplabv3plus_mobilenetv2"
        ),
        "{err}"
    );
    assert!(err.contains("found none"), "{err}");
    let out = segtune(&["import", "--model", "deeplabv3plus_mobilenetv2", path.to_str().unwrap()]);
    assert_bad_input(&out, &path, "expected the architecture of deeplabv3plus_mobilenetv2");
}

#[test]
fn import_rejects_a_changed_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wider_stem.onnx");
    let mut m = common::reference();
    let g = m.graph.as_mut().unwrap();
    let t = g.initializer.iter_mut().find(|t| t.name() == "encoder.features.0.0.weight").unwrap();
    t.dims[0] = 16;
    t.raw_data = Some(vec![0; 16 * 3 * 3 * 3 * 4]);
    common::write_model(&m, &path);
    let out = segtune(&["import", path.to_str().unwrap()]);
    assert_bad_input(&out, &path, "initializer \"encoder.features.0.0.weight\" expected shape [32, 3, 3, 3]");
    assert!(text(&out.stderr).contains("found [16, 3, 3, 3]"));
}

#[test]
fn import_takes_another_class_count_only_in_the_classifier() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ten_classes.onnx");
    let mut m = common::reference();
    let g = m.graph.as_mut().unwrap();
    for t in g.initializer.iter_mut().filter(|t| t.name().starts_with("segmentation_head.0.")) {
        t.dims[0] = 10;
        let n: i64 = t.dims.iter().product();
        t.raw_data = Some(vec![0; n as usize * 4]);
    }
    common::write_model(&m, &path);
    let out = segtune(&["import", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("matches compiled-in model deeplabv3plus_mobilenetv2"));
    // Weight and bias must agree on it.
    let g = m.graph.as_mut().unwrap();
    let bias = g.initializer.iter_mut().find(|t| t.name() == "segmentation_head.0.bias").unwrap();
    (bias.dims, bias.raw_data) = (vec![11], Some(vec![0; 44]));
    common::write_model(&m, &path);
    let out = segtune(&["import", path.to_str().unwrap()]);
    assert_bad_input(&out, &path, "its other tensor");
}

#[test]
fn bad_files_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    assert_bad_input(&segtune(&["inspect", empty.to_str().unwrap()]), &empty, "empty file (0 bytes)");

    let png = dir.path().join("picture.onnx");
    std::fs::write(&png, b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap();
    assert_bad_input(
        &segtune(&["import", png.to_str().unwrap()]),
        &png,
        "expected an ONNX model (protobuf), found a PNG image",
    );

    let rank3 = dir.path().join("rank3.onnx");
    common::write_model(&common::two_conv_model(&[3, 8, 8]), &rank3);
    assert_bad_input(&segtune(&["import", rank3.to_str().unwrap()]), &rank3, "expected a rank-4 image input");
    assert_bad_input(&segtune(&["parity", "--weights", rank3.to_str().unwrap()]), &rank3, "found \"input\" of rank 3");

    let missing = dir.path().join("missing.onnx");
    assert_bad_input(&segtune(&["inspect", missing.to_str().unwrap()]), &missing, "no such file");
}

#[test]
fn parity_size_must_be_a_multiple_of_16() {
    let out = segtune(&["parity", "--size", "250"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--size 250: expected a positive multiple of 16, found 250"), "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn parity_cli_passes_and_fails_on_tolerance() {
    let out = segtune(&["parity", "--size", "64", "--batch", "1"]);
    let s = text(&out.stdout);
    assert!(out.status.success(), "{s}{}", text(&out.stderr));
    assert!(s.contains("parity      PASS") && s.contains("forward     burn"), "{s}");
    let out = segtune(&["parity", "--size", "64", "--batch", "1", "--tol", "1e-12"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("parity      FAIL"));
    assert!(text(&out.stderr).contains("parity failed"));
}

#[test]
fn unknown_model_is_a_usage_error() {
    let out = segtune(&["parity", "--model", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("unknown model \"nope\"; compiled-in models: ") && err.contains("deeplabv3plus_mobilenetv2"),
        "{err}"
    );
}

#[test]
fn onnxruntime_is_provisioned_into_an_empty_cache_once() {
    let cache = tempfile::tempdir().unwrap();
    let run = || {
        common::command()
            .args(["parity", "--size", "32", "--batch", "1", "--repeat", "0"])
            .env("SEGTUNE_CACHE_DIR", cache.path())
            .env_remove("ORT_DYLIB_PATH")
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stderr).contains("segtune: fetched onnxruntime 1.31.1 from PyPI into"),
        "{}",
        text(&first.stderr)
    );
    assert!(cache.path().join("onnxruntime-1.31.1/libonnxruntime.so.1.31.1").is_file());
    let second = run();
    assert!(second.status.success());
    assert!(!text(&second.stderr).contains("fetched"), "the cache is used: {}", text(&second.stderr));
}

#[test]
fn a_wrong_ort_dylib_path_says_how_to_fix_it() {
    let out = common::command()
        .args(["parity", "--size", "32", "--batch", "1"])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("ORT_DYLIB_PATH=/nonexistent/libonnxruntime.so is not a file"), "{err}");
    assert!(err.contains("pip install onnxruntime==1.31.1"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Without onnxruntime, training still runs and evaluates (in burn), and says why once; the
/// frozen backbone (auto) also stays in burn.
#[test]
fn training_without_onnxruntime_evaluates_in_burn() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::synth_set(&data, 3, 4, 2, 64, 0);
    let out = common::command()
        .args(["train", "--data", data.to_str().unwrap(), "--out", dir.path().join("run").to_str().unwrap()])
        .args([
            "--classes",
            "3",
            "--epochs",
            "2",
            "--batch",
            "2",
            "--crop",
            "64",
            "--freeze",
            "backbone",
            "--bn",
            "frozen",
        ])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err.matches("segtune: evaluation runs in burn (onnxruntime: ORT_DYLIB_PATH=/nonexistent").count(),
        1,
        "{err}"
    );
    assert!(err.contains("segtune: the frozen backbone runs in burn (onnxruntime: ORT_DYLIB_PATH="), "{err}");
    let metrics: serde_json::Value = common::read_json(dir.path().join("run/metrics.json"));
    assert_eq!(metrics.as_array().unwrap().len(), 2);
    assert!(metrics[1]["val_miou"].as_f64().unwrap() > 0.0);
}
