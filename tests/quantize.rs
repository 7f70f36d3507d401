//! `segtune quantize`: the shipped model (pretrained on corpus-style images) quantized to int8
//! QDQ on a synthetic corpus set, scored by `validate --baseline` against itself in fp32; the
//! graph's form; the percentile method; bad input; fp16; and the export forms users bring.
//! The int8 model is kept under target/tmp for .ci/run's check in Python onnxruntime
//! (scripts/check_quantized.py).

mod common;

use common::{segtune, stderr};

use std::path::Path;

use segtune::data::{self, SynthOptions, SynthStyle};
use segtune::onnx;

/// `segtune quantize ARGS --out OUT` is refused (exit 2) with each of `problems` in its message,
/// and `out` is left as it was.
fn refused(args: &[&str], out: &Path, problems: &[&str]) {
    let before = std::fs::read(out).unwrap();
    let run = segtune(&[&["quantize"], args, &["--out", out.to_str().unwrap()]].concat());
    assert_eq!(run.status.code(), Some(2), "{}", stderr(&run));
    for problem in problems {
        assert!(stderr(&run).contains(problem), "{}", stderr(&run));
    }
    assert_eq!(std::fs::read(out).unwrap(), before, "the existing output is untouched");
}

fn corpus(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("corpus");
    let opts = SynthOptions { classes: 21, train: 16, val: 12, size: 128, seed: 3, style: SynthStyle::Corpus };
    data::synth(&data, &opts).unwrap();
    data
}

#[test]
fn int8_keeps_the_fp32_scores_and_loads_as_qdq() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let fp32 = common::reference_path();
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("quantize");
    std::fs::create_dir_all(&keep).unwrap();
    let int8 = keep.join("int8.onnx");
    let out = segtune(&[
        "quantize",
        fp32.to_str().unwrap(),
        "--calibrate",
        data.to_str().unwrap(),
        "--out",
        int8.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["calibration_images"], 16, "the dataset's train split");
    assert_eq!((r["stats"]["convs"].as_u64(), r["folded_batchnorms"].as_u64()), (Some(67), Some(61)));
    assert!(r["argmax_agreement"].as_f64().unwrap() > 0.99, "{r}");
    assert!(r["bytes_out"].as_f64().unwrap() < 0.3 * r["bytes_in"].as_f64().unwrap(), "{r}");

    // The graph: no BatchNorm or ReLU6 left, a Q/DQ pair per activation, int8 weights.
    let m = onnx::read_model(&int8).unwrap();
    let count = |op: &str| onnx::graph(&m).node.iter().filter(|n| n.op_type() == op).count();
    assert_eq!((count("BatchNormalization"), count("Clip"), count("Conv")), (0, 0, 67));
    let activations = r["stats"]["activations"].as_u64().unwrap() as usize;
    assert_eq!(count("QuantizeLinear"), activations);
    let biased = onnx::graph(&m).node.iter().filter(|n| n.op_type() == "Conv" && n.input.len() == 3).count();
    assert!(biased >= 61, "each folded BatchNorm gave its Conv a bias");
    assert_eq!(count("DequantizeLinear"), activations + 67 + biased, "activations, weights, biases");
    let int8_weights = onnx::graph(&m).initializer.iter().filter(|t| t.data_type() == 3 && t.dims.len() == 4).count();
    assert_eq!(int8_weights, 67);
    let meta = onnx::metadata(&m);
    assert!(meta["segtune.quantization"].contains("per-channel symmetric int8"));
    assert_eq!(meta.get("segtune.mean"), onnx::metadata(&common::reference()).get("segtune.mean"), "metadata kept");

    // Scored on the val split beside the fp32 model: within half a point.
    let json = dir.path().join("v.json");
    let args = ["validate", int8.to_str().unwrap(), "--data", data.to_str().unwrap(), "--baseline"];
    let out = segtune(&[&args[..], &[fp32.to_str().unwrap(), "--json", json.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = common::read_json(&json);
    let (miou, base, delta) = (
        v["miou"].as_f64().unwrap(),
        v["baseline"]["miou"].as_f64().unwrap(),
        v["baseline"]["miou_delta"].as_f64().unwrap(),
    );
    eprintln!("int8 mIoU {miou:.4}, fp32 {base:.4}");
    assert!(base > 0.4, "the pretrained model segments corpus images: {base}");
    assert!((miou - base - delta).abs() < 1e-12);
    assert!(delta > -0.005, "int8 loses {:.2} points", -delta * 100.0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("baseline"));

    // For scripts/check_quantized.py: a val image as the models' input.
    let image = data::load_image(&data.join("JPEGImages/val_00000.jpg")).unwrap();
    let mut x = ndarray::Array3::<f32>::zeros((3, 128, 128));
    segtune::imaging::normalize_into(x.view_mut(), &image, &segtune::layout::Normalization::IMAGENET);
    std::fs::write(keep.join("input.bin"), x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    std::fs::copy(&fp32, keep.join("fp32.onnx")).unwrap();
}

#[test]
fn percentile_calibration_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let fp32 = common::reference_path();
    let pct = dir.path().join("pct.onnx");
    let images = data.join("JPEGImages/train_0000?.jpg");
    let out = segtune(&[
        "quantize",
        fp32.to_str().unwrap(),
        "--calibrate",
        images.to_str().unwrap(),
        "--images",
        "4",
        "--method",
        "percentile",
        "--percentile",
        "99.9",
        "--out",
        pct.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Percentile on 4 images"), "{text}");
    assert!(onnx::metadata(&onnx::read_model(&pct).unwrap())["segtune.quantization"].contains("percentile 99.9"));

    // A quantized model is not quantized again; a missing calibration path is named; a bad
    // percentile is refused. Nothing is written, and the existing output is untouched.
    refused(&[pct.to_str().unwrap(), "--calibrate", data.to_str().unwrap()], &pct, &["already quantized"]);
    let missing = dir.path().join("nowhere");
    let args = [fp32.to_str().unwrap(), "--calibrate", missing.to_str().unwrap()];
    refused(&args, &pct, &["nowhere: no such file or folder"]);
    let bad =
        [fp32.to_str().unwrap(), "--calibrate", data.to_str().unwrap(), "--method", "percentile", "--percentile", "20"];
    refused(&bad, &pct, &["--percentile 20"]);
    let none = [fp32.to_str().unwrap(), "--calibrate", data.to_str().unwrap(), "--images", "0"];
    refused(&none, &pct, &["--images 0"]);
}

/// `--exclude`: the matched Convs keep float weights, their ReLU (no longer applied by a uint8
/// output) and a float output; the rest is int8 as before. A pattern that matches no Conv, or
/// `--exclude` with `--fp16`, is refused before anything is written.
#[test]
fn excluded_convs_stay_float_with_their_activation() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let fp32 = common::reference_path();
    let int8 = dir.path().join("mixed.onnx");
    let (fp32_s, data_s, int8_s) = (fp32.to_str().unwrap(), data.to_str().unwrap(), int8.to_str().unwrap());
    let patterns = ["/segmentation_head*", "/decoder/block2/*"];
    let args = [&["quantize", fp32_s, "--calibrate", data_s, "--exclude"], &patterns[..]].concat();
    let out = segtune(&[&args[..], &["--out", int8_s, "--json"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((r["stats"]["convs"].as_u64(), r["stats"]["excluded"].as_u64()), (Some(64), Some(3)), "{r}");
    let names: Vec<&str> = r["excluded"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(names.last(), Some(&"/segmentation_head/segmentation_head.0/Conv"));
    assert!(r["argmax_agreement"].as_f64().unwrap() > 0.99, "{r}");

    let m = onnx::read_model(&int8).unwrap();
    let g = onnx::graph(&m);
    let float_init = |name: &str| g.initializer.iter().any(|t| t.name() == name && t.data_type() == 1);
    let quantized: std::collections::HashSet<&str> =
        g.node.iter().filter(|n| n.op_type() == "QuantizeLinear").map(|n| n.input[0].as_str()).collect();
    for conv in g.node.iter().filter(|n| names.contains(&n.name())) {
        assert!(float_init(&conv.input[1]), "{}: float weight {}", conv.name(), conv.input[1]);
        assert!(!quantized.contains(conv.output[0].as_str()), "{}: float output", conv.name());
    }
    let relus = g.node.iter().filter(|n| n.op_type() == "Relu").count();
    assert_eq!(relus, 1, "block2's pointwise Conv keeps its ReLU; every other one merged into a uint8 output");
    assert!(onnx::metadata(&m)["segtune.quantization"].contains("Convs kept in float: /decoder/block2"));

    let unmatched = [fp32_s, "--calibrate", data_s, "--exclude", "/decoder/head*"];
    let problems =
        ["--exclude \"/decoder/head*\" matches no Conv", "the last Convs are /decoder/block2/block2.0/block2.0.0/Conv"];
    refused(&unmatched, &int8, &problems);
    refused(
        &[fp32_s, "--calibrate", data_s, "--fp16", "--exclude", "/segmentation_head*"],
        &int8,
        &["cannot be used with"],
    );
}

/// `--fp16`: float16 weights and compute behind fp32 inputs and outputs; onnxruntime (here its
/// CPU, through casts) gives the fp32 model's predictions and scores.
#[test]
fn fp16_keeps_fp32_io_and_the_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let fp32 = common::reference_path();
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("quantize");
    std::fs::create_dir_all(&keep).unwrap();
    let half = keep.join("fp16.onnx");
    let args = ["quantize", fp32.to_str().unwrap(), "--fp16", "--calibrate", data.to_str().unwrap()];
    let out = segtune(&[&args[..], &["--out", half.to_str().unwrap(), "--json"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["argmax_agreement"].as_f64().unwrap() > 0.995, "{r}");
    assert!(r["max_abs_diff"].as_f64().unwrap() < 0.1, "{r}");

    let m = onnx::read_model(&half).unwrap();
    let g = onnx::graph(&m);
    let float32 = g.initializer.iter().filter(|t| t.data_type() == onnx::DATA_TYPE_FLOAT).count();
    let float16 = g.initializer.iter().filter(|t| t.data_type() == 10).count();
    assert!(float16 > 100 && float32 <= 3, "float16 {float16}, float32 {float32} (a Resize's scales stay fp32)");
    let inputs = onnx::graph_inputs(g);
    assert_eq!(inputs[0].elem_type, onnx::DATA_TYPE_FLOAT, "the input stays fp32");
    assert_eq!((g.node[0].op_type(), g.node.last().unwrap().op_type()), ("Cast", "Cast"));

    let json = dir.path().join("v.json");
    let args = ["validate", half.to_str().unwrap(), "--data", data.to_str().unwrap(), "--baseline"];
    let out = segtune(&[&args[..], &[fp32.to_str().unwrap(), "--json", json.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = common::read_json(&json);
    assert!(v["baseline"]["miou_delta"].as_f64().unwrap().abs() < 0.005, "{}", v["baseline"]);
}

/// The export forms users bring (`scripts/make_user_exports.py`: a wrapper's prefix, BatchNorm
/// folded under a fixed 64×64 input, a fixed height and width, fully static, external data,
/// dynamo=True) quantize: every Conv, its BatchNorm folded where the graph kept one, a Q/DQ
/// pair per activation, and argmax agreement with the fp32 model on the calibration images;
/// `--exclude` finds the classifier in each; the int8 model then runs in `segtune infer`.
#[test]
fn the_export_forms_users_bring_quantize_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::synth_set(&dir.path().join("data"), 3, 8, 4, 64, 0);
    let forms = [
        ("prefix_m", 17),
        ("prefix_module", 17),
        ("folded_other", 0),
        ("fixed_hw", 17),
        ("static", 17),
        ("external", 17),
    ];
    for (form, batchnorms) in forms.into_iter().chain([("dynamo_other", 0)]) {
        let fp32 = common::fixture("exports").join(format!("{form}.onnx"));
        let int8 = dir.path().join(format!("{form}.int8.onnx"));
        let (fp32, int8_s) = (fp32.to_str().unwrap(), int8.to_str().unwrap());
        let out = segtune(&["quantize", fp32, "--calibrate", data.to_str().unwrap(), "--out", int8_s, "--json"]);
        assert!(out.status.success(), "{form}: {}", stderr(&out));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (r["stats"]["convs"].as_u64(), r["folded_batchnorms"].as_u64()),
            (Some(22), Some(batchnorms)),
            "{form}"
        );
        let agreement = r["argmax_agreement"].as_f64().unwrap();
        assert!(agreement > 0.9, "{form}: argmax agreement with fp32 {agreement}");
        // The classifier found by name in each form (dynamo's nodes are `node_conv2d_N`: by its weight).
        let head = dir.path().join(format!("{form}.head.onnx"));
        let args = ["quantize", fp32, "--calibrate", data.to_str().unwrap(), "--exclude", "*segmentation_head*"];
        let out = segtune(&[&args[..], &["--out", head.to_str().unwrap(), "--json"]].concat());
        assert!(out.status.success(), "{form}: {}", stderr(&out));
        let h: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!((h["stats"]["convs"].as_u64(), h["stats"]["excluded"].as_u64()), (Some(21), Some(1)), "{form}");
        let m = onnx::read_model(&int8).unwrap();
        let count = |op: &str| onnx::graph(&m).node.iter().filter(|n| n.op_type() == op).count();
        assert_eq!(count("BatchNormalization"), 0, "{form}");
        assert_eq!(count("QuantizeLinear") as u64, r["stats"]["activations"].as_u64().unwrap(), "{form}");
        let pred = dir.path().join(format!("pred_{form}"));
        let images = data.join("JPEGImages");
        let out = segtune(&["infer", int8_s, images.to_str().unwrap(), "--out", pred.to_str().unwrap()]);
        assert!(out.status.success(), "{form}: {}", stderr(&out));
        let summary: serde_json::Value = common::read_json(pred.join("summary.json"));
        assert_eq!(summary["images"].as_array().map(Vec::len), Some(12), "{form}");
        assert!(summary["folded_resize"].as_str().is_some_and(|f| f.starts_with("bilinear ×4×4")), "{form}: {summary}");
    }
}

/// The Keras export (tf2onnx) ends in Resize → Transpose to NHWC: quantized, the Resize's output
/// stays float like a graph output (the Transpose reads it directly, no Q/DQ rounding the
/// logits), so infer still folds that Resize into the mask's upsampling.
#[test]
fn a_keras_exports_upsampled_logits_stay_float_and_fold() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::synth_set(&dir.path().join("data"), 21, 4, 2, 64, 0);
    let fp32 = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/keras_deeplabv3plus_mobilenetv2.onnx");
    let int8 = dir.path().join("keras.int8.onnx");
    let out = segtune(&[
        "quantize",
        fp32.to_str().unwrap(),
        "--calibrate",
        data.to_str().unwrap(),
        "--out",
        int8.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m = onnx::read_model(&int8).unwrap();
    let g = onnx::graph(&m);
    let made = |name: &str| g.node.iter().find(|n| n.output[0] == name).unwrap();
    let transpose = made(g.output[0].name());
    assert_eq!(transpose.op_type(), "Transpose");
    assert_eq!(made(&transpose.input[0]).op_type(), "Resize", "the Transpose reads the float Resize");
    let pred = dir.path().join("pred");
    let images = data.join("JPEGImages");
    let out = segtune(&["infer", int8.to_str().unwrap(), images.to_str().unwrap(), "--out", pred.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = common::read_json(pred.join("summary.json"));
    assert_eq!(summary["folded_resize"], "bilinear to the input size (half_pixel)", "{summary}");
}
