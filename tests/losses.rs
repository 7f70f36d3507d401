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
    let v: serde_json::Value = common::read_json(common::fixture("losses.json"));
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

/// A batch whose every pixel is 255: each loss is exactly 0 (not NaN from 0 / 0) and hands the
/// logits no gradient.
#[test]
fn an_all_ignored_batch_has_a_zero_loss_and_no_gradient() {
    let device = cpu_device().autodiff();
    let logits =
        Tensor::<4>::random([2, 5, 8, 8], burn::tensor::Distribution::Normal(0.0, 3.0), &device).require_grad();
    let target = Tensor::<3, Int>::full([2, 8, 8], 255, &device);
    for spec in ["ce", "dice", "focal", "ce+0.5*dice"] {
        let loss = loss::compute(&spec.parse().unwrap(), logits.clone(), target.clone(), None);
        let v = value(loss.clone());
        assert!(v == 0.0, "{spec}: {v}");
        let grad = logits.grad(&loss.backward()).map(|g| g.abs().max().into_scalar::<f32>()).unwrap_or(0.0);
        assert_eq!(grad, 0.0, "{spec}: a gradient from ignored pixels");
    }
    // With class weights too.
    let loss = loss::compute(&"ce".parse().unwrap(), logits.clone(), target, Some(&[1.0, 2.0, 1.0, 1.0, 0.5]));
    assert_eq!(value(loss), 0.0);
}

/// The mean is over the pixels that are not ignored (MMSeg's avg_non_ignore, PyTorch's
/// ignore_index): an image of 255s added to the batch changes no loss.
#[test]
fn the_mean_is_over_the_pixels_not_ignored() {
    let c = case();
    let [n, k, h, w] = c.logits.dims();
    let device = cpu_device();
    let noise = Tensor::<4>::random([1, k, h, w], burn::tensor::Distribution::Normal(0.0, 3.0), &device);
    let logits = Tensor::cat(vec![c.logits.clone(), noise], 0);
    let target = Tensor::cat(vec![c.target.clone(), Tensor::<3, Int>::full([1, h, w], 255, &device)], 0);
    assert_eq!(logits.dims()[0], n + 1);
    for spec in ["ce", "dice", "focal"] {
        let spec: LossSpec = spec.parse().unwrap();
        let a = value(loss::compute(&spec, c.logits.clone(), c.target.clone(), None));
        let b = value(loss::compute(&spec, logits.clone(), target.clone(), None));
        assert!((a - b).abs() < 1e-6, "{spec}: {a} without the ignored image, {b} with it");
    }
    assert_close(value(loss::compute(&"ce".parse().unwrap(), logits, target, None)), "ce", &c.v);
}
