//! Segmentation metrics from a confusion matrix: per-class IoU, mIoU, pixel accuracy and
//! frequency-weighted IoU, with torchvision's semantics ([`IGNORE_INDEX`] pixels excluded, classes
//! absent from both ground truth and prediction left out of the mean); and the median that
//! timings (training steps, parity runs) are reported by.

use serde::Serialize;

use crate::IGNORE_INDEX;

/// `counts[gt * classes + pred]` pixel counts.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfusionMatrix {
    pub classes: usize,
    pub counts: Vec<u64>,
}

/// What a confusion matrix says.
#[derive(Debug, Clone, Serialize)]
pub struct Scores {
    /// Mean IoU over the classes present in ground truth or prediction.
    pub miou: f64,
    pub pixel_accuracy: f64,
    pub frequency_weighted_iou: f64,
    /// IoU per class; `None` for a class absent from both ground truth and prediction.
    pub per_class_iou: Vec<Option<f64>>,
    /// Valid (non-ignored) pixels counted.
    pub pixels: u64,
}

impl ConfusionMatrix {
    pub fn new(classes: usize) -> Self {
        ConfusionMatrix { classes, counts: vec![0; classes * classes] }
    }

    /// Adds one image (or batch): `gt` labels (255 ignored) against `pred` labels. Labels
    /// outside [0, classes) in `gt` other than 255 must have been refused when loading; here
    /// they, and out-of-range predictions, are skipped.
    pub fn update(&mut self, gt: &[u8], pred: &[u8]) {
        assert_eq!(gt.len(), pred.len(), "ground truth and prediction sizes differ");
        let c = self.classes;
        for (&g, &p) in gt.iter().zip(pred) {
            if g == IGNORE_INDEX || g as usize >= c || p as usize >= c {
                continue;
            }
            self.counts[g as usize * c + p as usize] += 1;
        }
    }

    pub fn merge(&mut self, other: &ConfusionMatrix) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    pub fn scores(&self) -> Scores {
        let c = self.classes;
        let row = |i: usize| (0..c).map(|j| self.counts[i * c + j]).sum::<u64>();
        let col = |j: usize| (0..c).map(|i| self.counts[i * c + j]).sum::<u64>();
        let total: u64 = self.counts.iter().sum();
        let diag: Vec<u64> = (0..c).map(|i| self.counts[i * c + i]).collect();
        let per_class_iou: Vec<Option<f64>> = (0..c)
            .map(|i| {
                let union = row(i) + col(i) - diag[i];
                (union > 0).then(|| diag[i] as f64 / union as f64)
            })
            .collect();
        let present: Vec<f64> = per_class_iou.iter().flatten().copied().collect();
        let miou = if present.is_empty() { 0.0 } else { present.iter().sum::<f64>() / present.len() as f64 };
        let frequency_weighted_iou = if total == 0 {
            0.0
        } else {
            (0..c).filter_map(|i| per_class_iou[i].map(|iou| row(i) as f64 / total as f64 * iou)).sum()
        };
        Scores {
            miou,
            pixel_accuracy: if total == 0 { 0.0 } else { diag.iter().sum::<u64>() as f64 / total as f64 },
            frequency_weighted_iou,
            per_class_iou,
            pixels: total,
        }
    }
}

/// The median of `xs` (the mean of the middle two for an even count), `None` for none; sorts `xs`.
pub fn median(xs: &mut [f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&mut [5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 100.0]), Some(3.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn hand_computed_case_with_absent_class_and_ignored_pixels() {
        // 4 classes; class 3 appears in neither ground truth nor prediction.
        let gt = [0, 0, 1, 1, 2, 255, 255, 2];
        let pred = [0, 1, 1, 1, 2, 3, 0, 0];
        let mut cm = ConfusionMatrix::new(4);
        cm.update(&gt, &pred);
        let s = cm.scores();
        assert_eq!(s.pixels, 6);
        // class 0: tp 1, gt 2, pred 2 -> 1/3; class 1: tp 2, gt 2, pred 3 -> 2/3; class 2: tp 1, gt 2, pred 1 -> 1/2
        assert_eq!(s.per_class_iou, vec![Some(1.0 / 3.0), Some(2.0 / 3.0), Some(0.5), None]);
        assert!((s.miou - (1.0 / 3.0 + 2.0 / 3.0 + 0.5) / 3.0).abs() < 1e-12);
        assert!((s.pixel_accuracy - 4.0 / 6.0).abs() < 1e-12);
        let fw = 2.0 / 6.0 * (1.0 / 3.0) + 2.0 / 6.0 * (2.0 / 3.0) + 2.0 / 6.0 * 0.5;
        assert!((s.frequency_weighted_iou - fw).abs() < 1e-12);
    }

    #[test]
    fn class_only_predicted_counts_with_iou_zero() {
        let mut cm = ConfusionMatrix::new(3);
        cm.update(&[0, 0], &[0, 2]);
        let s = cm.scores();
        assert_eq!(s.per_class_iou, vec![Some(0.5), None, Some(0.0)]);
        assert!((s.miou - 0.25).abs() < 1e-12);
    }

    #[test]
    fn empty_matrix_is_zero_not_nan() {
        let s = ConfusionMatrix::new(2).scores();
        assert_eq!((s.miou, s.pixel_accuracy, s.pixels), (0.0, 0.0, 0));
    }
}
