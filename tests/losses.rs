//! Losses against PyTorch and smp on fixed tensors with 255 pixels (fixture:
//! scripts/make_fixtures.py), to 1e-5.

mod common;

use burn::tensor::{Int, Tensor, TensorData};
use segtune::loss::{self, LossSpec};
use segtune::model::cpu_device;

struct Case {
    logits: Tensor<4>,
    target: Tensor<3, Int>,
    v: serde_json::Value,
}

fn case() -> Case {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixture("losses.json")).unwrap()).unwrap();
    let shape: Vec<usize> =
        v["logits_shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    let logits: Vec<f32> = v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let target: Vec<i64> = v["target"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    let device = cpu_device();
    Case {
        logits: Tensor::from_data(TensorData::new(logits, shape.clone()), &device),
        target: Tensor::from_data(TensorData::new(target, vec![shape[0], shape[2], shape[3]]), &device),
        v,
    }
}

fn value(t: Tensor<1>) -> f64 {
    t.into_data().try_to_vec::<f32>().unwrap()[0] as f64
}

fn assert_close(got: f64, key: &str, v: &serde_json::Value) {
    let want = v[key].as_f64().unwrap();
    assert!((got - want).abs() <= 1e-5, "{key}: segtune {got}, PyTorch {want}");
}

#[test]
fn cross_entropy_matches_pytorch_ignore_index() {
    let c = case();
    assert_close(value(loss::cross_entropy(c.logits.clone(), c.target.clone(), None)), "ce", &c.v);
    let w: Vec<f32> = c.v["class_weights"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    assert_close(value(loss::cross_entropy(c.logits, c.target, Some(&w))), "ce_weighted", &c.v);
}

#[test]
fn dice_matches_smp_multiclass() {
    let c = case();
    assert_close(value(loss::dice(c.logits, c.target)), "dice", &c.v);
}

#[test]
fn focal_matches_smp_multiclass() {
    let c = case();
    assert_close(value(loss::focal(c.logits, c.target, 2.0)), "focal", &c.v);
}

#[test]
fn weighted_sum() {
    let c = case();
    let spec: LossSpec = "ce+0.5*dice".parse().unwrap();
    assert_close(value(loss::compute(&spec, c.logits, c.target, None)), "ce+0.5*dice", &c.v);
}

#[test]
fn ignored_pixels_do_not_count() {
    // Changing logits only where the target is 255 changes no loss.
    let c = case();
    let ignored = c.target.clone().equal_elem(255).float().unsqueeze_dim::<4>(1);
    let changed = c.logits.clone().add(ignored.mul_scalar(100.0));
    for spec in ["ce", "dice", "focal"] {
        let spec: LossSpec = spec.parse().unwrap();
        let a = value(loss::compute(&spec, c.logits.clone(), c.target.clone(), None));
        let b = value(loss::compute(&spec, changed.clone(), c.target.clone(), None));
        assert!((a - b).abs() < 1e-6, "{spec}: {a} vs {b}");
    }
}
