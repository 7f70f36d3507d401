//! Image geometry shared by `validate` and `infer`: letterboxing an image into the model's
//! input (Pillow's bilinear filter) and normalizing it into an input tensor in either layout.
//! The way back, logits to a mask, is `crate::upsample`'s.

use image::RgbImage;
use ndarray::s;

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
