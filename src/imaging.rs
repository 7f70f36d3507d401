//! Image and logit geometry shared by `validate` and `infer`: letterboxing an image into the
//! model's input (Pillow's bilinear filter), normalizing it into an input tensor in either
//! layout, and upsampling logits back to the image's own size (half-pixel bilinear taps) fused
//! with the argmax.

use image::{GrayImage, RgbImage};
use ndarray::s;
use rayon::prelude::*;

use crate::data::mean_pixel;
use crate::layout::{Layout, Normalization};

/// Scales `image` to fit a `box_w × box_h` box, keeping its aspect ratio, and pads it with the
/// mean: to the whole box when `pad_to_box`, else each side to the model's size multiple.
/// Returns the padded image and the size of the scaled image inside it.
pub fn letterbox(
    image: &RgbImage,
    (box_w, box_h): (usize, usize),
    pad_to_box: bool,
    norm: &Normalization,
) -> (RgbImage, (usize, usize)) {
    let (w, h) = image.dimensions();
    let scale = (box_w as f32 / w as f32).min(box_h as f32 / h as f32);
    let (nw, nh) = (
        ((w as f32 * scale).round() as u32).clamp(1, box_w as u32),
        ((h as f32 * scale).round() as u32).clamp(1, box_h as u32),
    );
    let m = norm.size_multiple as u32;
    let (pw, ph) = if pad_to_box { (box_w as u32, box_h as u32) } else { (nw.div_ceil(m) * m, nh.div_ceil(m) * m) };
    let mut out = RgbImage::from_pixel(pw, ph, mean_pixel(norm));
    let resized = resize_bilinear(image, nw, nh);
    image::imageops::replace(&mut out, &resized, 0, 0);
    (out, (nw as usize, nh as usize))
}

/// `image` scaled to `w × h` with Pillow's bilinear filter (a triangle over the source pixels a
/// target pixel covers, so downscaling averages): SIMD, through fast_image_resize.
pub fn resize_bilinear(image: &RgbImage, w: u32, h: u32) -> RgbImage {
    use fast_image_resize as fr;
    if image.dimensions() == (w, h) {
        return image.clone();
    }
    let src = fr::images::ImageRef::new(image.width(), image.height(), image.as_raw(), fr::PixelType::U8x3)
        .expect("an RgbImage's buffer holds width × height × 3 bytes");
    let mut dst = fr::images::Image::new(w, h, fr::PixelType::U8x3);
    let options = fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    fr::Resizer::new().resize(&src, &mut dst, &options).expect("same pixel type, non-empty sizes");
    RgbImage::from_raw(w, h, dst.into_vec()).expect("size matches")
}

/// The two source taps and the second one's weight of each of `out` positions resampled from
/// `len` with half-pixel centres (`src = (i + 0.5) · len / out − 0.5`, clamped to the edges), as
/// PyTorch's `interpolate(mode="bilinear", align_corners=False)` and onnxruntime's Resize take them.
pub fn bilinear_taps(out: usize, len: usize) -> Vec<(usize, usize, f32)> {
    let scale = len as f32 / out as f32;
    (0..out)
        .map(|i| {
            let f = ((i as f32 + 0.5) * scale - 0.5).clamp(0.0, len.saturating_sub(1) as f32);
            let i0 = f.floor() as usize;
            (i0, (i0 + 1).min(len.saturating_sub(1)), f - i0 as f32)
        })
        .collect()
}

/// A source pixel whose highest class is not strictly above all the others ([`source_labels`]).
const TIED: u8 = u8::MAX;

/// Bilinear (half-pixel) upsampling of `logits[.., :ih, :iw]` of one image to `w × h`, fused
/// with the argmax over classes (ties go to the lower class).
///
/// Where the four source pixels an output pixel blends all have the same class strictly above
/// the others, so has their blend (the weights are the same for every class and non-negative,
/// and rounded sums and products are monotone), and that class is the answer without blending
/// the scores: only pixels near a class boundary are blended ([`blended_argmax`]). The result is
/// the full blend's argmax except where rounding makes two classes' blends exactly equal.
pub fn upsample_argmax(logits: ndarray::ArrayView3<'_, f32>, inner: (usize, usize), w: usize, h: usize) -> GrayImage {
    let logits = logits.as_standard_layout();
    let scores = Planes::new(&logits);
    let (iw, ih) = inner;
    let labels = source_labels(&scores, iw, ih);
    let (xs, ys) = (bilinear_taps(w, iw), bilinear_taps(h, ih));
    let mut mask = vec![0u8; w * h];
    mask.par_chunks_mut(w.max(1)).zip(&ys).for_each(|(out, &ty)| {
        let (r0, r1) = (&labels[ty.0 * iw..][..iw], &labels[ty.1 * iw..][..iw]);
        for (o, &tx) in out.iter_mut().zip(&xs) {
            let l = r0[tx.0];
            let same = l != TIED && r0[tx.1] == l && r1[tx.0] == l && r1[tx.1] == l;
            *o = if same { l } else { blended_argmax(&scores, ty, tx) };
        }
    });
    GrayImage::from_raw(w as u32, h as u32, mask).expect("size matches")
}

/// `[classes, H, W]` scores in standard layout, read by class plane.
struct Planes<'a> {
    data: &'a [f32],
    classes: usize,
    plane: usize,
    width: usize,
}

impl<'a> Planes<'a> {
    fn new(logits: &'a ndarray::CowArray<'_, f32, ndarray::Ix3>) -> Self {
        let (classes, lh, width) = logits.dim();
        Planes { data: logits.as_slice().expect("standard layout is contiguous"), classes, plane: lh * width, width }
    }

    /// Row `y`'s first `n` scores of class `k`.
    fn row(&self, k: usize, y: usize, n: usize) -> &[f32] {
        &self.data[k * self.plane + y * self.width..][..n]
    }

    /// The score of class `k` at `(x, y)`.
    fn at(&self, k: usize, y: usize, x: usize) -> f32 {
        self.data[k * self.plane + y * self.width + x]
    }
}

/// Rows of source pixels labelled together by [`source_labels`]: a band's scores (8 rows of
/// 512 pixels of 21 classes: 344 KB) stay in the L2 cache from its first pass to its second.
const BAND: usize = 8;

/// Each source pixel's class in `[:ih, :iw]`, or [`TIED`] where no class is strictly above the
/// others. Band by band: the highest score of each pixel, then the classes that reach it
/// (lowest last, so it stays); loops of selects over contiguous rows, which vectorize.
fn source_labels(scores: &Planes<'_>, iw: usize, ih: usize) -> Vec<u8> {
    let mut labels = vec![0u8; iw * ih];
    labels.par_chunks_mut((iw * BAND).max(1)).enumerate().for_each_init(
        || (vec![0f32; iw * BAND], vec![0u32; iw * BAND], vec![0u32; iw * BAND]),
        |(best, label, reach), (band, out)| {
            let n = out.len();
            let (best, label, reach) = (&mut best[..n], &mut label[..n], &mut reach[..n]);
            let rows = |k: usize| (0..n / iw).map(move |r| scores.row(k, band * BAND + r, iw));
            best.fill(f32::NEG_INFINITY);
            for k in 0..scores.classes {
                for (best, row) in best.chunks_exact_mut(iw).zip(rows(k)) {
                    for (b, &v) in best.iter_mut().zip(row) {
                        *b = if v > *b { v } else { *b };
                    }
                }
            }
            reach.fill(0);
            for k in (0..scores.classes).rev() {
                let bands = best.chunks_exact(iw).zip(reach.chunks_exact_mut(iw)).zip(label.chunks_exact_mut(iw));
                for (((best, reach), label), row) in bands.zip(rows(k)) {
                    for (((&v, &b), r), l) in row.iter().zip(best).zip(reach.iter_mut()).zip(label.iter_mut()) {
                        let at = (v == b) as u32;
                        *r += at;
                        *l = if at != 0 { k as u32 } else { *l };
                    }
                }
            }
            for ((o, &l), &n) in out.iter_mut().zip(label.iter()).zip(reach.iter()) {
                *o = if n != 1 || l >= TIED as u32 { TIED } else { l as u8 };
            }
        },
    );
    labels
}

/// The argmax over classes of the bilinear blend of one output pixel's four source pixels
/// (`ty`, `tx`: [`bilinear_taps`]); rows first, then columns; ties go to the lower class.
fn blended_argmax(scores: &Planes<'_>, ty: (usize, usize, f32), tx: (usize, usize, f32)) -> u8 {
    let ((y0, y1, fy), (x0, x1, fx)) = (ty, tx);
    let mut best = (0u8, f32::NEG_INFINITY);
    for k in 0..scores.classes {
        let a = (1.0 - fy) * scores.at(k, y0, x0) + fy * scores.at(k, y1, x0);
        let b = (1.0 - fy) * scores.at(k, y0, x1) + fy * scores.at(k, y1, x1);
        let v = (1.0 - fx) * a + fx * b;
        if v > best.1 {
            best = (k as u8, v);
        }
    }
    best.0
}

/// Writes `image` normalized into `dst` (`[3, H, W]` for NCHW, `[H, W, 3]` for NHWC, at least
/// the image's size; the rest is left as it is).
pub fn normalize_into(mut dst: ndarray::ArrayViewMut3<'_, f32>, image: &RgbImage, norm: &Normalization) {
    let lut: [[f32; 256]; 3] =
        std::array::from_fn(|c| std::array::from_fn(|v| (v as f32 / 255.0 - norm.mean[c]) / norm.std[c]));
    let (w, h) = (image.width() as usize, image.height() as usize);
    for (y, src) in image.as_raw().chunks_exact(w * 3).enumerate().take(h) {
        match norm.layout {
            Layout::Nchw => {
                for (c, lut) in lut.iter().enumerate() {
                    let mut row = dst.slice_mut(s![c, y, ..w]);
                    for (o, px) in row.iter_mut().zip(src.chunks_exact(3)) {
                        *o = lut[px[c] as usize];
                    }
                }
            }
            Layout::Nhwc => {
                let mut row = dst.slice_mut(s![y, ..w, ..]);
                for (mut o, px) in row.outer_iter_mut().zip(src.chunks_exact(3)) {
                    for c in 0..3 {
                        o[c] = lut[c][px[c] as usize];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use std::path::Path;

    #[test]
    fn upsampling_a_constant_argmax_keeps_it_and_splits_halves() {
        // 2 classes on a 2x2 input: class 1 wins on the right column.
        let logits = ndarray::Array3::from_shape_vec((2, 2, 2), vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]).unwrap();
        let m = upsample_argmax(logits.view(), (2, 2), 8, 4);
        assert_eq!(m.dimensions(), (8, 4));
        assert_eq!(m.get_pixel(0, 0)[0], 0);
        assert_eq!(m.get_pixel(7, 3)[0], 1);
        assert_eq!((0..8).filter(|&x| m.get_pixel(x, 0)[0] == 1).count(), 4);
    }

    #[test]
    fn separable_upsampling_matches_the_direct_bilinear_formula() {
        // 5 classes on a 9×7 crop of an 11×8 logits map, up to 23×17: every output pixel's
        // argmax equals the one of the four-tap formula evaluated directly.
        let (c, lh, lw, iw, ih, w, h) = (5, 8, 11, 9, 7, 23, 17);
        let mut state = 12345u32;
        let logits = ndarray::Array3::from_shape_fn((c, lh, lw), |_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32
        });
        let m = upsample_argmax(logits.view(), (iw, ih), w, h);
        let coords = |i: usize, scale: f32, max: usize| {
            let f = ((i as f32 + 0.5) * scale - 0.5).clamp(0.0, (max - 1) as f32);
            let i0 = f.floor() as usize;
            (i0, (i0 + 1).min(max - 1), f as f64 - i0 as f64)
        };
        for y in 0..h {
            let (y0, y1, fy) = coords(y, ih as f32 / h as f32, ih);
            for x in 0..w {
                let (x0, x1, fx) = coords(x, iw as f32 / w as f32, iw);
                let v = |k: usize| {
                    let l = |yy: usize, xx: usize| logits[[k, yy, xx]] as f64;
                    (1.0 - fy) * ((1.0 - fx) * l(y0, x0) + fx * l(y0, x1))
                        + fy * ((1.0 - fx) * l(y1, x0) + fx * l(y1, x1))
                };
                let best = (0..c).fold(0, |b, k| if v(k) > v(b) { k } else { b });
                assert_eq!(m.get_pixel(x as u32, y as u32)[0] as usize, best, "pixel ({x}, {y})");
            }
        }
    }

    #[test]
    fn the_region_shortcut_gives_the_full_blends_argmax() {
        // 4 classes in blobs (a winner per source pixel, noisy runners-up), two planes tied
        // along a stripe: down, up and to the same size, every pixel equals the blend of all.
        let (c, lh, lw) = (4, 30, 40);
        let mut state = 7u32;
        let logits = ndarray::Array3::from_shape_fn((c, lh, lw), |(k, y, x)| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let winner = ((x / 9 + y / 7) % c == k) as u8 as f32 * 3.0;
            if y == 12 && k < 2 { 5.0 } else { winner + (state >> 8) as f32 / (1u32 << 24) as f32 }
        });
        let logits = logits.as_standard_layout();
        let scores = Planes::new(&logits);
        for (iw, ih, w, h) in [(37, 29, 23, 17), (37, 29, 111, 64), (40, 30, 40, 30)] {
            let m = upsample_argmax(logits.view(), (iw, ih), w, h);
            let labels = source_labels(&scores, iw, ih);
            let (xs, ys) = (bilinear_taps(w, iw), bilinear_taps(h, ih));
            let mut shortcut = 0;
            for (y, &ty) in ys.iter().enumerate() {
                for (x, &tx) in xs.iter().enumerate() {
                    assert_eq!(m.get_pixel(x as u32, y as u32)[0], blended_argmax(&scores, ty, tx), "({x}, {y})");
                    let corners =
                        [(ty.0, tx.0), (ty.0, tx.1), (ty.1, tx.0), (ty.1, tx.1)].map(|(y, x)| labels[y * iw + x]);
                    shortcut += (corners[0] != TIED && corners.iter().all(|&l| l == corners[0])) as usize;
                }
            }
            assert!(shortcut > w * h / 2 && shortcut < w * h, "{shortcut} of {} by the shortcut", w * h);
            assert!(labels[12 * iw..13 * iw].iter().all(|&l| l == TIED), "the tied stripe");
            assert!(labels[..12 * iw].iter().all(|&l| l != TIED), "strict winners above it");
        }
    }

    #[test]
    fn half_pixel_taps_match_pytorchs_bilinear_coordinates() {
        // interpolate(size=5, mode="bilinear", align_corners=False) from 2: src = (i + 0.5) · 0.4 − 0.5.
        let taps = bilinear_taps(5, 2);
        let want = [(0, 1, 0.0), (0, 1, 0.1), (0, 1, 0.5), (0, 1, 0.9), (1, 1, 0.0)];
        for ((a0, a1, af), (b0, b1, bf)) in taps.into_iter().zip(want) {
            assert_eq!((a0, a1), (b0, b1));
            assert!((af - bf).abs() < 1e-6, "{af} vs {bf}");
        }
        assert_eq!(bilinear_taps(3, 3), vec![(0, 1, 0.0), (1, 2, 0.0), (2, 2, 0.0)]);
    }

    #[test]
    fn normalization_writes_either_layout_and_leaves_the_padding() {
        let img = RgbImage::from_fn(3, 2, |x, y| Rgb([x as u8 * 100, y as u8 * 200, 7]));
        for layout in [Layout::Nchw, Layout::Nhwc] {
            let norm = Normalization { layout, ..Normalization::IMAGENET };
            let mut dst = match layout {
                Layout::Nchw => ndarray::Array3::<f32>::from_elem((3, 4, 5), 9.0),
                Layout::Nhwc => ndarray::Array3::<f32>::from_elem((4, 5, 3), 9.0),
            };
            normalize_into(dst.view_mut(), &img, &norm);
            for (x, y, px) in img.enumerate_pixels() {
                for c in 0..3 {
                    let want = (px[c] as f32 / 255.0 - norm.mean[c]) / norm.std[c];
                    let got = match layout {
                        Layout::Nchw => dst[[c, y as usize, x as usize]],
                        Layout::Nhwc => dst[[y as usize, x as usize, c]],
                    };
                    assert_eq!(got, want, "{layout:?} ({x}, {y}) channel {c}");
                }
            }
            assert_eq!(dst.iter().filter(|&&v| v == 9.0).count(), 3 * (4 * 5 - 3 * 2), "{layout:?}");
        }
    }

    #[test]
    fn resizing_matches_pillows_bilinear_filter() {
        // tests/fixtures/resize.json, made by scripts/make_resize_fixture.py with Pillow 13.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resize.json");
        let f: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let image = |v: &serde_json::Value| {
            let px: Vec<u8> = v["pixels"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap() as u8).collect();
            RgbImage::from_raw(v["width"].as_u64().unwrap() as u32, v["height"].as_u64().unwrap() as u32, px).unwrap()
        };
        let src = image(&f);
        for want in f["resized"].as_array().unwrap().iter().map(image) {
            let got = resize_bilinear(&src, want.width(), want.height());
            let worst = got.as_raw().iter().zip(want.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
            assert!(worst <= 1, "{:?}: differs from Pillow by up to {worst} levels", want.dimensions());
        }
    }

    #[test]
    fn letterbox_keeps_aspect_and_pads_with_the_mean() {
        let norm = Normalization::IMAGENET;
        let (img, inner) = letterbox(&RgbImage::from_pixel(100, 50, Rgb([0, 0, 0])), (64, 64), true, &norm);
        assert_eq!((img.dimensions(), inner), ((64, 64), (64, 32)));
        assert_eq!(*img.get_pixel(0, 63), mean_pixel(&norm));
        assert_eq!(*img.get_pixel(0, 0), Rgb([0, 0, 0]));
        // Aspect kept: only up to the size multiple (16): 100×70 → 64×45 → 64×48.
        let (img, inner) = letterbox(&RgbImage::from_pixel(100, 70, Rgb([0, 0, 0])), (64, 64), false, &norm);
        assert_eq!((img.dimensions(), inner), ((64, 48), (64, 45)));
        assert_eq!(*img.get_pixel(0, 47), mean_pixel(&norm));
        assert_eq!(*img.get_pixel(63, 44), Rgb([0, 0, 0]));
        // A fixed 32×96 (h × w) box: the 100×50 image fits its height, 64×32 inside 96×32.
        let (img, inner) = letterbox(&RgbImage::from_pixel(100, 50, Rgb([0, 0, 0])), (96, 32), true, &norm);
        assert_eq!((img.dimensions(), inner), ((96, 32), (64, 32)));
    }
}
