//! Dataset reading: folder pairs, image conversions, index masks and their validation.

use std::path::Path;

use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use segtune::data::{self, Dataset, load_item, load_mask};

fn save<P: image::Pixel<Subpixel = S> + image::PixelWithColorType, S: image::Primitive>(
    img: &ImageBuffer<P, Vec<S>>,
    path: &Path,
) where
    [S]: image::EncodableLayout,
{
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

#[test]
fn folder_pairs_with_rgba_gray_and_16_bit_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    save(&RgbaImage::from_pixel(8, 4, Rgba([10, 20, 30, 128])), &root.join("train/images/a.png"));
    save(&GrayImage::from_fn(8, 4, |x, _| Luma([(x % 3) as u8])), &root.join("train/masks/a.png"));
    save(&GrayImage::from_pixel(8, 4, Luma([77])), &root.join("train/images/b.jpg"));
    let mask16: ImageBuffer<Luma<u16>, Vec<u16>> =
        ImageBuffer::from_fn(8, 4, |x, _| Luma([if x == 0 { 255 } else { 2 }]));
    save(&mask16, &root.join("train/masks/b.png"));

    let ds = Dataset::open(root, "train").unwrap();
    assert_eq!(ds.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    ds.validate(3).unwrap();
    let (img, mask) = load_item(&ds.items[0], 3).unwrap();
    assert_eq!(*img.get_pixel(0, 0), Rgb([10, 20, 30]));
    assert_eq!(mask.get_pixel(4, 0)[0], 1);
    let (img, mask) = load_item(&ds.items[1], 3).unwrap();
    let p = img.get_pixel(3, 3);
    assert!(p[0] == p[1] && p[1] == p[2] && (p[0] as i32 - 77).abs() <= 2, "grayscale becomes gray RGB: {p:?}");
    assert_eq!((mask.get_pixel(0, 0)[0], mask.get_pixel(1, 0)[0]), (255, 2));
}

#[test]
fn masks_are_refused_with_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let rgb = dir.path().join("rgb.png");
    save(&RgbImage::from_pixel(4, 4, Rgb([128, 0, 0])), &rgb);
    let e = load_mask(&rgb, 21).unwrap_err().to_string();
    assert!(e.contains("rgb.png") && e.contains("found RGB colours"), "{e}");

    let stray = dir.path().join("stray.png");
    save(&GrayImage::from_fn(4, 4, |x, y| Luma([if (x, y) == (2, 1) { 37 } else { 0 }])), &stray);
    let e = load_mask(&stray, 21).unwrap_err().to_string();
    assert!(e.contains("stray.png: mask value 37 at pixel (2, 1) (1 pixels) is outside [0, 21)"), "{e}");
    assert!(load_mask(&stray, 38).is_ok());

    let jpeg = dir.path().join("mask.png");
    save(&GrayImage::from_pixel(4, 4, Luma([1])), &dir.path().join("m.jpg"));
    std::fs::rename(dir.path().join("m.jpg"), &jpeg).unwrap();
    let e = load_mask(&jpeg, 21).unwrap_err().to_string();
    assert!(e.contains("found a JPEG"), "{e}");
}

#[test]
fn image_and_mask_of_different_sizes_name_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    save(&RgbImage::new(8, 8), &root.join("val/images/x.png"));
    save(&GrayImage::new(8, 6), &root.join("val/masks/x.png"));
    let ds = Dataset::open(root, "val").unwrap();
    let e = ds.validate(2).unwrap_err().to_string();
    assert!(e.contains("val/masks/x.png: mask is 8x6 but its image") && e.contains("val/images/x.png is 8x8"), "{e}");
}

#[test]
fn synth_writes_a_voc_layout_with_boundary_bands() {
    let dir = tempfile::tempdir().unwrap();
    data::synth(
        dir.path(),
        &data::SynthOptions { classes: 6, train: 6, val: 2, size: 64, seed: 3, ..Default::default() },
    )
    .unwrap();
    let ds = Dataset::open(dir.path(), "train").unwrap();
    assert_eq!(ds.items.len(), 6);
    ds.validate(6).unwrap();
    let masks: Vec<GrayImage> = ds.items.iter().map(|i| load_mask(&i.mask, 6).unwrap()).collect();
    let values: std::collections::BTreeSet<u8> = masks.iter().flat_map(|m| m.as_raw().iter().copied()).collect();
    assert!(values.contains(&0) && values.contains(&255), "{values:?}");
    assert!(values.iter().filter(|&&v| v > 0 && v < 6).count() >= 2, "{values:?}");
    // Same seed, same bytes.
    let again = tempfile::tempdir().unwrap();
    data::synth(
        again.path(),
        &data::SynthOptions { classes: 6, train: 6, val: 2, size: 64, seed: 3, ..Default::default() },
    )
    .unwrap();
    let a = std::fs::read(dir.path().join("SegmentationClass/train_00003.png")).unwrap();
    assert_eq!(a, std::fs::read(again.path().join("SegmentationClass/train_00003.png")).unwrap());
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn a_decompression_bomb_is_refused_from_its_header() {
    // A 70-byte PNG whose header declares 50000 x 50000 RGB pixels (7.5 GB decoded).
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(50_000u32.to_be_bytes());
    ihdr.extend(50_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    for (kind, data) in [(&b"IDAT"[..], &[0x78u8, 0x9c][..]), (&b"IEND"[..], &[][..])] {
        let chunk: Vec<u8> = kind.iter().chain(data).copied().collect();
        png.extend((data.len() as u32).to_be_bytes());
        png.extend(&chunk);
        png.extend(crc32(&chunk).to_be_bytes());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.png");
    std::fs::write(&path, &png).unwrap();
    let started = std::time::Instant::now();
    let e = segtune::data::load_image(&path).unwrap_err().to_string();
    assert!(e.contains("bomb.png: image of 50000x50000 pixels exceeds the limit"), "{e}");
    assert!(started.elapsed().as_secs_f64() < 1.0);
    let e = load_mask(&path, 21).unwrap_err().to_string();
    assert!(e.contains("exceeds the limit"), "{e}");
}

#[test]
fn truncated_jpegs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jpg");
    RgbImage::from_fn(64, 64, |x, y| Rgb([x as u8 * 4, y as u8 * 4, 9])).save(&path).unwrap();
    assert!(segtune::data::load_image(&path).is_ok());
    let b = std::fs::read(&path).unwrap();
    std::fs::write(&path, &b[..b.len() - 40]).unwrap();
    let e = segtune::data::load_image(&path).unwrap_err().to_string();
    assert!(e.contains("t.jpg") && e.contains("truncated JPEG"), "{e}");
}

#[test]
fn corpus_style_is_varied_deterministic_and_in_range() {
    let opts =
        data::SynthOptions { classes: 21, train: 24, val: 2, size: 96, seed: 7, style: data::SynthStyle::Corpus };
    let dir = tempfile::tempdir().unwrap();
    data::synth(dir.path(), &opts).unwrap();
    let ds = Dataset::open(dir.path(), "train").unwrap();
    ds.validate(21).unwrap();
    let mut hist = [0u64; 256];
    for item in &ds.items {
        for &v in load_mask(&item.mask, 21).unwrap().as_raw() {
            hist[v as usize] += 1;
        }
    }
    let total: u64 = hist.iter().sum();
    assert!(hist[21..255].iter().all(|&n| n == 0), "values outside [0, 21) ∪ {{255}}");
    let classes_seen = (1..21).filter(|&c| hist[c] > 0).count();
    assert!(classes_seen >= 14, "only {classes_seen} of 20 object classes in 24 images");
    let ignore = hist[255] as f64 / total as f64;
    assert!((0.02..0.3).contains(&ignore), "255 fraction {ignore}");
    let background = hist[0] as f64 / total as f64;
    assert!((0.2..0.9).contains(&background), "background fraction {background}");
    // Different from the default style with the same seed, and the same bytes again.
    let shapes = tempfile::tempdir().unwrap();
    data::synth(shapes.path(), &data::SynthOptions { style: data::SynthStyle::Shapes, ..opts }).unwrap();
    let again = tempfile::tempdir().unwrap();
    data::synth(again.path(), &opts).unwrap();
    for f in ["JPEGImages/train_00005.jpg", "SegmentationClass/train_00005.png"] {
        let a = std::fs::read(dir.path().join(f)).unwrap();
        assert_eq!(a, std::fs::read(again.path().join(f)).unwrap(), "{f}");
        assert_ne!(a, std::fs::read(shapes.path().join(f)).unwrap(), "{f}");
    }
}
