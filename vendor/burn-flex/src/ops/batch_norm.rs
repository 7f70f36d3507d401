//! Fused BatchNorm for f32 (segtune's patch, see `VENDORED.md`).
//!
//! Upstream burn-flex 0.22.1 leaves `batch_norm`, `batch_norm_train` and
//! `batch_norm_train_backward` to burn-backend's defaults, built from tensor operations: each
//! swaps the batch and channel axes into a copy to reduce per channel, and every arithmetic step
//! writes a new full-size tensor (about ten passes over the activations forward, a dozen
//! backward). Here each is two passes per channel over the `[N, C, ...]` data where it lies, in
//! parallel over channels, with f64 sums. Other dtypes keep burn-backend's defaults, copied below
//! unchanged.

use alloc::{vec, vec::Vec};

use burn_backend::ops::{BatchNormTrain, BatchNormTrainBackward};
use burn_backend::{Backend, DType, Scalar, TensorMetadata, tensor::FloatTensor};
use burn_std::{Bytes, Shape};

use crate::{Flex, FlexTensor, Layout};

/// `[N, C, inner]` of an f32 tensor of rank ≥ 2 whose per-channel tensors are f32 too.
fn geometry(x: &FlexTensor, per_channel: &[&FlexTensor]) -> Option<(usize, usize, usize)> {
    let shape = x.shape();
    if x.dtype() != DType::F32 || shape.rank() < 2 || per_channel.iter().any(|t| t.dtype() != DType::F32) {
        return None;
    }
    let (n, c) = (shape[0], shape[1]);
    if per_channel.iter().any(|t| t.shape().num_elements() != c) {
        return None;
    }
    Some((n, c, shape.num_elements() / (n * c).max(1)))
}

fn values(t: &FlexTensor) -> Vec<f32> {
    t.to_contiguous().storage::<f32>().to_vec()
}

fn tensor(data: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(Bytes::from_elems(data), Layout::contiguous(shape), DType::F32)
}

/// Channel `ch`'s N planes of `x`, `[N, C, inner]`.
fn planes(x: &[f32], (n, c, inner): (usize, usize, usize), ch: usize) -> impl Iterator<Item = &[f32]> {
    (0..n).map(move |b| &x[(b * c + ch) * inner..][..inner])
}

/// `f(ch)` for every channel, in parallel; results in channel order.
fn per_channel<R: Send>(channels: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        (0..channels).into_par_iter().map(f).collect()
    }
    #[cfg(not(feature = "rayon"))]
    (0..channels).map(f).collect()
}

/// `f(ch, p, out)` over every `[inner]` plane `p` of a new `[N, C, inner]` tensor, in parallel.
fn map_planes(len: usize, (_, c, inner): (usize, usize, usize), f: impl Fn(usize, usize, &mut [f32]) + Sync + Send) -> Vec<f32> {
    let mut out = vec![0f32; len];
    crate::ops::for_each_chunk(&mut out, inner, |p, plane| f(p % c, p, plane));
    out
}

/// `(x - mean[c]) / std[c] · gamma[c] + beta[c]` with `std = sqrt(var + eps)`: the same f32
/// operations in the same order as burn-backend's default (and onnxruntime's BatchNormalization),
/// so inference results stay bit-close to both.
fn normalize(x: &[f32], g: (usize, usize, usize), mean: &[f32], var: &[f32], gamma: &[f32], beta: &[f32], epsilon: f64) -> Vec<f32> {
    let inner = g.2;
    let std: Vec<f32> = var.iter().map(|v| (v + epsilon as f32).sqrt()).collect();
    map_planes(x.len(), g, |ch, p, out| {
        let (m, s, a, b) = (mean[ch], std[ch], gamma[ch], beta[ch]);
        for (o, v) in out.iter_mut().zip(&x[p * inner..][..inner]) {
            *o = (v - m) / s * a + b;
        }
    })
}

pub(crate) fn batch_norm(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    mean: FlexTensor,
    variance: FlexTensor,
    epsilon: f64,
) -> FlexTensor {
    let Some(g) = geometry(&x, &[&gamma, &beta, &mean, &variance]).filter(|_| !crate::ops::upstream_only()) else {
        return default_batch_norm::<Flex>(x, gamma, beta, mean, variance, epsilon);
    };
    let x = x.to_contiguous();
    let out = normalize(x.storage(), g, &values(&mean), &values(&variance), &values(&gamma), &values(&beta), epsilon);
    tensor(out, x.shape())
}

pub(crate) fn batch_norm_train(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, epsilon: f64) -> BatchNormTrain<Flex> {
    let Some(g) = geometry(&x, &[&gamma, &beta]).filter(|_| !crate::ops::upstream_only()) else {
        return default_batch_norm_train::<Flex>(x, gamma, beta, epsilon);
    };
    let x = x.to_contiguous();
    let data: &[f32] = x.storage();
    let count = (g.0 * g.2).max(1) as f64;
    // Two passes per channel: the mean, then the mean squared deviation (biased variance).
    let stats: Vec<(f32, f32)> = per_channel(g.1, |ch| {
        let mean = planes(data, g, ch).map(|p| p.iter().map(|v| *v as f64).sum::<f64>()).sum::<f64>() / count;
        let var = planes(data, g, ch).map(|p| p.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>()).sum::<f64>() / count;
        (mean as f32, var as f32)
    });
    let (mean, var): (Vec<f32>, Vec<f32>) = stats.into_iter().unzip();
    let output = tensor(normalize(data, g, &mean, &var, &values(&gamma), &values(&beta), epsilon), x.shape());
    let c = Shape::new([g.1]);
    BatchNormTrain::new(output, tensor(mean, c.clone()), tensor(var, c))
}

pub(crate) fn batch_norm_train_backward(
    x: FlexTensor,
    gamma: FlexTensor,
    mean: FlexTensor,
    variance: FlexTensor,
    epsilon: f64,
    output_grad: FlexTensor,
) -> BatchNormTrainBackward<Flex> {
    let same_shape = x.shape() == output_grad.shape() && output_grad.dtype() == DType::F32;
    let Some(g) = geometry(&x, &[&gamma, &mean, &variance]).filter(|_| same_shape && !crate::ops::upstream_only()) else {
        return default_batch_norm_train_backward::<Flex>(x, gamma, mean, variance, epsilon, output_grad);
    };
    let (x, dy) = (x.to_contiguous(), output_grad.to_contiguous());
    let (xs, dys): (&[f32], &[f32]) = (x.storage(), dy.storage());
    let (gamma, mean, var) = (values(&gamma), values(&mean), values(&variance));
    let inv_std: Vec<f64> = var.iter().map(|v| 1.0 / (*v as f64 + epsilon).sqrt()).collect();
    let inner = g.2;
    // Per channel: Σ dy (beta's gradient) and Σ dy · x̂ (gamma's), x̂ = (x - mean) / std.
    let sums: Vec<(f64, f64)> = per_channel(g.1, |ch| {
        let (m, s) = (mean[ch] as f64, inv_std[ch]);
        planes(xs, g, ch).zip(planes(dys, g, ch)).fold((0.0, 0.0), |(sg, sgx), (xp, dp)| {
            let (a, c) = xp.iter().zip(dp).fold((0.0, 0.0), |(a, c), (x, d)| (a + *d as f64, c + *d as f64 * (*x as f64 - m)));
            (sg + a, sgx + c * s)
        })
    });
    let count = (g.0 * inner).max(1) as f64;
    // dx = gamma / std · (dy - mean(dy) - x̂ · mean(dy · x̂)).
    let x_grad = map_planes(xs.len(), g, |ch, p, out| {
        let (sg, sgx) = sums[ch];
        let (m, s) = (mean[ch] as f64, inv_std[ch]);
        let k = gamma[ch] as f64 * s;
        let (mean_dy, mean_dyx) = (sg / count, sgx / count);
        // dx = k·dy - k·mean_dy - k·mean_dyx·s·(x - m) = a·dy + b·(x - m) + c, centred first.
        let (a, b, c) = (k as f32, (-k * mean_dyx * s) as f32, (-k * mean_dy) as f32);
        let m = m as f32;
        for ((o, x), d) in out.iter_mut().zip(&xs[p * inner..][..inner]).zip(&dys[p * inner..][..inner]) {
            *o = a * d + b * (x - m) + c;
        }
    });
    let c = Shape::new([g.1]);
    let (beta_grad, gamma_grad): (Vec<f32>, Vec<f32>) = sums.iter().map(|(a, b)| (*a as f32, *b as f32)).unzip();
    BatchNormTrainBackward::new(tensor(x_grad, x.shape()), tensor(gamma_grad, c.clone()), tensor(beta_grad, c))
}

// burn-backend 0.22.1's defaults (`ModuleOps::batch_norm`, `batch_norm_train` and
// `batch_norm_train_backward` in backend/ops/modules/base.rs), unchanged but for their names.

fn default_batch_norm<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    mean: FloatTensor<B>,
    variance: FloatTensor<B>,
    epsilon: f64,
) -> FloatTensor<B> {
    let rank = x.shape().num_dims();
    let channels = x.shape()[1];
    let mut dimensions = alloc::vec![1; rank];
    dimensions[1] = channels;
    let shape = Shape::from(dimensions);
    let gamma = B::float_reshape(gamma, shape.clone());
    let beta = B::float_reshape(beta, shape.clone());
    let mean = B::float_reshape(mean, shape.clone());
    let variance = B::float_reshape(variance, shape);
    let std = B::float_sqrt(B::float_add_scalar(variance, Scalar::Float(epsilon)));
    let normalized = B::float_div(B::float_sub(x, mean), std);
    B::float_add(B::float_mul(normalized, gamma), beta)
}

fn default_batch_norm_train<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    epsilon: f64,
) -> BatchNormTrain<B> {
    let shape = x.shape();
    let channels = shape[1];
    let samples_per_channel = shape.num_elements() / channels;
    let flattened = Shape::new([channels, samples_per_channel]);
    let mut per_channel = alloc::vec![1; shape.num_dims()];
    per_channel[1] = channels;

    // Use mean directly to avoid overflowing intermediate sums in f16.
    let mean = B::float_mean_dim(
        B::float_reshape(B::float_swap_dims(x.clone(), 0, 1), flattened.clone()),
        1,
    );
    let mean = B::float_reshape(mean, Shape::from(per_channel));
    let centered = B::float_sub(x.clone(), mean.clone());
    let variance = B::float_mean_dim(
        B::float_reshape(
            B::float_swap_dims(B::float_mul(centered.clone(), centered), 0, 1),
            flattened,
        ),
        1,
    );
    let mean = B::float_reshape(mean, Shape::new([channels]));
    let variance = B::float_reshape(variance, Shape::new([channels]));
    let output = B::batch_norm(x, gamma, beta, mean.clone(), variance.clone(), epsilon);

    BatchNormTrain::new(output, mean, variance)
}

fn default_batch_norm_train_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    mean: FloatTensor<B>,
    variance: FloatTensor<B>,
    epsilon: f64,
    output_grad: FloatTensor<B>,
) -> BatchNormTrainBackward<B> {
    let shape = x.shape();
    let rank = shape.num_dims();
    let channels = shape[1];
    let flattened = Shape::new([channels, shape.num_elements() / channels]);
    let mut per_channel = alloc::vec![1; rank];
    per_channel[1] = channels;
    let per_channel = Shape::from(per_channel);

    let inv_std = B::float_reshape(
        B::float_recip(B::float_sqrt(B::float_add_scalar(
            variance,
            Scalar::Float(epsilon),
        ))),
        per_channel.clone(),
    );
    let normalized = B::float_mul(
        B::float_sub(x, B::float_reshape(mean, per_channel.clone())),
        inv_std.clone(),
    );

    let output_grad_flat = B::float_reshape(
        B::float_swap_dims(output_grad.clone(), 0, 1),
        flattened.clone(),
    );
    let normalized_grad_flat = B::float_reshape(
        B::float_swap_dims(B::float_mul(output_grad.clone(), normalized.clone()), 0, 1),
        flattened,
    );
    let beta_grad = B::float_sum_dim(output_grad_flat.clone(), 1);
    let gamma_grad = B::float_sum_dim(normalized_grad_flat.clone(), 1);

    // Compute means independently: parameter-gradient sums can overflow in f16.
    let mean_grad =
        B::float_reshape(B::float_mean_dim(output_grad_flat, 1), per_channel.clone());
    let mean_normalized_grad = B::float_reshape(
        B::float_mean_dim(normalized_grad_flat, 1),
        per_channel.clone(),
    );
    let centred_grad = B::float_sub(output_grad, mean_grad);
    let projected = B::float_mul(normalized, mean_normalized_grad);
    let scale = B::float_mul(B::float_reshape(gamma, per_channel), inv_std);
    let x_grad = B::float_mul(scale, B::float_sub(centred_grad, projected));

    BatchNormTrainBackward::new(
        x_grad,
        B::float_reshape(gamma_grad, Shape::new([channels])),
        B::float_reshape(beta_grad, Shape::new([channels])),
    )
}
