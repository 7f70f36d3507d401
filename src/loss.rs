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
/// `Σ w_t · nll / Σ w_t` as PyTorch computes it.
pub fn cross_entropy(logits: Tensor<4>, target: Tensor<3, Int>, class_weights: Option<&[f32]>) -> Tensor<1> {
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
    fn parses_weighted_sums() {
        let s: LossSpec = "ce+0.5*dice".parse().unwrap();
        assert_eq!(s.terms, vec![(1.0, LossKind::Ce), (0.5, LossKind::Dice)]);
        assert_eq!(s.to_string(), "ce+0.5*dice");
        assert!("ce+tversky".parse::<LossSpec>().unwrap_err().contains("found \"tversky\""));
        assert!("x*ce".parse::<LossSpec>().is_err());
        assert!("-1*ce".parse::<LossSpec>().is_err());
    }
}
