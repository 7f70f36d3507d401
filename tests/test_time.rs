//! Sliding-window tiles and test-time augmentation (`--tile`, `--overlap`, `--scales`, `--flip`)
//! in validate and infer: exact on a pointwise model (whose every pixel depends on itself
//! alone, so tiles and mirrors must give back the whole image's logits), and on the shipped
//! model against a single forward pass.

mod common;

use common::{segtune, stderr};

use std::path::Path;

use image::RgbImage;
use segtune::data::{self, SynthOptions, SynthStyle};
use segtune::final_resize::without_final_resize;
use segtune::layout::{Layout, Normalization};
use segtune::onnx::{self, proto};
use segtune::predict::{self, TestTimeArgs};
use segtune::runtime::OrtModel;

/// One 1×1 Conv from 3 channels to 4, seeded weights, any input size.
fn pointwise_model() -> Vec<u8> {
    use prost::Message;
    let mut m = common::two_conv_model(&[1, 3, 8, 8]);
    let g = m.graph.as_mut().unwrap();
    let w: Vec<f32> = (0..12).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
    g.initializer = vec![proto::TensorProto {
        name: Some("w".into()),
        data_type: Some(1),
        dims: vec![4, 3, 1, 1],
        raw_data: Some(w.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }];
    g.node.truncate(1);
    g.node[0].input = vec!["input".into(), "w".into()];
    g.node[0].output = vec!["output".into()];
    for v in g.input.iter_mut().chain(g.output.iter_mut()) {
        if let Some(proto::type_proto::Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            t.shape = None;
        }
    }
    m.encode_to_vec()
}

fn image(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 % 256) as u8, (y * 13 % 256) as u8, ((x + y) * 5 % 256) as u8]))
}

#[test]
fn tiles_and_flips_of_a_pointwise_model_give_back_its_whole_image_logits() {
    let mut session = OrtModel::from_bytes(&pointwise_model(), "pointwise", 1).unwrap();
    let norm = Normalization::IMAGENET;
    let img = image(208, 144);
    let whole = predict::forward(&mut session, &norm, &img, None, 0.0).unwrap();
    assert_eq!(whole.dim(), (4, 144, 208));
    for (tile, overlap) in [(64, 1.0 / 3.0), (96, 0.5), (48, 0.0)] {
        let tiled = predict::forward(&mut session, &norm, &img, Some(tile), overlap).unwrap();
        let diff = (&tiled - &whole).iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(diff < 1e-5, "tile {tile}, overlap {overlap}: max |Δ| {diff}");
    }
    // Band by band, the same argmax (held: one band of tiles' logits).
    let want = segtune::tensors::argmax_classes(whole.view().insert_axis(ndarray::Axis(0)));
    for (tile, overlap) in [(64, 1.0 / 3.0), (48, 0.5)] {
        let mask = predict::tiled_mask(&mut session, &norm, &img, tile, overlap, 4).unwrap();
        assert_eq!(mask.as_raw(), &want, "tile {tile}, overlap {overlap}");
    }
    assert!(predict::tiled_mask(&mut session, &norm, &img, 64, 0.0, 5).is_err(), "4 channels are not 5 classes");
    // A mirrored view, mirrored back, is the same softmax: the average is the plain softmax.
    let pipeline = segtune::pipeline::Pipeline::recorded(&Default::default(), norm).unwrap();
    let flip = TestTimeArgs { flip: true, ..Default::default() };
    let (base, inner) = pipeline.prepare(&img);
    let (scores, inner) = predict::scores(&mut session, &norm, &base, inner, &flip).unwrap();
    assert_eq!(inner, (208, 144));
    let diff = (&scores - &predict::softmax(whole.view())).iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(diff < 1e-5, "flip: max |Δ| {diff}");
}

fn corpus(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("corpus");
    let opts = SynthOptions { classes: 21, train: 1, val: 12, size: 160, seed: 3, style: SynthStyle::Corpus };
    data::synth(&data, &opts).unwrap();
    data
}

fn validate(data: &Path, extra: &[&str]) -> serde_json::Value {
    let json = data.with_extension(format!("{}.json", extra.join("_").replace(['-', ',', '.'], "")));
    let model = common::reference_path();
    let mut args = vec!["validate", model.to_str().unwrap(), "--data", data.to_str().unwrap()];
    args.extend_from_slice(&["--json", json.to_str().unwrap()]);
    args.extend_from_slice(extra);
    let out = segtune(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    common::read_json(json)
}

#[test]
fn validate_with_tiles_and_multi_scale_flips_on_the_shipped_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let miou = |v: &serde_json::Value| v["miou"].as_f64().unwrap();
    let plain = validate(&data, &[]);
    // A tile as large as the image is one forward pass.
    let whole = validate(&data, &["--tile", "160"]);
    assert_eq!(
        miou(&whole),
        miou(&plain),
        "the full graph's (tiles) and the folded Resize's (plain) masks score alike"
    );
    assert_eq!(plain["folded_resize"], "bilinear ×4×4 (align_corners)", "one forward pass folds, as infer does");
    assert!(whole["folded_resize"].is_null());
    let tiled = validate(&data, &["--tile", "128", "--overlap", "0.5"]);
    assert!(tiled["input"].as_str().unwrap().contains("tiles of 128×128 overlapping by 0.50"), "{}", tiled["input"]);
    let tta = validate(&data, &["--scales", "0.75,1,1.25", "--flip"]);
    assert!(tta["input"].as_str().unwrap().contains("scales 0.75,1,1.25 with left-right flips"));
    eprintln!("mIoU: plain {:.4}, tiles of 128 {:.4}, scales + flips {:.4}", miou(&plain), miou(&tiled), miou(&tta));
    assert!((miou(&tiled) - miou(&plain)).abs() < 0.05, "tiles lose little context at 128 of 160");
    assert!(miou(&tta) > miou(&plain) - 0.01, "augmentation does not hurt");

    let model = common::reference_path();
    let bad = |extra: &[&str], problem: &str| {
        let mut args = vec!["validate", model.to_str().unwrap(), "--data", data.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = segtune(&args);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(problem), "{}", stderr(&out));
    };
    bad(&["--tile", "100"], "--tile 100: expected a positive multiple of 16");
    bad(&["--scales", "0.5,9"], "--scales: 9 is outside (0, 4]");
    bad(&["--overlap", "0.95", "--tile", "64"], "--overlap 0.95");
}

#[test]
fn infer_tiles_a_large_image_and_writes_its_full_size_mask() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("large.png");
    image(1000, 750).save(&path).unwrap();
    let out_dir = dir.path().join("pred");
    let model = common::reference_path();
    let out = segtune(&[
        "infer",
        model.to_str().unwrap(),
        path.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--tile",
        "256",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(image::image_dimensions(out_dir.join("large.png")).unwrap(), (1000, 750));
    let summary: serde_json::Value = common::read_json(out_dir.join("summary.json"));
    assert!(summary["test_time"].as_str().unwrap().contains("tiles of 256×256"), "{summary}");
    assert!(summary["folded_resize"].is_null(), "tiles run the full graph: {summary}");
    assert_eq!(onnx::metadata(&common::reference()).get("segtune.resize"), None, "the shipped model records none");
}

/// infer takes the shipped graph's final Resize (bilinear ×4, align_corners) out and folds it
/// into the mask's upsampling: on corpus images letterboxed to 250 and to 128, masked back to
/// their own 160×160 and to 300×200, the masks equal the ones from the full graph's logits.
#[test]
fn folding_the_final_resize_gives_the_full_graphs_masks() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let model = common::reference();
    let folded = without_final_resize(&model, Layout::Nchw).expect("the shipped head ends in a Resize");
    let (cut, up) = (folded.model, folded.upsampling);
    assert_eq!(up.describe(), "bilinear ×4×4 (align_corners)");
    let bytes = |m: &onnx::ModelProto| prost::Message::encode_to_vec(m);
    let mut full = OrtModel::from_bytes(&bytes(&model), "full", 2).unwrap();
    let mut folded = OrtModel::from_bytes(&bytes(&cut), "folded", 2).unwrap();
    let norm = Normalization::IMAGENET;
    let (mut pixels, mut differ) = (0, 0);
    for i in 0..4 {
        let img = data::load_image(&data.join(format!("JPEGImages/val_{i:05}.jpg"))).unwrap();
        for (side, (w, h)) in [(250, (160, 160)), (128, (300, 200))] {
            let (input, inner) = segtune::imaging::letterbox(&img, (side, side), false, &norm);
            let (iw, ih) = (input.width() as usize, input.height() as usize);
            let mut x = ndarray::Array4::<f32>::zeros((1, 3, ih, iw));
            segtune::imaging::normalize_into(x.index_axis_mut(ndarray::Axis(0), 0), &input, &norm);
            let logits = full.run_logits(x.view(), norm.layout).unwrap();
            let small = folded.run_logits(x.view(), norm.layout).unwrap();
            assert_eq!(small.shape()[2..], [ih / 4, iw / 4], "the cut graph gives the logits before the Resize");
            assert_eq!(up.output_size((iw / 4, ih / 4), (iw, ih)), (iw, ih));
            let want = segtune::upsample::upsample_argmax(logits.index_axis(ndarray::Axis(0), 0), inner, w, h);
            let small = small.index_axis(ndarray::Axis(0), 0);
            let got = segtune::upsample::upsample_argmax_through(small, &up, (iw, ih), inner, (w, h)).unwrap();
            pixels += want.len();
            differ += want.pixels().zip(got.pixels()).filter(|(a, b)| a != b).count();
        }
    }
    eprintln!("{differ} of {pixels} mask pixels differ");
    assert!(differ * 100_000 <= pixels, "{differ} of {pixels} mask pixels differ (at most 1 in 100,000)");
}

/// Only a bilinear upsampling is folded: the same head with nearest mode or a crop-and-resize
/// coordinate mode keeps its Resize (a downsampling: `upsample`'s unit tests).
#[test]
fn a_final_resize_that_is_not_a_bilinear_upsampling_stays_in_the_graph() {
    let model = common::reference();
    let edited = |f: &dyn Fn(&mut proto::NodeProto)| {
        let mut m = model.clone();
        let g = m.graph.as_mut().unwrap();
        let out = g.output[0].name().to_string();
        f(g.node.iter_mut().find(|n| n.output.first() == Some(&out)).unwrap());
        m
    };
    let set = |name: &'static str, value: &'static str| {
        move |n: &mut proto::NodeProto| {
            n.attribute.iter_mut().find(|a| a.name() == name).unwrap().s = Some(value.as_bytes().to_vec())
        }
    };
    assert!(without_final_resize(&edited(&set("mode", "nearest")), Layout::Nchw).is_none());
    let crop = edited(&set("coordinate_transformation_mode", "tf_crop_and_resize"));
    assert!(without_final_resize(&crop, Layout::Nchw).is_none());
    let half = edited(&set("coordinate_transformation_mode", "half_pixel"));
    let cut = without_final_resize(&half, Layout::Nchw).expect("half_pixel folds");
    let g = cut.model.graph.unwrap();
    assert!(g.node.iter().all(|n| n.op_type() != "Resize" || n.output[0] != g.output[0].name()));
    assert!(g.node.iter().any(|n| n.output.first().map(String::as_str) == Some(g.output[0].name())), "output made");
}

/// Masks through the folded graph of the model at `path` and through its full graph, of corpus
/// image `i` letterboxed into `side`², masked to `mask`; and how many classes the full graph's
/// mask shows.
fn folded_and_full_masks(
    path: &Path,
    i: usize,
    side: usize,
    mask: (usize, usize),
) -> (image::GrayImage, image::GrayImage, usize) {
    use segtune::runtime::{OpenedModel, Provider};
    let dir = tempfile::tempdir().unwrap();
    let img = data::load_image(&corpus(dir.path()).join(format!("JPEGImages/val_{i:05}.jpg"))).unwrap();
    let open = |fold| OpenedModel::open(path, 1, true, Provider::Cpu, fold).unwrap();
    let (mut full, mut cut) = (open(false), open(true));
    let up = cut.upsampling.expect("the final Resize is folded");
    assert!(full.upsampling.is_none());
    let norm = full.norm;
    let (input, inner) = segtune::imaging::letterbox(&img, (side, side), false, &norm);
    let (w, h) = (input.width() as usize, input.height() as usize);
    let mut x = ndarray::Array4::<f32>::zeros(norm.layout.shape(1, h, w));
    segtune::imaging::normalize_into(x.index_axis_mut(ndarray::Axis(0), 0), &input, &norm);
    let logits = full.session.run_logits(x.view(), norm.layout).unwrap();
    let small = cut.session.run_logits(x.view(), cut.output_layout).unwrap();
    let first = |a: &ndarray::Array4<f32>| a.index_axis(ndarray::Axis(0), 0).to_owned();
    let want = segtune::upsample::upsample_argmax(first(&logits).view(), inner, mask.0, mask.1);
    let got = segtune::upsample::upsample_argmax_through(first(&small).view(), &up, (w, h), inner, mask).unwrap();
    let classes = want.pixels().map(|p| p[0]).collect::<std::collections::HashSet<_>>().len();
    (want, got, classes)
}

/// The Keras export (tf2onnx) ends in a Resize to `sizes` computed from the input's Shape and a
/// Transpose to NHWC: both are folded (the session's output is NCHW), and the masks equal the
/// full graph's at two input sizes. The same Resize with a constant `sizes`, or one taken from
/// its own input's shape, stays in the graph.
#[test]
fn a_keras_exports_resize_to_the_input_size_and_transpose_are_folded() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/keras_deeplabv3plus_mobilenetv2.onnx");
    let model = onnx::read_model(&path).unwrap();
    let folded = without_final_resize(&model, Layout::Nhwc).expect("Resize + Transpose fold");
    assert!(folded.transposed);
    assert_eq!(folded.upsampling.describe(), "bilinear to the input size (half_pixel)");
    let resizes = |g: &proto::GraphProto| g.node.iter().filter(|n| n.op_type() == "Resize").count();
    let g = folded.model.graph.as_ref().unwrap();
    assert_eq!(resizes(g) + 1, resizes(onnx::graph(&model)));
    let readers = onnx::readers(g);
    assert!(g.node.iter().all(|n| n.output.iter().any(|o| readers.contains_key(o))), "sizes' arithmetic went too");
    assert!(g.node.len() < onnx::graph(&model).node.len() - 2);
    for (i, side, mask) in [(0, 128, (120, 90)), (1, 96, (160, 160)), (2, 160, (160, 160))] {
        let (want, got, classes) = folded_and_full_masks(&path, i, side, mask);
        assert!(classes >= 2, "image {i} at {side}: {classes} classes, a boundary to blend");
        assert_eq!(want, got, "image {i} at {side}");
    }
    // The final Resize: the one the output's Transpose reads.
    let resize = |m: &onnx::ModelProto| -> proto::NodeProto {
        let g = onnx::graph(m);
        let transpose = g.node.iter().find(|n| n.output[0] == g.output[0].name()).unwrap();
        g.node.iter().find(|n| n.output[0] == transpose.input[0]).unwrap().clone()
    };
    let with_sizes = |sizes: &str, extra: Vec<proto::NodeProto>, init: Vec<proto::TensorProto>| {
        let mut m = model.clone();
        let name = resize(&m).name().to_string();
        let g = m.graph.as_mut().unwrap();
        g.node.iter_mut().find(|n| n.name() == name).unwrap().input[3] = sizes.into();
        g.node.extend(extra);
        g.initializer.extend(init);
        m
    };
    let constant = proto::TensorProto {
        name: Some("fixed_sizes".into()),
        data_type: Some(7),
        dims: vec![4],
        int64_data: vec![1, 21, 128, 128],
        ..Default::default()
    };
    assert!(without_final_resize(&with_sizes("fixed_sizes", vec![], vec![constant]), Layout::Nhwc).is_none());
    let x = resize(&model).input[0].clone();
    let own = proto::NodeProto {
        op_type: Some("Shape".into()),
        input: vec![x],
        output: vec!["own_shape".into()],
        ..Default::default()
    };
    assert!(without_final_resize(&with_sizes("own_shape", vec![own], vec![]), Layout::Nhwc).is_none());
}

/// torchvision's heads resize to `sizes` = the logits' `[N, C]` and the input's `[H, W]`
/// (`Concat(Shape(x)[0:2], Shape(input)[2:4])`): the shipped model's ×4 Resize rewritten so,
/// folded to the input's size, gives the full graph's masks.
#[test]
fn a_torchvision_style_resize_to_the_input_size_is_folded() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = common::reference();
    let g = model.graph.as_mut().unwrap();
    let node = |op: &str, inputs: &[&str], output: &str| proto::NodeProto {
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    };
    let ints = |name: &str, v: &[i64]| proto::TensorProto {
        name: Some(name.into()),
        data_type: Some(7),
        dims: vec![v.len() as i64],
        int64_data: v.to_vec(),
        ..Default::default()
    };
    let out = g.output[0].name().to_string();
    let at = g.node.iter().position(|n| n.output.first() == Some(&out)).unwrap();
    let x = g.node[at].input[0].clone();
    g.node[at].input = vec![x.clone(), String::new(), String::new(), "tv_sizes".into()];
    let arithmetic = [
        node("Shape", &[&x], "tv_x_shape"),
        node("Slice", &["tv_x_shape", "tv_0", "tv_2"], "tv_nc"),
        node("Shape", &["input"], "tv_in_shape"),
        node("Slice", &["tv_in_shape", "tv_2", "tv_4"], "tv_hw"),
        node("Concat", &["tv_nc", "tv_hw"], "tv_sizes"),
    ];
    g.node[at].attribute.retain(|a| a.name() != "coordinate_transformation_mode");
    g.node.splice(
        at..at,
        arithmetic.into_iter().map(|mut n| {
            if n.op_type() == "Concat" {
                n.attribute.push(proto::AttributeProto {
                    name: Some("axis".into()),
                    i: Some(0),
                    r#type: Some(2),
                    ..Default::default()
                });
            }
            n
        }),
    );
    g.initializer.extend([ints("tv_0", &[0]), ints("tv_2", &[2]), ints("tv_4", &[4])]);
    let path = dir.path().join("torchvision_style.onnx");
    common::write_model(&model, &path);
    let folded = without_final_resize(&model, Layout::Nchw).expect("sizes from the input's shape fold");
    assert!(!folded.transposed);
    assert_eq!(folded.upsampling.describe(), "bilinear to the input size (half_pixel)");
    let g = folded.model.graph.as_ref().unwrap();
    assert!(g.initializer.iter().all(|t| !t.name().starts_with("tv_")), "the unread constants are dropped");
    for (i, side, mask) in [(0, 128, (120, 90)), (1, 160, (500, 375))] {
        let (want, got, classes) = folded_and_full_masks(&path, i, side, mask);
        assert!(classes >= 2, "image {i} at {side}: {classes} classes, a boundary to blend");
        assert_eq!(want, got, "image {i} at {side}");
    }
}
