//! Confusion-matrix metrics against a numpy fixture with torchvision's semantics
//! (scripts/make_metric_fixture.py), to 1e-9.

use segtune::metrics::ConfusionMatrix;

#[test]
fn scores_equal_torchvision_semantics() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let bytes = |k: &str| -> Vec<u8> { v[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u8).collect() };
    let classes = v["classes"].as_u64().unwrap() as usize;
    let (gt, pred) = (bytes("gt"), bytes("pred"));
    // Fed in uneven chunks, as batches would be.
    let mut cm = ConfusionMatrix::new(classes);
    for (g, p) in gt.chunks(1000).zip(pred.chunks(1000)) {
        cm.update(g, p);
    }
    let s = cm.scores();
    let close = |a: f64, key: &str| assert!((a - v[key].as_f64().unwrap()).abs() <= 1e-9, "{key}: {a} vs {}", v[key]);
    close(s.miou, "miou");
    close(s.pixel_accuracy, "pixel_accuracy");
    close(s.frequency_weighted_iou, "frequency_weighted_iou");
    assert_eq!(s.pixels, v["pixels"].as_u64().unwrap());
    for (i, want) in v["per_class_iou"].as_array().unwrap().iter().enumerate() {
        match (s.per_class_iou[i], want.as_f64()) {
            (Some(a), Some(b)) => assert!((a - b).abs() <= 1e-9, "class {i}: {a} vs {b}"),
            (None, None) => {}
            (a, b) => panic!("class {i}: segtune {a:?}, torchvision {b:?}"),
        }
    }
    assert!(s.per_class_iou[5].is_none(), "class 5 is absent from both and left out of the mean");
}
