//! Pictures a person reads: the training curves (`curves.png`) and each epoch's snapshot (image,
//! ground truth, prediction side by side).

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::data::{self, Batch};
use crate::error::{Error, Result};
use crate::layout::{Layout, Normalization};
use crate::rundir::EpochMetrics;

/// Image | ground truth | prediction of the first image of `batch`, side by side.
pub fn write_snapshot(path: &Path, batch: &Batch, pred: &[u8], norm: &Normalization) -> Result<()> {
    let (h, w) = (batch.h, batch.w);
    let palette = data::voc_palette();
    let mut out = RgbImage::new(3 * w as u32, h as u32);
    for y in 0..h {
        for x in 0..w {
            let px = |c: usize| {
                let idx = match batch.layout {
                    Layout::Nchw => (c * h + y) * w + x,
                    Layout::Nhwc => (y * w + x) * 3 + c,
                };
                ((batch.images[idx] * norm.std[c] + norm.mean[c]) * 255.0).clamp(0.0, 255.0) as u8
            };
            out.put_pixel(x as u32, y as u32, Rgb([px(0), px(1), px(2)]));
            let gt = batch.masks[y * w + x];
            let gt_color = if gt == crate::IGNORE_INDEX { [255, 255, 255] } else { palette[gt as usize] };
            out.put_pixel((w + x) as u32, y as u32, Rgb(gt_color));
            out.put_pixel((2 * w + x) as u32, y as u32, Rgb(palette[pred[y * w + x] as usize]));
        }
    }
    write_png(path, &out)
}

pub fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    data::write_atomic(path, |f| img.write_to(f, image::ImageFormat::Png).map_err(std::io::Error::other))
}

/// Two panels: train (blue) and val (red) loss; val mIoU (green) on [0, 1].
pub fn plot_curves(history: &[EpochMetrics]) -> RgbImage {
    let (pw, ph, pad) = (360u32, 240u32, 20u32);
    let mut img = RgbImage::from_pixel(2 * pw, ph, Rgb([255, 255, 255]));
    let max_loss =
        history.iter().flat_map(|m| [m.train_loss, m.val_loss]).filter(|v| v.is_finite()).fold(1e-9, f64::max);
    let n = history.len().max(2) - 1;
    let to_xy = |panel: u32, i: usize, v: f64, vmax: f64| {
        let x = panel * pw + pad + ((pw - 2 * pad) as f64 * i as f64 / n as f64) as u32;
        let y = ph - pad - ((ph - 2 * pad) as f64 * (v / vmax).clamp(0.0, 1.0)) as u32;
        (x as i64, y as i64)
    };
    for panel in 0..2 {
        draw_line(
            &mut img,
            (panel * pw + pad) as i64,
            (ph - pad) as i64,
            ((panel + 1) * pw - pad) as i64,
            (ph - pad) as i64,
            [0, 0, 0],
        );
        draw_line(
            &mut img,
            (panel * pw + pad) as i64,
            pad as i64,
            (panel * pw + pad) as i64,
            (ph - pad) as i64,
            [0, 0, 0],
        );
    }
    type Series = (u32, f64, [u8; 3], fn(&EpochMetrics) -> f64);
    let series: [Series; 3] = [
        (0, max_loss, [40, 80, 220], |m| m.train_loss),
        (0, max_loss, [220, 50, 50], |m| m.val_loss),
        (1, 1.0, [30, 160, 60], |m| m.val_miou),
    ];
    for (panel, vmax, color, get) in series {
        for (i, pair) in history.windows(2).enumerate() {
            let (a, b) = (to_xy(panel, i, get(&pair[0]), vmax), to_xy(panel, i + 1, get(&pair[1]), vmax));
            draw_line(&mut img, a.0, a.1, b.0, b.1, color);
        }
        if let Some(m) = history.first() {
            let p = to_xy(panel, 0, get(m), vmax);
            draw_line(&mut img, p.0 - 1, p.1, p.0 + 1, p.1, color);
        }
    }
    img
}

fn draw_line(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, color: [u8; 3]) {
    let steps = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
    for s in 0..=steps {
        let x = x0 + (x1 - x0) * s / steps;
        let y = y0 + (y1 - y0) * s / steps;
        for (dx, dy) in [(0, 0), (0, 1), (1, 0)] {
            let (px, py) = (x + dx, y + dy);
            if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                img.put_pixel(px as u32, py as u32, Rgb(color));
            }
        }
    }
}
