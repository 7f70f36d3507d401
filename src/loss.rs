//! Segmentation losses on logits, every one ignoring [`IGNORE_INDEX`](crate::IGNORE_INDEX)
//! pixels: cross-entropy, soft Dice, focal, and weighted sums of them (`--loss ce+0.5*dice`).

use std::fmt;
use std::str::FromStr;

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::IGNORE_INDEX;

/// One loss term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// Cross-entropy, mean over valid pixels (weighted mean with class weights), as
    /// `F.cross_entropy(ignore_index=255)`.
    Ce,
    /// Soft Dice on softmax probabilities, per class over the whole batch and valid pixels only;
    /// `1 - dice_c` for each class present in the target (0 for absent ones), averaged over all
    /// classes: smp's `DiceLoss(mode="multiclass", ignore_index=255)`.
    Dice,
    /// Focal loss as smp's `FocalLoss(mode="multiclass", ignore_index=255)`: for each class a
    /// sigmoid one-vs-rest focal term `(1 - p_t)^γ · BCE`, mean over valid pixels, then averaged
    /// over classes (γ = 2, no α). Note it is sigmoid-based, not the softmax focal loss.
    Focal,
}

/// A weighted sum of loss terms, parsed from e.g. `ce`, `ce+0.5*dice`, `0.7*focal+dice`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossSpec {
    pub terms: Vec<(f32, LossKind)>,
}

impl Default for LossSpec {
    fn default() -> Self {
        LossSpec { terms: vec![(1.0, LossKind::Ce)] }
    }
}

impl FromStr for LossSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for part in s.split('+').map(str::trim) {
            let (w, name) = match part.split_once('*') {
                Some((w, n)) => {
                    let w: f32 = w.trim().parse().map_err(|_| format!("--loss {s:?}: bad weight {w:?} in {part:?}"))?;
                    (w, n.trim())
                }
                None => (1.0, part),
            };
            let kind = match name {
                "ce" => LossKind::Ce,
                "dice" => LossKind::Dice,
                "focal" => LossKind::Focal,
                other => return Err(format!("--loss {s:?}: expected terms ce, dice or focal, found {other:?}")),
            };
            if !w.is_finite() || w < 0.0 {
                return Err(format!("--loss {s:?}: weights must be finite and non-negative, found {w}"));
            }
            terms.push((w, kind));
        }
        Ok(LossSpec { terms })
    }
}

impl fmt::Display for LossSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .terms
            .iter()
            .map(|(w, k)| {
                let name = format!("{k:?}").to_lowercase();
                if *w == 1.0 { name } else { format!("{w}*{name}") }
            })
            .collect();
        f.write_str(&parts.join("+"))
    }
}

/// Valid-pixel mask `[N, 1, H, W]` (1 where the label is not [`IGNORE_INDEX`]) and the one-hot
/// target `[N, C, H, W]` (all zeros at ignored pixels).
fn mask_and_one_hot(target: &Tensor<3, Int>, classes: usize) -> (Tensor<4>, Tensor<4>) {
    let [n, h, w] = target.dims();
    let device = target.device();
    let t = target.clone().unsqueeze_dim::<4>(1);
    let valid = t.clone().not_equal_elem(IGNORE_INDEX as i64).float();
    let ids =
        Tensor::<1, Int>::arange(0..classes as i64, &device).reshape([1, classes, 1, 1]).expand([n, classes, h, w]);
    let one_hot = t.expand([n, classes, h, w]).equal(ids).float();
    (valid, one_hot)
}

/// Cross-entropy over valid pixels; with `class_weights`, the weighted mean
/// `Σ w_t · nll / Σ w_t` as PyTorch computes it. On the CPU it is computed fused
/// ([`cross_entropy_fused`]); elsewhere through tensor ops on the autodiff graph.
pub fn cross_entropy(logits: Tensor<4>, target: Tensor<3, Int>, class_weights: Option<&[f32]>) -> Tensor<1> {
    if logits.device().without_autodiff() == crate::model::cpu_device() {
        cross_entropy_fused(logits, target, class_weights)
    } else {
        cross_entropy_graph(logits, target, class_weights)
    }
}

/// [`cross_entropy`] as tensor ops: log-softmax, one-hot product, masked weighted mean. Every
/// op is recorded for backward (≈ 16 ms forward and backward for a `[2, 6, 256, 256]` batch
/// on the CPU, an eighth of a frozen-backbone training step; hence the fused form).
fn cross_entropy_graph(logits: Tensor<4>, target: Tensor<3, Int>, class_weights: Option<&[f32]>) -> Tensor<1> {
    let classes = logits.dims()[1];
    let (valid, one_hot) = mask_and_one_hot(&target, classes);
    let nll = log_softmax(logits, 1).mul(one_hot.clone()).sum_dim(1).neg(); // [N,1,H,W], 0 at ignored
    let weight = match class_weights {
        Some(w) => {
            let w = Tensor::<1>::from_floats(w, &nll.device()).reshape([1, classes, 1, 1]);
            one_hot.mul(w).sum_dim(1) // w_t at valid pixels, 0 at ignored
        }
        None => valid,
    };
    nll.mul(weight.clone()).sum().div(weight.sum().clamp_min(f32::MIN_POSITIVE))
}

/// [`cross_entropy`] in one parallel pass over the logits' values, as PyTorch's fused kernel
/// does: per pixel the log-sum-exp, the loss term and its gradient
/// `G = w_t · (softmax − onehot_t) / Σ w_t` (zero at ignored pixels, and at labels outside the
/// classes, as the graph form gives), computed off the autodiff graph in f32 with f64 sums. The
/// result is `L + Σ logits·G − detach(Σ logits·G)`: its value is the loss `L` exactly, and
/// backward through it hands the logits the gradient `G`.
fn cross_entropy_fused(logits: Tensor<4>, target: Tensor<3, Int>, class_weights: Option<&[f32]>) -> Tensor<1> {
    use rayon::prelude::*;
    let [n, c, h, w] = logits.dims();
    let hw = h * w;
    let device = logits.device();
    let x = logits.clone().detach().into_data().try_into_vec::<f32>().expect("float logits");
    let t: Vec<i64> = target.into_data().iter::<i64>().collect();
    let weight = |label: i64| pixel_weight(label, class_weights);
    let total: f64 = t.iter().map(|&l| weight(l) as f64).sum();
    let scale = 1.0 / total.max(f32::MIN_POSITIVE as f64);
    let mut g = vec![0f32; x.len()];
    // Pixels in parallel blocks of BLOCK; the gradient is class-major (NCHW), so each block owns
    // a pixel range of every class plane of its image. Within a block every pass runs over
    // contiguous pixels of one class plane, which the compiler vectorizes.
    const BLOCK: usize = 1024;
    let mut nll_sum = 0f64;
    for b in 0..n {
        let xb = &x[b * c * hw..][..c * hw];
        let tb = &t[b * hw..][..hw];
        let mut pieces: Vec<Vec<&mut [f32]>> = (0..hw.div_ceil(BLOCK)).map(|_| Vec::with_capacity(c)).collect();
        for plane in g[b * c * hw..][..c * hw].chunks_mut(hw) {
            for (i, piece) in plane.chunks_mut(BLOCK).enumerate() {
                pieces[i].push(piece);
            }
        }
        nll_sum += pieces
            .into_par_iter()
            .enumerate()
            .map(|(i, out)| {
                let block = Block { logits: xb, target: tb, start: i * BLOCK, plane: hw, classes: c };
                block_loss(&block, out, &weight, scale)
            })
            .sum::<f64>();
    }
    let loss = (nll_sum * scale) as f32;
    let g = Tensor::<4>::from_data(burn::tensor::TensorData::new(g, [n, c, h, w]), &device);
    let s = logits.mul(g).sum();
    s.clone().sub(s.detach()).add_scalar(loss)
}

/// The weight of a pixel labelled `label`: 0 where ignored; with class weights `w_t` (0 for a
/// label outside the classes), else 1.
fn pixel_weight(label: i64, class_weights: Option<&[f32]>) -> f32 {
    if label == IGNORE_INDEX as i64 {
        return 0.0;
    }
    match class_weights {
        Some(cw) => usize::try_from(label).ok().and_then(|l| cw.get(l).copied()).unwrap_or(0.0),
        None => 1.0,
    }
}

/// One block of pixels of one image for [`cross_entropy_fused`]: `start..start + len` of each
/// class plane (`plane` pixels each) of `logits`, with their `target` labels.
struct Block<'a> {
    logits: &'a [f32],
    target: &'a [i64],
    start: usize,
    plane: usize,
    classes: usize,
}

/// The block's weighted loss sum, with its gradient `w·scale·(softmax − onehot)` written into
/// `out` (one slice per class plane). Every pass runs over contiguous pixels of one class plane,
/// which the compiler vectorizes.
fn block_loss(b: &Block<'_>, mut out: Vec<&mut [f32]>, weight: &impl Fn(i64) -> f32, scale: f64) -> f64 {
    let (c, hw, p0) = (b.classes, b.plane, b.start);
    let (xb, tb) = (b.logits, b.target);
    let len = out[0].len();
    let plane = |k: usize| &xb[k * hw + p0..][..len];
    let mut max = plane(0).to_vec();
    for k in 1..c {
        for (m, &v) in max.iter_mut().zip(plane(k)) {
            *m = if v > *m { v } else { *m };
        }
    }
    // exp(x − max) into the gradient planes, summed per pixel.
    let mut denom = vec![0f32; len];
    for (k, e) in out.iter_mut().enumerate() {
        for (((e, &v), &m), d) in e.iter_mut().zip(plane(k)).zip(&max).zip(denom.iter_mut()) {
            *e = exp(v - m);
            *d += *e;
        }
    }
    let mut sum = 0f64;
    // Per counted pixel: its label and w·scale; gw = w·scale/Σe (0 elsewhere).
    let mut counted = Vec::with_capacity(len);
    let mut gw = vec![0f32; len];
    for j in 0..len {
        let (l, wi) = (tb[p0 + j], weight(tb[p0 + j]));
        if let Some(l) = usize::try_from(l).ok().filter(|&l| l < c && wi != 0.0) {
            let lse = max[j] + denom[j].ln();
            sum += wi as f64 * (lse - xb[l * hw + p0 + j]) as f64;
            let ws = (wi as f64 * scale) as f32;
            gw[j] = ws / denom[j];
            counted.push((j, l, ws));
        }
    }
    // G = w·scale·(e/Σe − onehot).
    for e in out.iter_mut() {
        for (e, &f) in e.iter_mut().zip(&gw) {
            *e *= f;
        }
    }
    for (j, l, ws) in counted {
        out[l][j] -= ws;
    }
    sum
}

/// `e^x` for x ≤ 0 (what a softmax needs after subtracting the maximum), branch-free so loops
/// over it vectorize (libm's `expf` is a call per element): Cephes' `expf` reduction and
/// polynomial, within 2 ulp of `f32::exp`; below −87 (e^x < 2e-38) it returns 0.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    let xc = if x < -87.0 { -87.0 } else { x };
    // n = round(x · log2 e) through the float-add rounding trick (exact for |n| < 2^22).
    let n = (xc * LOG2E + 12582912.0) - 12582912.0;
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * z + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.0 { 0.0 } else { e * scale }
}

/// Soft Dice loss (smp multiclass semantics, smooth 0, eps 1e-7).
pub fn dice(logits: Tensor<4>, target: Tensor<3, Int>) -> Tensor<1> {
    let classes = logits.dims()[1];
    let (valid, one_hot) = mask_and_one_hot(&target, classes);
    let probs = softmax(logits, 1).mul(valid);
    let sum_c = |t: Tensor<4>| t.sum_dim(0).sum_dim(2).sum_dim(3).reshape([classes]);
    let intersection = sum_c(probs.clone().mul(one_hot.clone()));
    let present = sum_c(one_hot.clone());
    let cardinality = sum_c(probs.add(one_hot));
    let score = intersection.mul_scalar(2.0).div(cardinality.clamp_min(1e-7));
    score.neg().add_scalar(1.0).mul(present.greater_elem(0.0).float()).mean()
}

/// Focal loss (smp multiclass semantics, γ = `gamma`, no α).
pub fn focal(logits: Tensor<4>, target: Tensor<3, Int>, gamma: f32) -> Tensor<1> {
    let classes = logits.dims()[1];
    let (valid, one_hot) = mask_and_one_hot(&target, classes);
    // BCE with logits, stable: max(x, 0) - x·t + log(1 + exp(-|x|))
    let bce = logits.clone().clamp_min(0.0).sub(logits.clone().mul(one_hot)).add(logits.abs().neg().exp().log1p());
    let pt = bce.clone().neg().exp();
    let term = pt.neg().add_scalar(1.0).powf_scalar(gamma).mul(bce).mul(valid.clone());
    // mean over valid pixels per class, averaged over classes
    term.sum().div(valid.sum().clamp_min(f32::MIN_POSITIVE)).div_scalar(classes as f32)
}

/// The weighted sum a [`LossSpec`] describes.
pub fn compute(spec: &LossSpec, logits: Tensor<4>, target: Tensor<3, Int>, class_weights: Option<&[f32]>) -> Tensor<1> {
    let mut total: Option<Tensor<1>> = None;
    for &(w, kind) in &spec.terms {
        let term = match kind {
            LossKind::Ce => cross_entropy(logits.clone(), target.clone(), class_weights),
            LossKind::Dice => dice(logits.clone(), target.clone()),
            LossKind::Focal => focal(logits.clone(), target.clone(), 2.0),
        }
        .mul_scalar(w);
        total = Some(match total {
            Some(t) => t.add(term),
            None => term,
        });
    }
    total.expect("a LossSpec has at least one term")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_2_ulp_of_libm() {
        let mut worst = 0f32;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let (a, b) = (exp(x), x.exp());
            worst = worst.max((a - b).abs() / b);
        }
        assert!(worst <= 2.5e-7, "relative error {worst}");
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    }

    /// The fused cross-entropy has the graph form's value and its gradient with respect to the
    /// logits, with ignored pixels, an out-of-range label and class weights.
    #[test]
    fn fused_cross_entropy_equals_the_graph_form() {
        use burn::tensor::{Distribution, TensorData};
        let device = crate::model::cpu_device().autodiff();
        let (n, c, h, w) = (2, 5, 7, 600); // 4200 pixels: more than one parallel chunk
        let logits = Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.0, 3.0), &device);
        let labels: Vec<i64> = (0..n * h * w)
            .map(|i| match i % 11 {
                0 => IGNORE_INDEX as i64,
                1 => 7, // outside the 5 classes
                k => (k * 7 % 5) as i64,
            })
            .collect();
        let target = Tensor::<3, Int>::from_data(TensorData::new(labels, [n, h, w]), &device);
        for weights in [None, Some(&[0.5f32, 2.0, 1.0, 0.0, 3.0][..])] {
            let run = |fused: bool| {
                let x = logits.clone().require_grad();
                let loss = if fused {
                    cross_entropy_fused(x.clone(), target.clone(), weights)
                } else {
                    cross_entropy_graph(x.clone(), target.clone(), weights)
                };
                let value = loss.clone().into_scalar::<f32>();
                let grad =
                    x.grad(&loss.backward()).expect("logits are tracked").into_data().try_to_vec::<f32>().unwrap();
                (value, grad)
            };
            let ((v1, g1), (v2, g2)) = (run(true), run(false));
            assert!((v1 - v2).abs() <= 1e-5 * v2.abs(), "{weights:?}: loss {v1} fused, {v2} graph");
            let gmax = g2.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = g1.iter().zip(&g2).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= 1e-5 * gmax, "{weights:?}: gradient differs by {worst} (largest {gmax})");
            assert!(g1.iter().any(|v| *v != 0.0));
        }
        // Every pixel ignored: both forms give 0 (not 0 / 0) and no gradient.
        let ignored = Tensor::<3, Int>::full([n, h, w], IGNORE_INDEX as i64, &device);
        for graph in [false, true] {
            let x = logits.clone().require_grad();
            let loss = if graph {
                cross_entropy_graph(x.clone(), ignored.clone(), None)
            } else {
                cross_entropy_fused(x.clone(), ignored.clone(), None)
            };
            assert_eq!(loss.clone().into_scalar::<f32>(), 0.0, "graph form: {graph}");
            let g = x.grad(&loss.backward()).map(|g| g.abs().max().into_scalar::<f32>()).unwrap_or(0.0);
            assert_eq!(g, 0.0, "graph form: {graph}");
        }
    }

    #[test]
    fn parses_weighted_sums() {
        let s: LossSpec = "ce+0.5*dice".parse().unwrap();
        assert_eq!(s.terms, vec![(1.0, LossKind::Ce), (0.5, LossKind::Dice)]);
        assert_eq!(s.to_string(), "ce+0.5*dice");
        assert!("ce+tversky".parse::<LossSpec>().unwrap_err().contains("found \"tversky\""));
        assert!("x*ce".parse::<LossSpec>().is_err());
        assert!("-1*ce".parse::<LossSpec>().is_err());
    }
}
