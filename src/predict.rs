//! One image's class scores beyond a single forward pass, for `validate` and `infer`:
//! sliding-window tiles whose overlapping logits are averaged (MMSeg's slide mode), and
//! multi-scale + flip test-time augmentation averaging the softmax (the DeepLab papers'
//! evaluation). Scores come back at the prepared input's resolution, as one run's logits do.

use image::RgbImage;
use ndarray::{Array3, Array4, ArrayView3, Axis, s};

use crate::error::{Error, Result};
use crate::layout::Normalization;
use crate::runtime::OrtModel;

/// `--tile`, `--overlap`, `--scales`, `--flip` (validate and infer).
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct TestTimeArgs {
    /// Run inputs larger than N × N as N × N tiles (N a multiple of the model's size multiple),
    /// averaging the logits where tiles overlap, as MMSeg's slide mode: onnxruntime's memory is
    /// then that of one tile, whatever the image's size.
    #[arg(long, value_name = "N")]
    pub tile: Option<usize>,
    /// The share of a tile its neighbour overlaps with --tile (MMSeg's 512 / 341: 1/3).
    #[arg(long, default_value_t = DEFAULT_OVERLAP, value_name = "F")]
    pub overlap: f64,
    /// Test-time scales, e.g. 0.5,0.75,1.0,1.25,1.5,1.75: each image at each scale (of its
    /// prepared input), the softmax averaged [default: 1 alone].
    #[arg(long, value_delimiter = ',', value_name = "S,...")]
    pub scales: Vec<f64>,
    /// Also each scale mirrored left-right, its softmax mirrored back into the average.
    #[arg(long)]
    pub flip: bool,
}

/// MMSeg's: a 512 tile every 341 pixels.
pub const DEFAULT_OVERLAP: f64 = 1.0 / 3.0;

impl Default for TestTimeArgs {
    fn default() -> Self {
        TestTimeArgs { tile: None, overlap: DEFAULT_OVERLAP, scales: vec![], flip: false }
    }
}

impl TestTimeArgs {
    /// No augmentation: one view of each image (tiled or not).
    pub fn single_view(&self) -> bool {
        !self.flip && self.scales.iter().all(|&s| s == 1.0) && self.scales.len() <= 1
    }

    /// Nothing beyond one forward pass per image.
    pub fn is_plain(&self) -> bool {
        self.tile.is_none() && self.single_view()
    }

    /// Refuses a tile that is no multiple of `multiple`, an overlap outside [0, 0.9] and a scale
    /// outside (0, 4].
    pub fn check(&self, multiple: usize) -> Result<()> {
        if let Some(t) = self.tile.filter(|&t| t == 0 || t % multiple != 0) {
            return Err(Error::BadArgument(format!(
                "--tile {t}: expected a positive multiple of {multiple}, the model's size multiple"
            )));
        }
        if !(0.0..=0.9).contains(&self.overlap) {
            return Err(Error::BadArgument(format!("--overlap {}: expected a share in [0, 0.9]", self.overlap)));
        }
        if let Some(s) = self.scales.iter().find(|&&s| !(s > 0.0 && s <= 4.0)) {
            return Err(Error::BadArgument(format!("--scales: {s} is outside (0, 4]")));
        }
        Ok(())
    }

    /// What it does, for reports: "tiles of 512 overlapping by 0.33; scales 0.5,1 with flips".
    pub fn describe(&self) -> String {
        let mut parts = vec![];
        if let Some(t) = self.tile {
            parts.push(format!("tiles of {t}×{t} overlapping by {:.2}, logits averaged", self.overlap));
        }
        if !self.single_view() {
            let scales: Vec<String> = self.scales().iter().map(|s| s.to_string()).collect();
            let flip = if self.flip { " with left-right flips" } else { "" };
            parts.push(format!("scales {}{flip}, softmax averaged", scales.join(",")));
        }
        parts.join("; ")
    }

    fn scales(&self) -> Vec<f64> {
        if self.scales.is_empty() { vec![1.0] } else { self.scales.clone() }
    }
}

/// The first `n` tile origins along a side of `len` pixels: tiles of `tile` every `stride`, the
/// last one ending at `len`.
pub fn tile_starts(len: usize, tile: usize, stride: usize) -> Vec<usize> {
    if len <= tile {
        return vec![0];
    }
    let n = (len - tile).div_ceil(stride) + 1;
    (0..n).map(|i| (i * stride).min(len - tile)).collect()
}

/// The step between tiles of `tile` overlapping by `overlap`: a multiple of `multiple`, at
/// least one.
fn tile_stride(tile: usize, overlap: f64, multiple: usize) -> usize {
    ((tile as f64 * (1.0 - overlap)) as usize / multiple * multiple).max(multiple)
}

/// `input`'s logits (`[classes, H, W]`): one run, or with `tile`, one run per tile and their
/// average where they overlap.
pub fn forward(
    session: &mut OrtModel,
    norm: &Normalization,
    input: &RgbImage,
    tile: Option<usize>,
    overlap: f64,
) -> Result<Array3<f32>> {
    let (w, h) = (input.width() as usize, input.height() as usize);
    let Some(t) = tile.filter(|&t| w > t || h > t) else { return run(session, norm, input) };
    let stride = tile_stride(t, overlap, norm.size_multiple);
    let (tw, th) = (t.min(w), t.min(h));
    let mut sum: Option<Array3<f32>> = None;
    let mut count = ndarray::Array2::<f32>::zeros((h, w));
    for y in tile_starts(h, th, stride) {
        for x in tile_starts(w, tw, stride) {
            let crop = image::imageops::crop_imm(input, x as u32, y as u32, tw as u32, th as u32).to_image();
            let logits = run(session, norm, &crop)?;
            let acc = sum.get_or_insert_with(|| Array3::zeros((logits.dim().0, h, w)));
            let mut region = acc.slice_mut(s![.., y..y + th, x..x + tw]);
            region += &logits;
            count.slice_mut(s![y..y + th, x..x + tw]).mapv_inplace(|c| c + 1.0);
        }
    }
    let mut sum = sum.expect("at least one tile");
    for mut channel in sum.axis_iter_mut(Axis(0)) {
        channel /= &count;
    }
    Ok(sum)
}

/// The argmax mask of `input`'s tiled logits (as [`forward`] averages them), row band by row
/// band: only one band of tiles' logits is held at a time, so memory grows with the tile and the
/// width, not with the height. Ties go to the lower class; logits without `classes` channels
/// are refused.
pub fn tiled_mask(
    session: &mut OrtModel,
    norm: &Normalization,
    input: &RgbImage,
    tile: usize,
    overlap: f64,
    classes: usize,
) -> Result<image::GrayImage> {
    let (w, h) = (input.width() as usize, input.height() as usize);
    let stride = tile_stride(tile, overlap, norm.size_multiple);
    let (tw, th) = (tile.min(w), tile.min(h));
    let ys = tile_starts(h, th, stride);
    let mut mask = vec![0u8; w * h];
    // Rows [y, y + th) of the tiles' summed logits. Every class of a pixel is summed over the
    // same tiles, so the argmax of the sum is that of the average: no counts are needed.
    let mut band: Option<Array3<f32>> = None;
    for (i, &y) in ys.iter().enumerate() {
        for x in tile_starts(w, tw, stride) {
            let crop = image::imageops::crop_imm(input, x as u32, y as u32, tw as u32, th as u32).to_image();
            let logits = run(session, norm, &crop)?;
            crate::runtime::check_channels(logits.dim().0, classes, session.origin())?;
            let b = band.get_or_insert_with(|| Array3::zeros((logits.dim().0, th, w)));
            let mut region = b.slice_mut(s![.., .., x..x + tw]);
            region += &logits;
        }
        let b = band.as_mut().expect("a band after its tiles");
        // Rows above the next band's top are final.
        let next = ys.get(i + 1).copied().unwrap_or(y + th);
        let done = b.slice(s![.., ..next - y, ..]).insert_axis(Axis(0));
        mask[y * w..next * w].copy_from_slice(&crate::tensors::argmax_classes(done));
        shift_up(b, next - y);
    }
    Ok(image::GrayImage::from_raw(w as u32, h as u32, mask).expect("size matches"))
}

/// Moves rows `[by, ..)` of the band to the top and zeroes the rest.
fn shift_up(band: &mut Array3<f32>, by: usize) {
    let rows = band.dim().1;
    for r in 0..rows {
        if r + by < rows {
            let moved = band.slice(s![.., r + by, ..]).to_owned();
            band.slice_mut(s![.., r, ..]).assign(&moved);
        } else {
            band.slice_mut(s![.., r, ..]).fill(0.0);
        }
    }
}

/// An image prepared by the test-time pipeline (`Pipeline::prepare`): the model input, the size
/// of the image inside it, and the size of the mask wanted (the image's own).
pub struct Prepared<'a> {
    pub input: &'a RgbImage,
    pub inner: (usize, usize),
    pub size: (u32, u32),
}

/// A prepared image's mask at its own size through tiles, as [`tiled_mask`] computes it on the
/// prepared input: the part holding the image, resized (nearest) to the image's size where the
/// pipeline scaled it (at native resolution it is the image's own).
pub fn tiled_image_mask(
    session: &mut OrtModel,
    norm: &Normalization,
    prepared: &Prepared<'_>,
    (tile, overlap): (usize, f64),
    classes: usize,
) -> Result<image::GrayImage> {
    let (iw, ih) = prepared.inner;
    let mask = tiled_mask(session, norm, prepared.input, tile, overlap, classes)?;
    let inner = image::imageops::crop_imm(&mask, 0, 0, iw as u32, ih as u32).to_image();
    let (w, h) = prepared.size;
    Ok(if (iw as u32, ih as u32) == (w, h) {
        inner
    } else {
        image::imageops::resize(&inner, w, h, image::imageops::FilterType::Nearest)
    })
}

fn run(session: &mut OrtModel, norm: &Normalization, input: &RgbImage) -> Result<Array3<f32>> {
    let (w, h) = (input.width() as usize, input.height() as usize);
    let mut x = Array4::<f32>::zeros(norm.layout.shape(1, h, w));
    crate::imaging::normalize_into(x.index_axis_mut(Axis(0), 0), input, norm);
    Ok(session.run_logits(x.view(), norm.layout)?.index_axis_move(Axis(0), 0))
}

/// A prepared image's class scores at its input's resolution (`base`, the image inside it
/// `inner`), and `inner`: the logits of one view (tiled with `--tile`), or, with scales or
/// flips, the softmax of every view resized to that resolution and averaged.
pub fn scores(
    session: &mut OrtModel,
    norm: &Normalization,
    base: &RgbImage,
    inner: (usize, usize),
    tt: &TestTimeArgs,
) -> Result<(Array3<f32>, (usize, usize))> {
    if tt.single_view() {
        return Ok((forward(session, norm, base, tt.tile, tt.overlap)?, inner));
    }
    let (iw, ih) = inner;
    let content = image::imageops::crop_imm(base, 0, 0, iw as u32, ih as u32).to_image();
    let mut acc: Option<Array3<f32>> = None;
    let mut views = 0;
    for scale in tt.scales() {
        let (sw, sh) = (((iw as f64 * scale).round() as usize).max(1), ((ih as f64 * scale).round() as usize).max(1));
        let scaled = crate::imaging::resize_bilinear(&content, sw as u32, sh as u32);
        for flip in [false, true].into_iter().take(if tt.flip { 2 } else { 1 }) {
            let view = if flip { image::imageops::flip_horizontal(&scaled) } else { scaled.clone() };
            let logits = forward(session, norm, &padded(&view, norm), tt.tile, tt.overlap)?;
            let mut part = logits.slice(s![.., ..sh, ..sw]);
            if flip {
                part.invert_axis(Axis(2));
            }
            let probs = resize_scores(softmax(part).view(), iw, ih);
            let acc = acc
                .get_or_insert_with(|| Array3::zeros((probs.dim().0, base.height() as usize, base.width() as usize)));
            let mut region = acc.slice_mut(s![.., ..ih, ..iw]);
            region += &probs;
            views += 1;
        }
    }
    let acc = acc.expect("at least one view") / views as f32;
    Ok((acc, inner))
}

/// `image` padded with the mean to the size multiple (bottom and right).
fn padded(image: &RgbImage, norm: &Normalization) -> RgbImage {
    let m = norm.size_multiple as u32;
    let (w, h) = image.dimensions();
    let mut out = RgbImage::from_pixel(w.div_ceil(m) * m, h.div_ceil(m) * m, crate::data::mean_pixel(norm));
    image::imageops::replace(&mut out, image, 0, 0);
    out
}

/// Softmax over the class axis of `[classes, H, W]` logits.
pub fn softmax(logits: ArrayView3<'_, f32>) -> Array3<f32> {
    let mut out = logits.to_owned();
    let (_, h, w) = out.dim();
    for y in 0..h {
        for x in 0..w {
            let mut lane = out.slice_mut(s![.., y, x]);
            let max = lane.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            lane.mapv_inplace(|v| (v - max).exp());
            let sum = lane.sum();
            lane.mapv_inplace(|v| v / sum);
        }
    }
    out
}

/// Bilinear (half-pixel) resize of `[classes, h, w]` scores to `[classes, out_h, out_w]`.
pub fn resize_scores(src: ArrayView3<'_, f32>, out_w: usize, out_h: usize) -> Array3<f32> {
    let (c, h, w) = src.dim();
    if (h, w) == (out_h, out_w) {
        return src.to_owned();
    }
    let (xs, ys) = (crate::upsample::bilinear_taps(out_w, w), crate::upsample::bilinear_taps(out_h, h));
    Array3::from_shape_fn((c, out_h, out_w), |(k, y, x)| {
        let ((y0, y1, fy), (x0, x1, fx)) = (ys[y], xs[x]);
        let top = (1.0 - fx) * src[[k, y0, x0]] + fx * src[[k, y0, x1]];
        let bottom = (1.0 - fx) * src[[k, y1, x0]] + fx * src[[k, y1, x1]];
        (1.0 - fy) * top + fy * bottom
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_side_and_end_at_its_edge() {
        assert_eq!(tile_starts(100, 128, 96), vec![0]);
        assert_eq!(tile_starts(128, 128, 96), vec![0]);
        assert_eq!(tile_starts(300, 128, 96), vec![0, 96, 172]);
        assert_eq!(tile_starts(320, 128, 96), vec![0, 96, 192]);
    }

    #[test]
    fn softmax_and_resize_keep_a_distribution() {
        let logits = Array3::from_shape_fn((3, 2, 2), |(k, y, x)| (k * (y + 1) + x) as f32);
        let p = softmax(logits.view());
        for y in 0..2 {
            for x in 0..2 {
                assert!((p.slice(s![.., y, x]).sum() - 1.0).abs() < 1e-6);
            }
        }
        let r = resize_scores(p.view(), 5, 3);
        assert_eq!(r.dim(), (3, 3, 5));
        assert!(r.axis_iter(Axis(1)).all(|row| row.sum_axis(Axis(0)).iter().all(|s| (s - 1.0).abs() < 1e-5)));
        assert_eq!(resize_scores(p.view(), 2, 2), p, "same size: unchanged");
    }

    #[test]
    fn test_time_flags_are_checked() {
        let plain = TestTimeArgs::default();
        assert!(plain.is_plain() && plain.check(16).is_ok());
        assert!(TestTimeArgs { tile: Some(100), ..plain.clone() }.check(16).is_err());
        assert!(TestTimeArgs { overlap: 0.95, ..plain.clone() }.check(16).is_err());
        assert!(TestTimeArgs { scales: vec![0.0], ..plain.clone() }.check(16).is_err());
        let tta = TestTimeArgs { scales: vec![0.5, 1.0], flip: true, ..plain };
        assert!(!tta.single_view() && tta.describe().contains("scales 0.5,1 with left-right flips"));
    }
}
