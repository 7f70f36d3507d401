//! `segtune infer`: batch inference with onnxruntime on new images. Inputs are files, folders
//! or globs; images are decoded and letterboxed in parallel while onnxruntime runs the previous
//! batch, and masks are written while it runs the next; logits are upsampled back to each
//! image's original size before the argmax. Writes palette PNG masks, optional overlays, and
//! `summary.json`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use image::{GrayImage, Rgb, RgbImage};
use ndarray::{Array4, s};
use rayon::prelude::*;
use serde::Serialize;

use crate::data::{self, load_image, mean_pixel, voc_palette};
use crate::error::{Error, Result};
use crate::model::{Layout, Normalization};
use crate::runtime::{OrtModel, OrtOutput};

/// File extensions taken from folders and globs.
const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "bmp", "webp", "tif"];

/// Settings of `segtune infer`.
#[derive(Debug, Clone)]
pub struct InferOptions {
    /// Output directory (created if missing).
    pub out: PathBuf,
    /// Also write `overlay/STEM.jpg`: the image blended with its mask.
    pub overlay: bool,
    /// Images per onnxruntime run (default 4).
    pub batch: usize,
    /// onnxruntime intra-op threads (0: its default).
    pub threads: usize,
    /// Longer side of the model input in pixels, rounded to the model's multiple (default 512).
    /// Images are scaled so their longer side is this, keeping their aspect ratio, and padded with
    /// the mean to the model's size multiple (a batch to its largest image).
    pub size: usize,
    /// Pad every image to a `size × size` square instead (every input the same shape; a 4:3 image
    /// then costs onnxruntime 4/3 of the work).
    pub square: bool,
}

/// One image's result in `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ImageResult {
    pub file: String,
    pub mask: String,
    pub width: u32,
    pub height: u32,
    /// Fraction of the image's pixels predicted as each class.
    pub class_fractions: Vec<f64>,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct InferSummary {
    pub model: String,
    pub images: Vec<ImageResult>,
    /// Inputs that could not be read, with the reason; they were skipped.
    pub failed: Vec<(String, String)>,
    pub class_names: Vec<String>,
    pub seconds: f64,
    pub images_per_s: f64,
    /// Time onnxruntime spent running, in seconds.
    pub run_seconds: f64,
}

/// Expands files, folders (their images, sorted) and globs (`*` and `?` in the file name).
pub fn expand_inputs(inputs: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        let p = Path::new(input);
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.contains('*') || name.contains('?') {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let mut found: Vec<PathBuf> =
                read_dir_sorted(dir)?.into_iter().filter(|f| glob_match(&name, &file_name(f))).collect();
            if found.is_empty() {
                return Err(Error::bad_file(p, "the pattern matches no file"));
            }
            out.append(&mut found);
        } else if p.is_dir() {
            let mut found: Vec<PathBuf> = read_dir_sorted(p)?
                .into_iter()
                .filter(|f| {
                    f.extension()
                        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_string_lossy().to_lowercase().as_str()))
                })
                .collect();
            if found.is_empty() {
                return Err(Error::bad_file(
                    p,
                    format!("expected images ({}) in this folder, found none", IMAGE_EXTENSIONS.join(", ")),
                ));
            }
            out.append(&mut found);
        } else if p.is_file() {
            out.push(p.to_path_buf());
        } else {
            return Err(Error::bad_file(p, "no such file or folder"));
        }
    }
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    Ok(v)
}

/// `*` matches any run of characters, `?` one character.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A decoded image and its letterboxed model input.
struct Prepared {
    path: PathBuf,
    original: RgbImage,
    input: RgbImage,
    /// Size of the scaled image inside the (padded) input.
    inner: (usize, usize),
}

/// Scales `image` so its longer side is `side` and pads it with the mean: to `side × side` when
/// `square`, else each side to the model's size multiple.
fn letterbox(image: &RgbImage, side: usize, square: bool, norm: &Normalization) -> (RgbImage, (usize, usize)) {
    let (w, h) = image.dimensions();
    let scale = side as f32 / w.max(h) as f32;
    let (nw, nh) = (
        ((w as f32 * scale).round() as u32).clamp(1, side as u32),
        ((h as f32 * scale).round() as u32).clamp(1, side as u32),
    );
    let pad =
        |n: u32| if square { side as u32 } else { n.div_ceil(norm.size_multiple as u32) * norm.size_multiple as u32 };
    let mut out = RgbImage::from_pixel(pad(nw), pad(nh), mean_pixel(norm));
    let resized = resize_bilinear(image, nw, nh);
    image::imageops::replace(&mut out, &resized, 0, 0);
    (out, (nw as usize, nh as usize))
}

/// `image` scaled to `w × h` with Pillow's bilinear filter (a triangle over the source pixels a
/// target pixel covers, so downscaling averages): SIMD, through fast_image_resize.
fn resize_bilinear(image: &RgbImage, w: u32, h: u32) -> RgbImage {
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

/// Bilinear (half-pixel) upsampling of `logits[.., :ih, :iw]` of one image to `w × h`, fused
/// with the argmax over classes (ties go to the lower class). Separable: each output row first
/// blends its two source rows of every class into a class-interleaved row, then each pixel blends
/// two neighbours of that row; both passes read contiguous memory.
fn upsample_argmax(logits: ndarray::ArrayView3<'_, f32>, inner: (usize, usize), w: usize, h: usize) -> GrayImage {
    let logits = logits.as_standard_layout();
    let (c, lh, lw) = logits.dim();
    let data = logits.as_slice().expect("standard layout is contiguous");
    let (iw, ih) = inner;
    let (sx, sy) = (iw as f32 / w as f32, ih as f32 / h as f32);
    let coords = |i: usize, scale: f32, max: usize| {
        let f = ((i as f32 + 0.5) * scale - 0.5).clamp(0.0, (max - 1) as f32);
        let i0 = f.floor() as usize;
        (i0, (i0 + 1).min(max - 1), f - i0 as f32)
    };
    let xs: Vec<_> = (0..w).map(|x| coords(x, sx, iw)).collect();
    let mut mask = vec![0u8; w * h];
    mask.par_chunks_mut(w.max(1)).enumerate().for_each_init(
        || vec![0f32; iw * c],
        |blend, (y, out)| {
            let (y0, y1, fy) = coords(y, sy, ih);
            for k in 0..c {
                let r0 = &data[(k * lh + y0) * lw..][..iw];
                let r1 = &data[(k * lh + y1) * lw..][..iw];
                for (x, (a, b)) in r0.iter().zip(r1).enumerate() {
                    blend[x * c + k] = (1.0 - fy) * a + fy * b;
                }
            }
            for (o, &(x0, x1, fx)) in out.iter_mut().zip(&xs) {
                let (a, b) = (&blend[x0 * c..][..c], &blend[x1 * c..][..c]);
                let mut best = (0u8, f32::NEG_INFINITY);
                for (k, (a, b)) in a.iter().zip(b).enumerate() {
                    let v = (1.0 - fx) * a + fx * b;
                    if v > best.1 {
                        best = (k as u8, v);
                    }
                }
                *o = best.0;
            }
        },
    );
    GrayImage::from_raw(w as u32, h as u32, mask).expect("size matches")
}

/// Writes `image` normalized into `dst` (`[3, H, W]` for NCHW, `[H, W, 3]` for NHWC, at least
/// the image's size; the rest is left as it is).
fn normalize_into(mut dst: ndarray::ArrayViewMut3<'_, f32>, image: &RgbImage, norm: &Normalization) {
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

/// `segtune infer MODEL INPUT... --out DIR`. Unreadable images are reported and skipped; the
/// caller turns a non-empty `failed` into a non-zero exit.
pub fn infer(model: &Path, inputs: &[String], opts: &InferOptions) -> Result<InferSummary> {
    let started = Instant::now();
    let proto = crate::onnx::read_model(model)?;
    crate::model::check_input_rank(&proto, model)?;
    let meta = crate::onnx::metadata(&proto);
    let norm = Normalization::from_metadata(&meta).map_err(|e| Error::bad_file(model, e))?;
    let classes = crate::validate::model_classes(&proto, norm.layout, model)?;
    let class_names: Vec<String> = meta
        .get("segtune.class_names")
        .map(|v| v.split(',').map(String::from).collect())
        .unwrap_or_else(|| (0..classes).map(|i| format!("class_{i}")).collect());
    let side = opts.size.div_ceil(norm.size_multiple).max(1) * norm.size_multiple;
    if opts.batch == 0 {
        return Err(Error::BadArgument("--batch 0: expected at least 1".into()));
    }
    let files = expand_inputs(inputs)?;
    if opts.out.exists() && !opts.out.is_dir() {
        return Err(Error::bad_file(&opts.out, "expected an output directory, found a file"));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    if opts.overlay {
        std::fs::create_dir_all(opts.out.join("overlay")).map_err(|e| Error::io(opts.out.join("overlay"), e))?;
    }
    let bytes = std::fs::read(model).map_err(|e| Error::io(model, e))?;
    let mut session = OrtModel::with_options(&bytes, &model.display().to_string(), opts.threads, false)?;

    // Stage 1 (thread): decode + letterbox a batch in parallel.
    type Decoded = (Vec<Prepared>, Vec<(String, String)>);
    let (tx, rx) = mpsc::sync_channel::<Decoded>(2);
    let chunks: Vec<Vec<PathBuf>> = files.chunks(opts.batch).map(|c| c.to_vec()).collect();
    let square = opts.square;
    let producer = std::thread::spawn(move || {
        for chunk in chunks {
            let results: Vec<std::result::Result<Prepared, (String, String)>> = chunk
                .par_iter()
                .map(|p| {
                    let original = load_image(p).map_err(|e| (p.display().to_string(), e.to_string()))?;
                    let (input, inner) = letterbox(&original, side, square, &norm);
                    Ok(Prepared { path: p.clone(), original, input, inner })
                })
                .collect();
            let mut ok = vec![];
            let mut bad = vec![];
            for r in results {
                match r {
                    Ok(p) => ok.push(p),
                    Err(e) => bad.push(e),
                }
            }
            if tx.send((ok, bad)).is_err() {
                break;
            }
        }
    });

    // Stage 3 (thread): upsample, argmax and write while onnxruntime runs the next batch.
    type Ran = (Vec<Prepared>, OrtOutput);
    let (wtx, wrx) = mpsc::sync_channel::<Ran>(2);
    let out_dir = opts.out.clone();
    let overlay = opts.overlay;
    let writer = std::thread::spawn(move || -> Result<Vec<ImageResult>> {
        let palette = voc_palette();
        let mut results = vec![];
        for (prepared, output) in wrx {
            let logits = output.logits()?;
            let batch: Result<Vec<ImageResult>> = prepared
                .par_iter()
                .enumerate()
                .map(|(i, p)| write_outputs(p, logits.slice(s![i, .., .., ..]), &out_dir, overlay, &palette, classes))
                .collect();
            results.extend(batch?);
        }
        Ok(results)
    });

    let tty = std::io::stderr().is_terminal();
    let (mut failed, mut run_seconds, mut done) = (vec![], 0f64, 0usize);
    for (prepared, bad) in rx {
        for (file, why) in bad {
            eprintln!("error: {file}: {why}; skipped");
            failed.push((file, why));
        }
        if prepared.is_empty() {
            continue;
        }
        let n = prepared.len();
        // The batch's shape: its largest input; the rest is 0, the normalized mean.
        let (bw, bh) = prepared.iter().fold((0, 0), |(w, h), p| (w.max(p.input.width()), h.max(p.input.height())));
        let (bw, bh) = (bw as usize, bh as usize);
        let mut input = match norm.layout {
            Layout::Nchw => Array4::<f32>::zeros((n, 3, bh, bw)),
            Layout::Nhwc => Array4::<f32>::zeros((n, bh, bw, 3)),
        };
        for (i, p) in prepared.iter().enumerate() {
            normalize_into(input.slice_mut(s![i, .., .., ..]), &p.input, &norm);
        }
        let t = Instant::now();
        let logits = session.run_output(input.view(), norm.layout)?;
        run_seconds += t.elapsed().as_secs_f64();
        done += n;
        if tty {
            eprint!(
                "\rinfer {done}/{} images, {:.1} img/s ",
                files.len(),
                done as f64 / started.elapsed().as_secs_f64()
            );
        }
        if wtx.send((prepared, logits)).is_err() {
            break;
        }
    }
    drop(wtx);
    if tty {
        eprintln!();
    }
    let _ = producer.join();
    let images = writer.join().map_err(|_| Error::Runtime("the mask writer thread panicked".into()))??;
    let seconds = started.elapsed().as_secs_f64();
    let summary = InferSummary {
        model: model.display().to_string(),
        images_per_s: images.len() as f64 / seconds,
        images,
        failed,
        class_names,
        seconds,
        run_seconds,
    };
    let json = serde_json::to_string_pretty(&summary).expect("summary serializes");
    data::write_atomic(&opts.out.join("summary.json"), |f| std::io::Write::write_all(f, json.as_bytes()))?;
    Ok(summary)
}

/// Upsamples one image's logits to its original size, takes the argmax, and writes
/// `STEM.png` (VOC palette) and, with `overlay`, `overlay/STEM.jpg`.
fn write_outputs(
    p: &Prepared,
    logits: ndarray::ArrayView3<'_, f32>,
    out: &Path,
    overlay: bool,
    palette: &[[u8; 3]; 256],
    classes: usize,
) -> Result<ImageResult> {
    let (w, h) = p.original.dimensions();
    let mask = upsample_argmax(logits, p.inner, w as usize, h as usize);
    let stem = p.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    let mask_path = out.join(format!("{stem}.png"));
    data::write_index_png(&mask_path, &mask, palette)?;
    if overlay {
        let blended = RgbImage::from_fn(w, h, |x, y| {
            let (a, c) = (p.original.get_pixel(x, y), palette[mask.get_pixel(x, y)[0] as usize]);
            Rgb([0, 1, 2].map(|i| ((a[i] as u16 + c[i] as u16) / 2) as u8))
        });
        let path = out.join("overlay").join(format!("{stem}.jpg"));
        data::write_atomic(&path, |f| {
            image::codecs::jpeg::JpegEncoder::new_with_quality(f, 90)
                .encode_image(&blended)
                .map_err(std::io::Error::other)
        })?;
    }
    let mut counts = vec![0u64; classes];
    for v in mask.as_raw() {
        counts[(*v as usize).min(classes - 1)] += 1;
    }
    let total = (w as u64 * h as u64).max(1) as f64;
    Ok(ImageResult {
        file: p.path.display().to_string(),
        mask: mask_path.display().to_string(),
        width: w,
        height: h,
        class_fractions: counts.iter().map(|&c| c as f64 / total).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*.jpg", "a.jpg"));
        assert!(glob_match("img_??.png", "img_01.png"));
        assert!(!glob_match("img_??.png", "img_1.png"));
        assert!(glob_match("*", "x"));
        assert!(!glob_match("*.jpg", "a.png"));
        assert!(glob_match("a*b*c", "axxbyyc"));
    }

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
        let (img, inner) = letterbox(&RgbImage::from_pixel(100, 50, Rgb([0, 0, 0])), 64, true, &norm);
        assert_eq!((img.dimensions(), inner), ((64, 64), (64, 32)));
        assert_eq!(*img.get_pixel(0, 63), mean_pixel(&norm));
        assert_eq!(*img.get_pixel(0, 0), Rgb([0, 0, 0]));
        // Aspect kept: only up to the size multiple (16): 100×70 → 64×45 → 64×48.
        let (img, inner) = letterbox(&RgbImage::from_pixel(100, 70, Rgb([0, 0, 0])), 64, false, &norm);
        assert_eq!((img.dimensions(), inner), ((64, 48), (64, 45)));
        assert_eq!(*img.get_pixel(0, 47), mean_pixel(&norm));
        assert_eq!(*img.get_pixel(63, 44), Rgb([0, 0, 0]));
    }
}
