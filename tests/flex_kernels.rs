//! Each of vendor/burn-flex's patched kernels (vendor/burn-flex/VENDORED.md) against upstream's
//! result in the same binary: the convolution backward passes and BatchNorm with the patch on,
//! then with `burn_flex::ops::patch::set_upstream_only(true)` (burn-backend's defaults); the
//! parallel unary ops and the select-based `mask_fill`, which have no upstream switch, against
//! the element-wise definition. The switch is process-wide, so these tests take one lock.

use std::sync::Mutex;

use burn::tensor::module::{batch_norm, batch_norm_train, conv2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Bool, Tensor, TensorData, activation};
use segtune::model::cpu_device;

static SWITCH: Mutex<()> = Mutex::new(());

/// A fixed pseudo-random pattern in [-scale/2, scale/2).
fn pattern(len: usize, offset: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|i| (((i + offset) * 7919 % 1009) as f32 / 1009.0 - 0.5) * scale).collect()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 values")
}

/// `f()` with the patch's kernels, then with upstream's; both results.
fn both<T>(f: impl Fn() -> T) -> (T, T) {
    let _lock = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let patched = f();
    burn_flex::ops::patch::set_upstream_only(true);
    let upstream = f();
    burn_flex::ops::patch::set_upstream_only(false);
    (patched, upstream)
}

/// `got` within `tol` of the largest |want| (at least 1), and not all zero.
fn assert_close(case: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{case}: sizes");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got.iter().zip(want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
    assert!(scale > 0.0 && worst <= tol * scale.max(1.0), "{case}: off by {worst:e} (largest {scale})");
}

/// Input and weight gradients of conv2d for the loss Σ y · r (r a fixed pattern).
fn conv_grads(x_dims: [usize; 4], w_dims: [usize; 4], options: ConvOptions<2>) -> (Vec<f32>, Vec<f32>) {
    let device = cpu_device().autodiff();
    let tensor = |dims: [usize; 4], offset| {
        Tensor::<4>::from_data(TensorData::new(pattern(dims.iter().product(), offset, 2.0), dims), &device)
    };
    let (x, w) = (tensor(x_dims, 0).require_grad(), tensor(w_dims, 17).require_grad());
    let y = conv2d(x.clone(), w.clone(), None, options);
    let r = tensor(y.shape().dims::<4>(), 5);
    let grads = (y * r).sum().backward();
    (values(x.grad(&grads).expect("x grad")), values(w.grad(&grads).expect("w grad")))
}

fn check_conv(case: &str, x_dims: [usize; 4], w_dims: [usize; 4], options: ConvOptions<2>) {
    let ((gx, gw), (gx_up, gw_up)) = both(|| conv_grads(x_dims, w_dims, options.clone()));
    assert_close(&format!("{case}: x gradient"), &gx, &gx_up, 1e-5);
    assert_close(&format!("{case}: weight gradient"), &gw, &gw_up, 1e-5);
}

#[test]
fn depthwise_conv_backward_equals_upstream() {
    check_conv("depthwise 3×3", [2, 4, 9, 11], [4, 1, 3, 3], ConvOptions::new([1, 1], [1, 1], [1, 1], 4));
    check_conv("depthwise 3×3 stride 2", [2, 3, 10, 7], [3, 1, 3, 3], ConvOptions::new([2, 2], [1, 1], [1, 1], 3));
    check_conv("depthwise dilated", [2, 2, 8, 8], [2, 1, 3, 3], ConvOptions::new([1, 1], [2, 2], [2, 2], 2));
}

#[test]
fn dense_conv_backward_equals_upstream() {
    check_conv("pointwise", [2, 5, 9, 11], [4, 5, 1, 1], ConvOptions::new([1, 1], [0, 0], [1, 1], 1));
    check_conv("pointwise, c_out > c_in", [2, 3, 9, 11], [8, 3, 1, 1], ConvOptions::new([1, 1], [0, 0], [1, 1], 1));
    check_conv("3×3 stride 2", [2, 3, 10, 7], [6, 3, 3, 3], ConvOptions::new([2, 2], [1, 1], [1, 1], 1));
    check_conv("strided 1×1", [2, 4, 7, 9], [5, 4, 1, 1], ConvOptions::new([2, 2], [0, 0], [1, 1], 1));
}

#[test]
fn grouped_conv_backward_falls_back_to_upstream() {
    // groups neither 1 nor the channel count: the patch hands it to burn-backend's default.
    check_conv("2 groups", [2, 4, 6, 6], [6, 2, 3, 3], ConvOptions::new([1, 1], [1, 1], [1, 1], 2));
}

fn channel_tensor(c: usize, offset: usize, scale: f32, shift: f32) -> Tensor<1> {
    let v: Vec<f32> = pattern(c, offset, scale).into_iter().map(|x| x + shift).collect();
    Tensor::<1>::from_data(TensorData::new(v, [c]), &cpu_device().autodiff())
}

#[test]
fn batchnorm_inference_equals_upstream() {
    let ((out,), (out_up,)) = both(|| {
        let device = cpu_device();
        let c = 5;
        let x = Tensor::<4>::from_data(TensorData::new(pattern(2 * c * 6 * 7, 0, 4.0), [2, c, 6, 7]), &device);
        let t = |offset, scale, shift| {
            Tensor::<1>::from_data(
                TensorData::new(pattern(c, offset, scale).into_iter().map(|v| v + shift).collect(), [c]),
                &device,
            )
        };
        (values(batch_norm(x, t(1, 1.0, 1.0), t(2, 1.0, 0.0), t(3, 1.0, 0.0), t(4, 0.5, 1.0), 1e-5)),)
    });
    assert_close("batch_norm", &out, &out_up, 1e-5);
}

#[test]
fn batchnorm_train_and_its_backward_equal_upstream() {
    let (patched, upstream) = both(|| {
        let device = cpu_device().autodiff();
        let c = 6;
        let dims = [3, c, 5, 4];
        let x = Tensor::<4>::from_data(TensorData::new(pattern(dims.iter().product(), 0, 4.0), dims), &device)
            .require_grad();
        let (gamma, beta) =
            (channel_tensor(c, 1, 1.0, 1.0).require_grad(), channel_tensor(c, 2, 1.0, 0.0).require_grad());
        let out = batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5);
        let r = Tensor::<4>::from_data(TensorData::new(pattern(dims.iter().product(), 9, 1.0), dims), &device);
        let grads = (out.output.clone() * r).sum().backward();
        [
            values(out.output),
            values(out.mean),
            values(out.variance),
            values(x.grad(&grads).expect("x grad")),
            values(gamma.grad(&grads).expect("gamma grad")),
            values(beta.grad(&grads).expect("beta grad")),
        ]
    });
    for (what, (got, want)) in ["output", "mean", "variance", "x gradient", "gamma gradient", "beta gradient"]
        .iter()
        .zip(patched.iter().zip(&upstream))
    {
        assert_close(&format!("batch_norm_train: {what}"), got, want, 1e-5);
    }
}

#[test]
fn parallel_unary_ops_and_mask_fill_equal_their_definition() {
    let device = cpu_device();
    // 3 × 64 Ki + 5 elements: above the parallel threshold, with a ragged last chunk.
    let n = 3 * 65536 + 5;
    let v = pattern(n, 3, 20.0);
    let x = Tensor::<1>::from_data(TensorData::new(v.clone(), [n]), &device);
    assert_eq!(values(activation::relu(x.clone())), v.iter().map(|a| a.max(0.0)).collect::<Vec<_>>());
    assert_eq!(values(x.clone().clamp(0.0, 6.0)), v.iter().map(|a| a.clamp(0.0, 6.0)).collect::<Vec<_>>());
    let exp = values(x.clone().exp());
    assert!(exp.iter().zip(&v).all(|(e, a)| (e - a.exp()).abs() <= 1e-6 * a.exp().max(1.0)));
    let mask: Vec<bool> = (0..n).map(|i| i % 3 == 0).collect();
    let m = Tensor::<1, Bool>::from_data(TensorData::new(mask.clone(), [n]), &device);
    let filled = values(x.mask_fill(m, -1.5));
    let want: Vec<f32> = v.iter().zip(&mask).map(|(a, m)| if *m { -1.5 } else { *a }).collect();
    assert_eq!(filled, want);
}
