//! Backward passes of 2D convolutions (segtune's patch, see `VENDORED.md`).
//!
//! Upstream burn-flex 0.22.1 leaves `conv2d_x_backward` and `conv2d_weight_backward` to
//! burn-backend's generic defaults. For a depthwise convolution (`groups == C_in == C_out`) the
//! weight gradient default loops over the groups, running one convolution whose kernel is the
//! whole output map per channel, and the input gradient goes through a grouped transposed
//! convolution: together ~10× PyTorch's time for MobileNet's depthwise layers. Here both are
//! direct loops over each channel's planes (the same multiply-adds as the forward pass), in
//! parallel over channels. Without groups, the weight gradient is im2col + one GEMM per image
//! (upstream: one GEMV per input channel for a 1×1 kernel), and a pointwise convolution's input
//! gradient one GEMM per image. Other convolutions and dtypes keep burn-backend's defaults,
//! copied below unchanged (they are `pub(crate)` there).
#![allow(clippy::single_range_in_vec_init)]

use alloc::{vec, vec::Vec};

use burn_backend::ops::conv::{calculate_padding_out, pad_asymmetric_conv_input};
use burn_backend::ops::{ConvOptions, ConvTransposeOptions};
use burn_backend::{Backend, DType, TensorMetadata, tensor::FloatTensor};
use burn_std::{Bytes, Shape, Slice};

use crate::{Flex, FlexTensor, Layout};

/// Where a 2D convolution's kernel reads: sizes, stride, begin padding and dilation per axis.
#[derive(Clone, Copy)]
struct Window {
    in_hw: [usize; 2],
    out_hw: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
}

impl Window {
    /// The input, weight and output-gradient shapes when all three are f32 and of rank 4, and
    /// the window they describe.
    fn of(x: &FlexTensor, weight: &FlexTensor, output_grad: &FlexTensor, options: &ConvOptions<2>) -> Option<(Shape, Shape, Self)> {
        let all_f32 = [x.dtype(), weight.dtype(), output_grad.dtype()].iter().all(|d| *d == DType::F32);
        let (xs, ws, gs) = (x.shape(), weight.shape(), output_grad.shape());
        if !all_f32 || xs.rank() != 4 || ws.rank() != 4 || gs.rank() != 4 {
            return None;
        }
        let window = Window {
            in_hw: [xs[2], xs[3]],
            out_hw: [gs[2], gs[3]],
            kernel: [ws[2], ws[3]],
            stride: options.stride,
            padding: options.padding_begin(),
            dilation: options.dilation,
        };
        Some((xs, ws, window))
    }

    /// The input row (or column) that output position `o` reads at kernel offset `k`, if inside.
    fn input_index(&self, axis: usize, o: usize, k: usize) -> Option<usize> {
        let i = (o * self.stride[axis] + k * self.dilation[axis]) as isize - self.padding[axis] as isize;
        (i >= 0 && (i as usize) < self.in_hw[axis]).then_some(i as usize)
    }

    /// For kernel column `kx`: the output columns `lo..hi` whose input column is inside, and the
    /// input column of `lo`.
    fn columns(&self, kx: usize) -> (usize, usize, usize) {
        let (stride, ow) = (self.stride[1], self.out_hw[1]);
        let offset = (kx * self.dilation[1]) as isize - self.padding[1] as isize;
        // Smallest o with o * stride + offset >= 0, and the first o with it >= in_w.
        let lo = if offset >= 0 { 0 } else { ((-offset) as usize).div_ceil(stride) };
        let end = self.in_hw[1] as isize - offset;
        let hi = if end <= 0 { 0 } else { (end as usize).div_ceil(stride) };
        let (lo, hi) = (lo.min(ow), hi.min(ow));
        let first = (lo as isize * stride as isize + offset).max(0) as usize;
        (lo, hi.max(lo), first)
    }
}

/// An f32 depthwise convolution (`groups == C_in == C_out > 1`, weight `[C, 1, kh, kw]`).
#[derive(Clone, Copy)]
struct Depthwise {
    batch: usize,
    channels: usize,
    win: Window,
}

impl Depthwise {
    fn of(x: &FlexTensor, weight: &FlexTensor, output_grad: &FlexTensor, options: &ConvOptions<2>) -> Option<Self> {
        let (xs, ws, win) = Window::of(x, weight, output_grad, options)?;
        let channels = xs[1];
        let depthwise = options.groups >= 2 && options.groups == channels && ws[0] == channels && ws[1] == 1;
        (depthwise && output_grad.shape()[1] == channels).then_some(Depthwise { batch: xs[0], channels, win })
    }
}

fn tensor_f32(data: Vec<f32>, dims: [usize; 4]) -> FlexTensor {
    FlexTensor::new(Bytes::from_elems(data), Layout::contiguous(Shape::from(dims.to_vec())), DType::F32)
}

/// Σ a[i] · b[i · stride], with eight partial sums so the stride-1 case vectorizes.
#[inline]
fn dot_strided(a: &[f32], b: &[f32], stride: usize) -> f32 {
    if stride == 1 {
        let b = &b[..a.len()];
        let mut acc = [0f32; 8];
        let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
        let (ar, br) = (a8.remainder(), b8.remainder());
        for (x, y) in a8.zip(b8) {
            for j in 0..8 {
                acc[j] += x[j] * y[j];
            }
        }
        let mut s: f32 = acc.iter().sum();
        for (x, y) in ar.iter().zip(br) {
            s += x * y;
        }
        s
    } else {
        a.iter().enumerate().map(|(i, v)| v * b[i * stride]).sum()
    }
}

/// Weight gradient `[C, 1, kh, kw]` of a depthwise convolution.
fn depthwise_weight_grad(d: Depthwise, x: &[f32], g: &[f32]) -> Vec<f32> {
    let win = d.win;
    let [kh, kw] = win.kernel;
    let ([h, w], [oh, ow]) = (win.in_hw, win.out_hw);
    let cols: Vec<_> = (0..kw).map(|kx| win.columns(kx)).collect();
    let mut grad = vec![0f32; d.channels * kh * kw];
    let channel = |c: usize, out: &mut [f32]| {
        for n in 0..d.batch {
            let xp = &x[(n * d.channels + c) * h * w..][..h * w];
            let gp = &g[(n * d.channels + c) * oh * ow..][..oh * ow];
            for ky in 0..kh {
                for oy in 0..oh {
                    let Some(iy) = win.input_index(0, oy, ky) else { continue };
                    let (grow, xrow) = (&gp[oy * ow..][..ow], &xp[iy * w..][..w]);
                    for (kx, &(lo, hi, first)) in cols.iter().enumerate() {
                        if hi > lo {
                            out[ky * kw + kx] += dot_strided(&grow[lo..hi], &xrow[first..], win.stride[1]);
                        }
                    }
                }
            }
        }
    };
    crate::ops::for_each_chunk(&mut grad, kh * kw, channel);
    grad
}

/// Input gradient `[N, C, H, W]` of a depthwise convolution.
fn depthwise_x_grad(d: Depthwise, weight: &[f32], g: &[f32]) -> Vec<f32> {
    let win = d.win;
    let [kh, kw] = win.kernel;
    let ([h, w], [oh, ow]) = (win.in_hw, win.out_hw);
    let sw = win.stride[1];
    let cols: Vec<_> = (0..kw).map(|kx| win.columns(kx)).collect();
    let mut grad = vec![0f32; d.batch * d.channels * h * w];
    let plane = |p: usize, out: &mut [f32]| {
        let c = p % d.channels;
        let gp = &g[p * oh * ow..][..oh * ow];
        let wc = &weight[c * kh * kw..][..kh * kw];
        for ky in 0..kh {
            for oy in 0..oh {
                let Some(iy) = win.input_index(0, oy, ky) else { continue };
                let (grow, xrow) = (&gp[oy * ow..][..ow], &mut out[iy * w..][..w]);
                for (kx, &(lo, hi, first)) in cols.iter().enumerate() {
                    let wv = wc[ky * kw + kx];
                    if hi == lo {
                        continue;
                    }
                    if sw == 1 {
                        for (o, gv) in xrow[first..][..hi - lo].iter_mut().zip(&grow[lo..hi]) {
                            *o += wv * gv;
                        }
                    } else {
                        for (i, gv) in grow[lo..hi].iter().enumerate() {
                            xrow[first + i * sw] += wv * gv;
                        }
                    }
                }
            }
        }
    };
    crate::ops::for_each_chunk(&mut grad, h * w, plane);
    grad
}

/// An f32 convolution without groups.
#[derive(Clone, Copy)]
struct Dense {
    batch: usize,
    c_in: usize,
    c_out: usize,
    win: Window,
}

impl Dense {
    fn of(x: &FlexTensor, weight: &FlexTensor, output_grad: &FlexTensor, options: &ConvOptions<2>) -> Option<Self> {
        let (xs, ws, win) = Window::of(x, weight, output_grad, options)?;
        (options.groups == 1 && ws[1] == xs[1]).then_some(Dense { batch: xs[0], c_in: xs[1], c_out: ws[0], win })
    }

    /// A 1×1 convolution reading every input pixel once: its im2col matrix is the input itself.
    fn is_pointwise(&self) -> bool {
        let w = self.win;
        w.kernel == [1, 1] && w.stride == [1, 1] && w.padding == [0, 0] && w.in_hw == w.out_hw
    }

    /// One image's im2col matrix `[c_in · kh · kw, oh · ow]` (zero where the kernel reads padding).
    fn im2col(&self, x: &[f32], col: &mut [f32]) {
        let win = self.win;
        let [kh, kw] = win.kernel;
        let ([h, w], [oh, ow]) = (win.in_hw, win.out_hw);
        let cols: Vec<_> = (0..kw).map(|kx| win.columns(kx)).collect();
        let fill = |row: usize, out: &mut [f32]| {
            let (c, ky, kx) = (row / (kh * kw), row / kw % kh, row % kw);
            let plane = &x[c * h * w..][..h * w];
            let (lo, hi, first) = cols[kx];
            out.fill(0.0);
            for oy in 0..oh {
                let Some(iy) = win.input_index(0, oy, ky) else { continue };
                let (dst, src) = (&mut out[oy * ow..][..ow], &plane[iy * w..][..w]);
                for (i, o) in dst[lo..hi].iter_mut().enumerate() {
                    *o = src[first + i * win.stride[1]];
                }
            }
        };
        crate::ops::for_each_chunk(col, oh * ow, fill);
    }
}

/// Weight gradient `[c_out, c_in, kh, kw]` of a convolution without groups: for each image, the
/// output gradient `[c_out, P]` times the transposed im2col matrix `[P, K]` (K = c_in · kh · kw,
/// one GEMM over the P = oh · ow output pixels), summed over the batch.
///
/// Both operands come with P as their contiguous axis, and gemm is slow when its right-hand
/// operand is not contiguous along its columns (7 GFLOP/s against 64 for a 6-class head's
/// `[6, 4096] · [4096, 256]`, 190 against 460 for `[256, 4096] · [4096, 304]`). So the operand
/// with fewer rows is transposed first (into `[P, rows]`): the im2col matrix when
/// c_out > K (`grad = g · colsᵀ`), else the output gradient (`gradᵀ = cols · gᵀ`, transposed
/// back at the end; both are small).
fn dense_weight_grad(d: Dense, x: &[f32], g: &[f32]) -> Vec<f32> {
    let win = d.win;
    let k = d.c_in * win.kernel[0] * win.kernel[1];
    let p = win.out_hw[0] * win.out_hw[1];
    let plane_in = d.c_in * win.in_hw[0] * win.in_hw[1];
    let transpose_cols = d.c_out > k;
    // grad[c_out, k] when the columns are transposed, gradᵀ[k, c_out] otherwise.
    let mut acc = vec![0f32; d.c_out * k];
    let mut col = if d.is_pointwise() { Vec::new() } else { vec![0f32; k * p] };
    let mut t = vec![0f32; p * if transpose_cols { k } else { d.c_out }];
    for n in 0..d.batch {
        let xn = &x[n * plane_in..][..plane_in];
        let cols: &[f32] = if d.is_pointwise() {
            xn
        } else {
            d.im2col(xn, &mut col);
            &col
        };
        let gn = &g[n * d.c_out * p..][..d.c_out * p];
        // (lhs [m, p] row-major) · (t [p, cols] row-major) into acc [m, cols].
        let (lhs, m, cols_n) = if transpose_cols {
            transpose(cols, k, p, &mut t);
            (gn, d.c_out, k)
        } else {
            transpose(gn, d.c_out, p, &mut t);
            (cols, k, d.c_out)
        };
        let _trace = crate::ops::gemm_trace("wgrad", m, cols_n, p);
        unsafe {
            gemm::gemm(
                m,
                cols_n,
                p,
                acc.as_mut_ptr(),
                1,
                cols_n as isize,
                n > 0,
                lhs.as_ptr(),
                1,
                p as isize,
                t.as_ptr(),
                1,
                cols_n as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                crate::ops::gemm_parallelism(),
            );
        }
    }
    if transpose_cols {
        acc
    } else {
        let mut grad = vec![0f32; d.c_out * k];
        transpose(&acc, k, d.c_out, &mut grad);
        grad
    }
}

/// `dst[c · rows + r] = src[r · cols + c]`: a row-major `[rows, cols]` matrix into `[cols, rows]`,
/// in 32×32 tiles, in parallel over bands of destination rows.
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const TILE: usize = 32;
    debug_assert!(src.len() == rows * cols && dst.len() == rows * cols);
    if rows == 0 || cols == 0 {
        return;
    }
    crate::ops::for_each_chunk(dst, TILE * rows, |band, out| {
        let c0 = band * TILE;
        let c_end = (c0 + TILE).min(cols);
        for r0 in (0..rows).step_by(TILE) {
            let r_end = (r0 + TILE).min(rows);
            for c in c0..c_end {
                let o = &mut out[(c - c0) * rows..][r0..r_end];
                for (r, v) in (r0..r_end).zip(o.iter_mut()) {
                    *v = src[r * cols + c];
                }
            }
        }
    });
}

/// Input gradient `[N, c_in, H, W]` of a pointwise convolution ([`Dense::is_pointwise`]): for
/// each image, the transposed weight `[c_in, c_out]` times the output gradient `[c_out, P]`.
/// The weight is transposed once up front (gemm runs 10–20 % faster on a row-major left operand).
fn pointwise_x_grad(d: Dense, weight: &[f32], g: &[f32]) -> Vec<f32> {
    let p = d.win.in_hw[0] * d.win.in_hw[1];
    let mut wt = vec![0f32; d.c_out * d.c_in];
    transpose(weight, d.c_out, d.c_in, &mut wt);
    let mut grad = vec![0f32; d.batch * d.c_in * p];
    for n in 0..d.batch {
        let gn = &g[n * d.c_out * p..][..d.c_out * p];
        let out = &mut grad[n * d.c_in * p..][..d.c_in * p];
        // out[c_in, p] = wt[c_in, c_out] · gn[c_out, p].
        let _trace = crate::ops::gemm_trace("pw_xgrad", d.c_in, p, d.c_out);
        unsafe {
            gemm::gemm(
                d.c_in,
                p,
                d.c_out,
                out.as_mut_ptr(),
                1,
                p as isize,
                false,
                wt.as_ptr(),
                1,
                d.c_out as isize,
                gn.as_ptr(),
                1,
                p as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                crate::ops::gemm_parallelism(),
            );
        }
    }
    grad
}

/// `conv2d_x_backward` for Flex: the direct depthwise kernel, one GEMM per image for pointwise
/// convolutions, else burn-backend's default.
pub(crate) fn conv2d_x_backward(
    x: FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: ConvOptions<2>,
) -> FlexTensor {
    if crate::ops::upstream_only() {
        return default_conv2d_x_backward::<Flex>(x, weight, output_grad, options);
    }
    match Depthwise::of(&x, &weight, &output_grad, &options) {
        Some(d) => {
            let (weight, g) = (weight.to_contiguous(), output_grad.to_contiguous());
            let data = depthwise_x_grad(d, weight.storage(), g.storage());
            tensor_f32(data, [d.batch, d.channels, d.win.in_hw[0], d.win.in_hw[1]])
        }
        _ => match Dense::of(&x, &weight, &output_grad, &options) {
            Some(d) if d.is_pointwise() => {
                let (weight, g) = (weight.to_contiguous(), output_grad.to_contiguous());
                let data = pointwise_x_grad(d, weight.storage(), g.storage());
                tensor_f32(data, [d.batch, d.c_in, d.win.in_hw[0], d.win.in_hw[1]])
            }
            _ => default_conv2d_x_backward::<Flex>(x, weight, output_grad, options),
        },
    }
}

/// `conv2d_weight_backward` for Flex: the direct depthwise kernel, im2col + GEMM without
/// groups, else burn-backend's default.
pub(crate) fn conv2d_weight_backward(
    x: FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: ConvOptions<2>,
) -> FlexTensor {
    if crate::ops::upstream_only() {
        return default_conv2d_weight_backward::<Flex>(x, weight, output_grad, options);
    }
    if let Some(d) = Depthwise::of(&x, &weight, &output_grad, &options) {
        let (x, g) = (x.to_contiguous(), output_grad.to_contiguous());
        let data = depthwise_weight_grad(d, x.storage(), g.storage());
        return tensor_f32(data, [d.channels, 1, d.win.kernel[0], d.win.kernel[1]]);
    }
    if let Some(d) = Dense::of(&x, &weight, &output_grad, &options) {
        let (x, g) = (x.to_contiguous(), output_grad.to_contiguous());
        let data = dense_weight_grad(d, x.storage(), g.storage());
        return tensor_f32(data, [d.c_out, d.c_in, d.win.kernel[0], d.win.kernel[1]]);
    }
    default_conv2d_weight_backward::<Flex>(x, weight, output_grad, options)
}

// burn-backend 0.22.1's defaults (backend/ops/modules/conv.rs), unchanged but for the names of
// the two entry points.

fn crop_asymmetric_input_grad<B: Backend, const N: usize>(
    grad: FloatTensor<B>,
    input_shape: &Shape,
    padding: &[(usize, usize); N],
) -> FloatTensor<B> {
    let mut ranges = input_shape
        .iter()
        .map(|&size| Slice::from(0..size))
        .collect::<Vec<_>>();
    for (dim, (begin, _)) in padding.iter().enumerate() {
        ranges[dim + 2] = Slice::from(*begin..*begin + input_shape[dim + 2]);
    }
    B::float_slice(grad, &ranges)
}

pub(crate) fn default_conv2d_x_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    options: ConvOptions<2>,
) -> FloatTensor<B> {
    if options.is_asymmetric() {
        let input_shape = x.shape();
        let padding = options.padding;
        let (x, options) = pad_asymmetric_conv_input::<B, 2>(x, options);
        let grad = conv2d_x_backward_symmetric::<B>(x, weight, output_grad, options);
        return crop_asymmetric_input_grad::<B, 2>(grad, &input_shape, &padding);
    }

    conv2d_x_backward_symmetric::<B>(x, weight, output_grad, options)
}

fn conv2d_x_backward_symmetric<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    options: ConvOptions<2>,
) -> FloatTensor<B> {
    let weight_shape = weight.shape();

    let [_batch_size, _channels_in, height_in, width_in] = x.shape().dims();
    let [_, _, height_out, width_out] = output_grad.shape().dims();
    let [_channels_out, _, kernel_size_1, kernel_size_2] = weight_shape.dims();

    let padding_1_out = calculate_padding_out(
        kernel_size_1,
        options.stride[0],
        options.padding_begin()[0],
        options.dilation[0],
        height_in,
        height_out,
    );
    let padding_2_out = calculate_padding_out(
        kernel_size_2,
        options.stride[1],
        options.padding_begin()[1],
        options.dilation[1],
        width_in,
        width_out,
    );

    B::conv_transpose2d(
        output_grad,
        weight,
        None,
        ConvTransposeOptions::new(
            options.stride,
            options.padding_begin(),
            [padding_1_out, padding_2_out],
            options.dilation,
            options.groups,
        ),
    )
}

pub(crate) fn default_conv2d_weight_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    options: ConvOptions<2>,
) -> FloatTensor<B> {
    if options.is_asymmetric() {
        let (x, options) = pad_asymmetric_conv_input::<B, 2>(x, options);
        return conv2d_weight_backward_symmetric::<B>(x, weight, output_grad, options);
    }

    conv2d_weight_backward_symmetric::<B>(x, weight, output_grad, options)
}

fn conv2d_weight_backward_symmetric<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    options: ConvOptions<2>,
) -> FloatTensor<B> {
    let weight_dtype = weight.dtype();
    let weight_shape = weight.shape();
    let weight_device = weight.device();

    match options.groups == 1 {
        true => conv2d_weight_grad_no_groups::<B>(x, output_grad, weight_shape, options),
        false => conv2d_weight_grad_groups::<B>(
            x,
            B::float_zeros(weight_shape, &weight_device, weight_dtype.into()),
            output_grad,
            options,
        ),
    }
}

fn conv2d_weight_grad_no_groups<B: Backend>(
    x: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    weight_shape: Shape,
    options: ConvOptions<2>,
) -> FloatTensor<B> {
    let x_swapped = B::float_swap_dims(x, 0, 1);
    let output_grad_swapped = B::float_swap_dims(output_grad, 0, 1);
    let weight_grad_swapped = B::conv2d(
        x_swapped,
        output_grad_swapped,
        None,
        ConvOptions::new(options.dilation, options.padding_begin(), options.stride, 1),
    );
    let mut weight_grad = B::float_swap_dims(weight_grad_swapped, 0, 1);

    if weight_grad.shape() != weight_shape {
        let slices = vec![
            Slice::from(0..weight_shape[0]),
            Slice::from(0..weight_shape[1]),
            Slice::from(0..weight_shape[2]),
            Slice::from(0..weight_shape[3]),
        ];
        weight_grad = B::float_slice(weight_grad, &slices);
    }
    weight_grad
}

fn conv2d_weight_grad_groups<B: Backend>(
    x: FloatTensor<B>,
    mut weight_grad: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    options: ConvOptions<2>,
) -> FloatTensor<B> {
    let [channels_out, increment_ci, kernel_size_1, kernel_size_2] = weight_grad.shape().dims();
    let increment_co = channels_out / options.groups;

    let x_swapped = B::float_swap_dims(x, 0, 1);
    let output_grad_swapped = B::float_swap_dims(output_grad, 0, 1);

    for g in 0..options.groups {
        let start_idx_ci = g * increment_ci;
        let end_idx_ci = (g + 1) * increment_ci;
        let start_idx_co = g * increment_co;
        let end_idx_co = (g + 1) * increment_co;

        let x_slice = vec![Slice::new(
            start_idx_ci as isize,
            Some(end_idx_ci as isize),
            1,
        )];
        let x = B::float_slice(x_swapped.clone(), &x_slice);
        let grad_slice = vec![Slice::new(
            start_idx_co as isize,
            Some(end_idx_co as isize),
            1,
        )];
        let grad = B::float_slice(output_grad_swapped.clone(), &grad_slice);
        let mut weight_grad_tmp = B::conv2d(
            x,
            grad,
            None,
            ConvOptions::new(options.dilation, options.padding_begin(), options.stride, 1),
        );
        weight_grad_tmp = B::float_swap_dims(weight_grad_tmp, 0, 1);
        let [_, _, kernel_size_1_tmp, kernel_size_2_tmp] = weight_grad_tmp.shape().dims();

        if kernel_size_1_tmp != kernel_size_1 || kernel_size_2_tmp != kernel_size_2 {
            let slices = vec![
                Slice::from(0..increment_co),
                Slice::from(0..increment_ci),
                Slice::from(0..kernel_size_1),
                Slice::from(0..kernel_size_2),
            ];
            weight_grad_tmp = B::float_slice(weight_grad_tmp, &slices);
        }

        weight_grad = B::float_slice_assign(
            weight_grad,
            &[
                Slice::from(start_idx_co..end_idx_co),
                Slice::from(0..increment_ci),
                Slice::from(0..kernel_size_1),
                Slice::from(0..kernel_size_2),
            ],
            weight_grad_tmp,
        );
    }

    weight_grad
}
