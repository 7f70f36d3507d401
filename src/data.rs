//! Datasets: the PASCAL VOC, Cityscapes and ADE20K layouts and image/mask folder pairs (detected
//! or chosen), image and index-mask decoding through a label map with validation, class names,
//! synthetic sets (`segtune synth`), paired transforms, and batches assembled in parallel ahead
//! of the training step.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use image::{GrayImage, Rgb, RgbImage, imageops::FilterType};
use rayon::prelude::*;

use crate::IGNORE_INDEX;
use crate::error::{Error, Result};
use crate::labels::LabelMap;
use crate::layout::{Layout, Normalization};
pub use crate::rng::Rng;

/// Images larger than this many pixels are refused before decoding (a decompression bomb).
pub const MAX_IMAGE_PIXELS: u64 = 64 * 1024 * 1024;

/// The PASCAL VOC colour palette (index → RGB).
pub fn voc_palette() -> [[u8; 3]; 256] {
    let mut p = [[0u8; 3]; 256];
    for (i, entry) in p.iter_mut().enumerate() {
        let mut c = i;
        for j in 0..8 {
            entry[0] |= ((c & 1) << (7 - j)) as u8;
            entry[1] |= (((c >> 1) & 1) << (7 - j)) as u8;
            entry[2] |= (((c >> 2) & 1) << (7 - j)) as u8;
            c >>= 3;
        }
    }
    p
}

/// One image and its mask.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub image: PathBuf,
    pub mask: PathBuf,
    /// What the mask's stored values mean as classes (the layout's map, then `--label-map`).
    pub map: LabelMap,
}

/// How a dataset's files are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DatasetLayout {
    /// Found from the folder: Cityscapes (`leftImg8bit/`, `gtFine/`), ADE20K (`images/`,
    /// `annotations/`), VOC (`ImageSets/Segmentation/SPLIT.txt`), else folder pairs.
    #[default]
    Auto,
    /// PASCAL VOC: `ImageSets/Segmentation/SPLIT.txt`, `JPEGImages/ID.jpg`, `SegmentationClass/ID.png`.
    Voc,
    /// `SPLIT/images/*` and `SPLIT/masks/*.png`, matched by file stem.
    Folders,
    /// Cityscapes: `leftImg8bit/SPLIT/CITY/*_leftImg8bit.png` with `gtFine/SPLIT/CITY/*_gtFine_labelTrainIds.png`
    /// (used as they are) or `*_gtFine_labelIds.png` (mapped to the 19 trainIds, 255 elsewhere).
    Cityscapes,
    /// ADE20K (ADEChallengeData2016): `images/{training,validation}/*.jpg` with
    /// `annotations/…/*.png`, 150 classes, reduce_zero_label (0 → 255, k → k − 1).
    Ade20k,
}

/// How to read a dataset: its layout, and a label map applied after the layout's own.
#[derive(Debug, Clone, Copy, Default)]
pub struct DataSpec {
    pub layout: DatasetLayout,
    pub label_map: LabelMap,
}

/// How a dataset is read, as flags (`train`, `doctor`, `validate`) and as a run's config.json
/// keeps them.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, clap::Args)]
pub struct DataArgs {
    /// Dataset layout: auto (found from its folders), voc, folders, cityscapes (labelIds mapped to
    /// the 19 trainIds), ade20k (150 classes, reduce_zero_label).
    #[arg(long, value_enum, default_value_t = DatasetLayout::Auto)]
    #[serde(default)]
    pub layout: DatasetLayout,
    /// What stored mask values mean, applied as masks are read, after the layout's own map:
    /// SRC:DST pairs with ranges (`255:1`, `0-6:255,7:0`), or cityscapes / reduce_zero_label.
    #[arg(long, default_value = "identity", value_name = "SRC:DST,...")]
    #[serde(default)]
    pub label_map: LabelMap,
    /// A file of class names, one per line [default: the layout's, DATA/classes.txt, VOC's for 21].
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub class_names: Option<PathBuf>,
}

impl DataArgs {
    pub fn spec(&self) -> DataSpec {
        DataSpec { layout: self.layout, label_map: self.label_map }
    }
}

/// A split of a dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub split: String,
    pub items: Vec<Item>,
    /// The layout it was read in (never `Auto`).
    pub layout: DatasetLayout,
}

impl DatasetLayout {
    /// The layout of `root` for `split`, as `Auto` finds it; `None` when nothing matches.
    pub fn detect(root: &Path, split: &str) -> Option<DatasetLayout> {
        if root.join("leftImg8bit").is_dir() && root.join("gtFine").is_dir() {
            Some(DatasetLayout::Cityscapes)
        } else if root.join("images").is_dir() && root.join("annotations").is_dir() {
            Some(DatasetLayout::Ade20k)
        } else if root.join("ImageSets/Segmentation").join(format!("{split}.txt")).is_file() {
            Some(DatasetLayout::Voc)
        } else if root.join(split).join("images").is_dir() {
            Some(DatasetLayout::Folders)
        } else {
            None
        }
    }

    /// Its class names, where the layout defines them.
    pub fn class_names(self) -> Option<Vec<String>> {
        let names: &[&str] = match self {
            DatasetLayout::Cityscapes => &crate::labels::CITYSCAPES_CLASSES,
            DatasetLayout::Ade20k => &crate::labels::ADE20K_CLASSES,
            _ => return None,
        };
        Some(names.iter().map(|s| s.to_string()).collect())
    }
}

impl Dataset {
    /// Opens `split` of the dataset at `root` in the layout found there (see [`DatasetLayout`]).
    pub fn open(root: &Path, split: &str) -> Result<Dataset> {
        Self::open_with(root, split, &DataSpec::default())
    }

    /// Opens `split` of the dataset at `root` as `spec` says.
    pub fn open_with(root: &Path, split: &str, spec: &DataSpec) -> Result<Dataset> {
        if !root.is_dir() {
            return Err(Error::bad_file(
                root,
                "expected a dataset directory (VOC, Cityscapes or ADE20K layout, or SPLIT/images + SPLIT/masks)",
            ));
        }
        let layout = match spec.layout {
            DatasetLayout::Auto => DatasetLayout::detect(root, split).ok_or_else(|| {
                Error::bad_file(
                    root,
                    format!(
                        "expected a dataset layout: ImageSets/Segmentation/{split}.txt (VOC), {split}/images and \
                         {split}/masks, leftImg8bit/ and gtFine/ (Cityscapes) or images/ and annotations/ (ADE20K), \
                         found none of them"
                    ),
                )
            })?,
            chosen => chosen,
        };
        let (mut items, listed) = match layout {
            DatasetLayout::Voc => {
                let list = root.join("ImageSets/Segmentation").join(format!("{split}.txt"));
                (voc_items(root, &list)?, list)
            }
            DatasetLayout::Cityscapes => (cityscapes_items(root, split)?, root.join("leftImg8bit").join(split)),
            DatasetLayout::Ade20k => {
                let dir = ade20k_split(root, split);
                (ade20k_items(root, &dir)?, root.join("images").join(dir))
            }
            DatasetLayout::Folders | DatasetLayout::Auto => {
                (folder_items(&root.join(split))?, root.join(split).join("images"))
            }
        };
        if items.is_empty() {
            return Err(Error::bad_file(listed, format!("split {split:?} is empty: expected at least one image")));
        }
        for item in &mut items {
            item.map = spec.label_map.after(&item.map);
        }
        Ok(Dataset { root: root.to_path_buf(), split: split.to_string(), items, layout })
    }
}

/// Class names for a dataset: `file` (one per line) when given; else the layout's (Cityscapes,
/// ADE20K); else `ROOT/classes.txt`; else the VOC names for 21 classes; else `background`,
/// `class_1`, ... A file with another count than `classes` is an error; a `classes.txt` with
/// another count is passed over.
pub fn class_names(root: &Path, layout: DatasetLayout, classes: usize, file: Option<&Path>) -> Result<Vec<String>> {
    let read = |p: &Path| -> Option<Vec<String>> {
        let text = std::fs::read_to_string(p).ok()?;
        Some(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
    };
    if let Some(f) = file {
        let names = read(f).ok_or_else(|| Error::bad_file(f, "expected a text file of class names, one per line"))?;
        if names.len() != classes {
            return Err(Error::bad_file(
                f,
                format!("expected {classes} class names, one per line, found {}", names.len()),
            ));
        }
        return Ok(names);
    }
    if let Some(names) = layout.class_names().filter(|n| n.len() == classes) {
        return Ok(names);
    }
    if let Some(names) = read(&root.join("classes.txt")).filter(|n| n.len() == classes) {
        return Ok(names);
    }
    if classes == VOC_CLASSES.len() {
        return Ok(VOC_CLASSES.iter().map(|s| s.to_string()).collect());
    }
    Ok((0..classes).map(|i| if i == 0 { "background".to_string() } else { format!("class_{i}") }).collect())
}

/// The 21 PASCAL VOC class names.
pub const VOC_CLASSES: [&str; 21] = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

impl Dataset {
    /// Checks every item before any training starts, in parallel: the mask (values, after the
    /// item's label map, in [0, classes) ∪ {255}, one channel), the image (decoded in full, so a
    /// truncated file is found now rather than hours into a run), and that both have the same
    /// size. The first failing item in list order is reported.
    pub fn validate(&self, classes: usize) -> Result<()> {
        let results: Vec<Result<()>> = self.items.par_iter().map(|item| load_item(item, classes).map(|_| ())).collect();
        results.into_iter().collect()
    }
}

fn voc_items(root: &Path, list: &Path) -> Result<Vec<Item>> {
    let text = std::fs::read_to_string(list).map_err(|e| Error::io(list, e))?;
    let mut items = Vec::new();
    for id in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let jpg = root.join("JPEGImages").join(format!("{id}.jpg"));
        let png = root.join("JPEGImages").join(format!("{id}.png"));
        let image = if !jpg.is_file() && png.is_file() { png } else { jpg };
        let mask = root.join("SegmentationClass").join(format!("{id}.png"));
        for p in [&image, &mask] {
            if !p.is_file() {
                return Err(Error::bad_file(list, format!("lists {id:?}, but {} does not exist", p.display())));
            }
        }
        items.push(Item { id: id.to_string(), image, mask, map: LabelMap::IDENTITY });
    }
    Ok(items)
}

/// The files of `dir` (not recursing), sorted.
fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

fn file_stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

fn folder_items(dir: &Path) -> Result<Vec<Item>> {
    let masks = dir.join("masks");
    let mut items = Vec::new();
    for image in sorted_files(&dir.join("images"))? {
        let id = file_stem(&image);
        let mask = masks.join(format!("{id}.png"));
        if !mask.is_file() {
            return Err(Error::bad_file(&image, format!("expected its mask {}, found none", mask.display())));
        }
        items.push(Item { id, image, mask, map: LabelMap::IDENTITY });
    }
    Ok(items)
}

/// Cityscapes: every `leftImg8bit/SPLIT/CITY/NAME_leftImg8bit.png` with its
/// `gtFine/SPLIT/CITY/NAME_gtFine_labelTrainIds.png` where present (used as it is), else its
/// `NAME_gtFine_labelIds.png` (labelIds mapped to trainIds).
fn cityscapes_items(root: &Path, split: &str) -> Result<Vec<Item>> {
    let images = root.join("leftImg8bit").join(split);
    if !images.is_dir() {
        return Err(Error::bad_file(root, format!("expected leftImg8bit/{split}/CITY/ (Cityscapes), found none")));
    }
    let mut cities: Vec<PathBuf> = std::fs::read_dir(&images)
        .map_err(|e| Error::io(&images, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    cities.sort();
    let mut items = Vec::new();
    for city in cities {
        let gt = root.join("gtFine").join(split).join(city.file_name().expect("a directory has a name"));
        for image in sorted_files(&city)? {
            let Some(name) =
                image.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix("_leftImg8bit.png"))
            else {
                continue;
            };
            let train_ids = gt.join(format!("{name}_gtFine_labelTrainIds.png"));
            let label_ids = gt.join(format!("{name}_gtFine_labelIds.png"));
            let (mask, map) = if train_ids.is_file() {
                (train_ids, LabelMap::IDENTITY)
            } else if label_ids.is_file() {
                (label_ids, LabelMap::cityscapes())
            } else {
                return Err(Error::bad_file(
                    &image,
                    format!("expected its mask {} (or _gtFine_labelTrainIds.png), found none", label_ids.display()),
                ));
            };
            items.push(Item { id: name.to_string(), image, mask, map });
        }
    }
    Ok(items)
}

/// ADE20K's folder for a split: `training` for `train`, `validation` for `val`, else the name.
fn ade20k_split(root: &Path, split: &str) -> String {
    let dir = match split {
        "train" => "training",
        "val" => "validation",
        other => other,
    };
    if root.join("images").join(dir).is_dir() { dir.to_string() } else { split.to_string() }
}

/// ADE20K: every `images/DIR/NAME.jpg` with `annotations/DIR/NAME.png`, reduce_zero_label.
fn ade20k_items(root: &Path, dir: &str) -> Result<Vec<Item>> {
    let images = root.join("images").join(dir);
    if !images.is_dir() {
        return Err(Error::bad_file(root, format!("expected images/{dir}/ (ADE20K), found none")));
    }
    let annotations = root.join("annotations").join(dir);
    let mut items = Vec::new();
    for image in sorted_files(&images)? {
        let id = file_stem(&image);
        let mask = annotations.join(format!("{id}.png"));
        if !mask.is_file() {
            return Err(Error::bad_file(&image, format!("expected its annotation {}, found none", mask.display())));
        }
        items.push(Item { id, image, mask, map: LabelMap::reduce_zero_label() });
    }
    Ok(items)
}

/// Decodes an image as 8-bit RGB (grayscale, RGBA and 16-bit images are converted), refusing
/// images whose header declares more than [`MAX_IMAGE_PIXELS`] before decoding.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::bad_file(path, "no such file; expected an image"),
        _ => Error::io(path, e),
    })?;
    let reader =
        image::ImageReader::new(std::io::Cursor::new(&bytes)).with_guessed_format().map_err(|e| Error::io(path, e))?;
    let format = reader.format();
    let (w, h) =
        reader.into_dimensions().map_err(|e| Error::bad_file(path, format!("expected a readable image: {e}")))?;
    if w as u64 * h as u64 > max_image_pixels() {
        return Err(Error::bad_file(
            path,
            format!("image of {w}x{h} pixels exceeds the limit of {} (SEGTUNE_MAX_IMAGE_PIXELS)", max_image_pixels()),
        ));
    }
    // JPEG decoders fill a truncated file's missing rows with grey instead of failing.
    if format == Some(image::ImageFormat::Jpeg) {
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        if end < 2 || bytes[end - 2..end] != [0xff, 0xd9] {
            return Err(Error::bad_file(path, "expected a readable image: truncated JPEG (no end-of-image marker)"));
        }
    }
    let img = image::load_from_memory(&bytes)
        .map_err(|e| Error::bad_file(path, format!("expected a readable image: {e}")))?;
    Ok(img.to_rgb8())
}

/// The largest image (in pixels) segtune decodes: `SEGTUNE_MAX_IMAGE_PIXELS`, default
/// [`MAX_IMAGE_PIXELS`]. Checked from the header, before decoding (a decompression bomb).
pub fn max_image_pixels() -> u64 {
    std::env::var("SEGTUNE_MAX_IMAGE_PIXELS").ok().and_then(|v| v.parse().ok()).unwrap_or(MAX_IMAGE_PIXELS)
}

/// A mask PNG as stored: every channel value of every pixel, before any interpretation.
#[derive(Debug, Clone)]
pub struct RawMask {
    pub width: u32,
    pub height: u32,
    /// 1 for palette / grayscale, 2 gray + alpha, 3 RGB, 4 RGBA.
    pub channels: usize,
    /// `width * height * channels` values, row-major, channels interleaved.
    pub values: Vec<u16>,
    /// Whether the PNG is a palette image (values are palette indices).
    pub indexed: bool,
}

/// Reads a mask PNG without interpreting it (see [`load_mask`] for the checked index mask).
pub fn read_mask_raw(path: &Path) -> Result<RawMask> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_mask_raw(&bytes, path)
}

/// [`read_mask_raw`] on bytes in memory; `path` names them in errors.
pub fn decode_mask_raw(bytes: &[u8], path: &Path) -> Result<RawMask> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(|e| {
        if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
            Error::bad_file(path, "expected a PNG index mask, found a JPEG (lossy compression corrupts class indices)")
        } else {
            Error::bad_file(path, format!("expected a PNG index mask: {e}"))
        }
    })?;
    let (w, h) = (reader.info().width, reader.info().height);
    if w as u64 * h as u64 > max_image_pixels() {
        return Err(Error::bad_file(
            path,
            format!("mask of {w}x{h} pixels exceeds the limit of {} (SEGTUNE_MAX_IMAGE_PIXELS)", max_image_pixels()),
        ));
    }
    let mut buf = vec![0u8; reader.output_buffer_size().ok_or_else(|| Error::bad_file(path, "mask too large"))?];
    let info =
        reader.next_frame(&mut buf).map_err(|e| Error::bad_file(path, format!("truncated or corrupt PNG: {e}")))?;
    let channels = match info.color_type {
        png::ColorType::Indexed | png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
    };
    let bits = info.bit_depth as usize;
    let per_row = w as usize * channels;
    let mut values = Vec::with_capacity(per_row * h as usize);
    for y in 0..h as usize {
        let line = &buf[y * info.line_size..];
        for i in 0..per_row {
            values.push(match bits {
                16 => u16::from_be_bytes([line[2 * i], line[2 * i + 1]]),
                8 => line[i] as u16,
                _ => {
                    let bit = i * bits;
                    ((line[bit / 8] >> (8 - bits - bit % 8)) & ((1u16 << bits) - 1) as u8) as u16
                }
            });
        }
    }
    Ok(RawMask { width: w, height: h, channels, values, indexed: info.color_type == png::ColorType::Indexed })
}

/// Decodes an index mask: a palette or grayscale PNG whose pixel values are class indices
/// (255 = ignore). Refuses colour masks, multi-channel masks and values outside
/// [0, classes) ∪ {255}, naming the value.
pub fn load_mask(path: &Path, classes: usize) -> Result<GrayImage> {
    load_mask_mapped(path, classes, &LabelMap::IDENTITY)
}

/// [`load_mask`] with each stored value read through `map` first.
pub fn load_mask_mapped(path: &Path, classes: usize, map: &LabelMap) -> Result<GrayImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_mask_mapped(&bytes, path, classes, map)
}

/// [`load_mask`] on bytes in memory; `path` names them in errors.
pub fn decode_mask(bytes: &[u8], path: &Path, classes: usize) -> Result<GrayImage> {
    decode_mask_mapped(bytes, path, classes, &LabelMap::IDENTITY)
}

/// [`decode_mask`] with each stored value read through `map` first (a 16-bit value above 255
/// is refused as out of range, as it is without a map).
pub fn decode_mask_mapped(bytes: &[u8], path: &Path, classes: usize, map: &LabelMap) -> Result<GrayImage> {
    let raw = decode_mask_raw(bytes, path)?;
    match raw.channels {
        1 => {}
        2 => {
            return Err(Error::bad_file(
                path,
                "expected a single-channel index mask, found 2 channels (grayscale + alpha)",
            ));
        }
        _ => {
            return Err(Error::bad_file(
                path,
                "expected a single-channel index mask (palette or grayscale PNG), found RGB colours; \
                 map each colour to its class index (e.g. the VOC palette) first",
            ));
        }
    }
    let cols = raw.width as usize;
    let mapped = |v: u16| if v <= 255 { map.get(v as u8) as u16 } else { v };
    let mut out = Vec::with_capacity(raw.values.len());
    for (i, &stored) in raw.values.iter().enumerate() {
        let v = mapped(stored);
        if v != IGNORE_INDEX as u16 && v as usize >= classes {
            let count = raw.values.iter().filter(|&&u| u == stored).count();
            let through =
                if stored != v { format!(" (stored {stored}, through the label map)") } else { String::new() };
            return Err(Error::bad_file(
                path,
                format!(
                    "mask value {v}{through} at pixel ({}, {}) ({count} pixels) is outside [0, {classes}) and not \
                     {IGNORE_INDEX}; check --classes, --label-map or the labels",
                    i % cols,
                    i / cols
                ),
            ));
        }
        out.push(v as u8);
    }
    Ok(GrayImage::from_raw(raw.width, raw.height, out).expect("size matches"))
}

/// An image with its mask, checked to be the same size.
pub fn load_item(item: &Item, classes: usize) -> Result<(RgbImage, GrayImage)> {
    let image = load_image(&item.image)?;
    let mask = load_mask_mapped(&item.mask, classes, &item.map)?;
    if image.dimensions() != mask.dimensions() {
        return Err(Error::bad_file(
            &item.mask,
            format!(
                "mask is {}x{} but its image {} is {}x{}; expected the same size",
                mask.width(),
                mask.height(),
                item.image.display(),
                image.width(),
                image.height()
            ),
        ));
    }
    Ok((image, mask))
}

/// Paired training augmentation: random scale, pad (image with the mean, mask with 255), random
/// crop, horizontal flip.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Output side in pixels.
    pub crop: usize,
    /// Scale range, e.g. (0.5, 2.0).
    pub scale: (f32, f32),
    pub flip: bool,
}

/// Applies `aug` to one sample; returns the image and mask, both `crop × crop`.
pub fn augment(
    image: &RgbImage,
    mask: &GrayImage,
    aug: &Augment,
    norm: &Normalization,
    rng: &mut Rng,
) -> (RgbImage, GrayImage) {
    let s = rng.range(aug.scale.0, aug.scale.1);
    let (w, h) = image.dimensions();
    let (nw, nh) = (((w as f32 * s).round() as u32).max(1), ((h as f32 * s).round() as u32).max(1));
    let img = image::imageops::resize(image, nw, nh, FilterType::Triangle);
    let msk = image::imageops::resize(mask, nw, nh, FilterType::Nearest);
    let c = aug.crop as u32;
    let (pw, ph) = (nw.max(c), nh.max(c));
    let x0 = rng.below((pw - c + 1) as usize) as u32;
    let y0 = rng.below((ph - c + 1) as usize) as u32;
    let flip = aug.flip && rng.f32() < 0.5;
    let fill = mean_pixel(norm);
    let mut out_img = RgbImage::from_pixel(c, c, fill);
    let mut out_msk = GrayImage::from_pixel(c, c, image::Luma([IGNORE_INDEX]));
    for y in 0..c {
        let sy = y + y0;
        if sy >= nh {
            continue;
        }
        for x in 0..c {
            let sx = x + x0;
            if sx >= nw {
                continue;
            }
            let dx = if flip { c - 1 - x } else { x };
            out_img.put_pixel(dx, y, *img.get_pixel(sx, sy));
            out_msk.put_pixel(dx, y, *msk.get_pixel(sx, sy));
        }
    }
    (out_img, out_msk)
}

/// The pixel that normalizes to zero (the dataset mean the model expects).
pub fn mean_pixel(norm: &Normalization) -> Rgb<u8> {
    Rgb(norm.mean.map(|m| (m * 255.0).round().clamp(0.0, 255.0) as u8))
}

/// A batch ready for the model: normalized images and labels.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[n, 3, h, w]` (NCHW) or `[n, h, w, 3]` (NHWC), normalized.
    pub images: Vec<f32>,
    /// `[n, h, w]` class indices, 255 = ignore.
    pub masks: Vec<u8>,
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub ids: Vec<String>,
    pub layout: Layout,
}

impl Batch {
    /// Stacks samples, padding each to the largest size rounded up to `multiple` (image with
    /// the mean, mask with 255).
    pub fn stack(samples: Vec<(String, RgbImage, GrayImage)>, norm: &Normalization, multiple: usize) -> Batch {
        let round = |v: u32| (v as usize).div_ceil(multiple) * multiple;
        let h = samples.iter().map(|s| round(s.1.height())).max().unwrap_or(0);
        let w = samples.iter().map(|s| round(s.1.width())).max().unwrap_or(0);
        let n = samples.len();
        let mut images = vec![0f32; n * 3 * h * w];
        let mut masks = vec![IGNORE_INDEX; n * h * w];
        let mut ids = Vec::with_capacity(n);
        for (i, (id, img, msk)) in samples.into_iter().enumerate() {
            let (iw, ih) = (img.width() as usize, img.height() as usize);
            for y in 0..h {
                for x in 0..w {
                    let inside = x < iw && y < ih;
                    for c in 0..3 {
                        let v = if inside { img.get_pixel(x as u32, y as u32)[c] as f32 / 255.0 } else { norm.mean[c] };
                        let idx = match norm.layout {
                            Layout::Nchw => ((i * 3 + c) * h + y) * w + x,
                            Layout::Nhwc => ((i * h + y) * w + x) * 3 + c,
                        };
                        images[idx] = (v - norm.mean[c]) / norm.std[c];
                    }
                    if inside {
                        masks[(i * h + y) * w + x] = msk.get_pixel(x as u32, y as u32)[0];
                    }
                }
            }
            ids.push(id);
        }
        Batch { images, masks, n, h, w, ids, layout: norm.layout }
    }
}

/// Loads and stacks batches on a background thread (each batch's samples decoded and augmented
/// in parallel with rayon), keeping `depth` batches ready ahead of the consumer.
pub struct Loader {
    rx: mpsc::Receiver<Result<Batch>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// What a [`Loader`] should produce.
#[derive(Debug, Clone)]
pub struct LoaderSpec {
    pub items: Vec<Item>,
    /// Sample indices into `items` for each batch, in order.
    pub batches: Vec<Vec<usize>>,
    pub classes: usize,
    pub norm: Normalization,
    /// `Some` for training (random augmentation), `None` for evaluation (pad only).
    pub augment: Option<Augment>,
    /// For evaluation: `(height, width)` every image is resized to (bilinear; its mask nearest),
    /// for a graph fixed at that size.
    pub resize: Option<(usize, usize)>,
    /// Seeds the per-sample augmentation: `Rng::derive(seed, epoch, index)`.
    pub seed: u64,
    pub epoch: u64,
}

impl Loader {
    pub fn start(spec: LoaderSpec, depth: usize) -> Loader {
        let (tx, rx) = mpsc::sync_channel(depth.max(1));
        let handle = std::thread::spawn(move || {
            for idx in &spec.batches {
                let samples: Result<Vec<_>> = idx
                    .par_iter()
                    .map(|&i| {
                        let item = &spec.items[i];
                        let (img, msk) = load_item(item, spec.classes)?;
                        Ok(match &spec.augment {
                            Some(aug) => {
                                let mut rng = Rng::derive(spec.seed, spec.epoch, i as u64);
                                let (a, b) = augment(&img, &msk, aug, &spec.norm, &mut rng);
                                (item.id.clone(), a, b)
                            }
                            None => match spec.resize {
                                Some((h, w)) => {
                                    use image::imageops::{FilterType, resize};
                                    let (w, h) = (w as u32, h as u32);
                                    let img = resize(&img, w, h, FilterType::Triangle);
                                    (item.id.clone(), img, resize(&msk, w, h, FilterType::Nearest))
                                }
                                None => (item.id.clone(), img, msk),
                            },
                        })
                    })
                    .collect();
                let batch = samples.map(|s| Batch::stack(s, &spec.norm, spec.norm.size_multiple));
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    break;
                }
            }
        });
        Loader { rx, handle: Some(handle) }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Unblock the producer (its next send fails once the receiver is gone), then join.
        let (_, dead) = mpsc::sync_channel(1);
        drop(std::mem::replace(&mut self.rx, dead));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What a synthetic set looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SynthStyle {
    /// Small fine-tuning sets: 1–3 objects per image, four shapes (disc, square, triangle,
    /// diamond), one hue per class, striped backgrounds.
    #[default]
    Shapes,
    /// A pretraining corpus: 1–6 objects of eight other shapes (ellipse, ring, cross, star, bar,
    /// crescent, hexagon, blob) at scales from 4% to 45% of the image, partly outside it,
    /// occluding each other; five textures; five background kinds with unlabelled clutter;
    /// boundary bands 2 or 4 px wide and now and then a whole object marked 255 ("difficult").
    Corpus,
}

/// Settings of `segtune synth`.
#[derive(Debug, Clone, Copy)]
pub struct SynthOptions {
    /// Classes including background (class 0); objects come from classes 1..K.
    pub classes: usize,
    /// Training images (default 200).
    pub train: usize,
    /// Validation images (default 50).
    pub val: usize,
    /// Image side in pixels (default 128).
    pub size: u32,
    /// Seed: the same options write the same bytes (default 0).
    pub seed: u64,
    /// What the images look like (default `shapes`).
    pub style: SynthStyle,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions { classes: 6, train: 200, val: 50, size: 128, seed: 0, style: SynthStyle::Shapes }
    }
}

/// Writes a synthetic segmentation set in VOC layout: textured backgrounds with 1–3 objects of
/// classes 1..K (each class its own shape and colour family), later objects occluding earlier
/// ones, and a 255 band on object boundaries as VOC has.
pub fn synth(out: &Path, opts: &SynthOptions) -> Result<()> {
    if !(2..=255).contains(&opts.classes) {
        return Err(Error::BadArgument(format!(
            "--classes {}: expected 2..=255 (background plus objects)",
            opts.classes
        )));
    }
    if opts.size < 16 {
        return Err(Error::BadArgument(format!("--size {}: expected at least 16", opts.size)));
    }
    if out.exists() && !out.is_dir() {
        return Err(Error::bad_file(out, "expected a directory to write the set into, found a file"));
    }
    for sub in ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"] {
        let d = out.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    }
    let names = synth_class_names(opts.style, opts.classes);
    write_atomic(&out.join("classes.txt"), |f| {
        use std::io::Write;
        names.iter().try_for_each(|n| writeln!(f, "{n}"))
    })?;
    let palette = voc_palette();
    for (split, count, offset) in [("train", opts.train, 0u64), ("val", opts.val, 1u64 << 32)] {
        let ids: Vec<String> = (0..count).map(|i| format!("{split}_{i:05}")).collect();
        ids.par_iter().enumerate().try_for_each(|(i, id)| -> Result<()> {
            let mut rng = Rng::derive(opts.seed, offset, i as u64);
            let (img, mask) = match opts.style {
                SynthStyle::Shapes => synth_sample(opts.size, opts.classes, &mut rng),
                SynthStyle::Corpus => corpus_sample(opts.size, opts.classes, &mut rng),
            };
            let jpg = out.join("JPEGImages").join(format!("{id}.jpg"));
            write_atomic(&jpg, |f| {
                image::codecs::jpeg::JpegEncoder::new_with_quality(f, 95)
                    .encode_image(&img)
                    .map_err(std::io::Error::other)
            })?;
            write_index_png(&out.join("SegmentationClass").join(format!("{id}.png")), &mask, &palette)
        })?;
        let list = out.join("ImageSets/Segmentation").join(format!("{split}.txt"));
        write_atomic(&list, |f| {
            use std::io::Write;
            ids.iter().try_for_each(|id| writeln!(f, "{id}"))
        })?;
    }
    Ok(())
}

/// Shape and texture names of each style, indexed by [`class_look`].
const SHAPES_SHAPES: [&str; 4] = ["disc", "square", "triangle", "diamond"];
const SHAPES_TEXTURES: [&str; 3] = ["flat", "checker", "wave"];
const CORPUS_SHAPES: [&str; 8] = ["ellipse", "ring", "cross", "star", "bar", "crescent", "hexagon", "blob"];
const CORPUS_TEXTURES: [&str; 5] = ["flat", "checker", "wave", "radial", "speckle"];

/// The (shape, texture) indices that object class `c` (≥ 1) is drawn with in `style`.
fn class_look(style: SynthStyle, c: usize) -> (usize, usize) {
    match style {
        SynthStyle::Shapes => ((c - 1) % SHAPES_SHAPES.len(), c % SHAPES_TEXTURES.len()),
        SynthStyle::Corpus => ((c - 1) % CORPUS_SHAPES.len(), ((c - 1) / 8 + c % 2) % CORPUS_TEXTURES.len()),
    }
}

/// The class names of a synthetic set (written to `classes.txt`, which `segtune export` puts
/// in the model's metadata): `background`, then each class's shape and texture.
pub fn synth_class_names(style: SynthStyle, classes: usize) -> Vec<String> {
    let (shapes, textures): (&[&str], &[&str]) = match style {
        SynthStyle::Shapes => (&SHAPES_SHAPES, &SHAPES_TEXTURES),
        SynthStyle::Corpus => (&CORPUS_SHAPES, &CORPUS_TEXTURES),
    };
    let name = |c: usize| {
        let (shape, texture) = class_look(style, c);
        format!("{}-{}-{c}", shapes[shape], textures[texture])
    };
    std::iter::once("background".to_string()).chain((1..classes).map(name)).collect()
}

fn synth_sample(size: u32, classes: usize, rng: &mut Rng) -> (RgbImage, GrayImage) {
    let s = size as f32;
    // Background: a random low-saturation colour with stripes and noise.
    let base = [rng.range(60.0, 200.0), rng.range(60.0, 200.0), rng.range(60.0, 200.0)];
    let (freq, angle, amp) = (rng.range(0.05, 0.3), rng.range(0.0, std::f32::consts::PI), rng.range(5.0, 30.0));
    let mut img = RgbImage::new(size, size);
    let mut noise = Rng(rng.next_u64());
    for (x, y, p) in img.enumerate_pixels_mut() {
        let t = ((x as f32 * angle.cos() + y as f32 * angle.sin()) * freq).sin() * amp;
        for c in 0..3 {
            p[c] = (base[c] + t + noise.range(-12.0, 12.0)).clamp(0.0, 255.0) as u8;
        }
    }
    let mut mask = GrayImage::new(size, size);
    let objects = 1 + rng.below(3);
    for _ in 0..objects {
        let class = 1 + rng.below(classes - 1);
        let (shape, texture) = class_look(SynthStyle::Shapes, class);
        // Class colour family: hue fixed per class, jittered per object.
        let hue = (class as f32 * 0.61803) % 1.0;
        let color = hsv(hue + rng.range(-0.03, 0.03), 0.8, rng.range(0.6, 1.0));
        let (cx, cy) = (rng.range(0.15, 0.85) * s, rng.range(0.15, 0.85) * s);
        let r = rng.range(0.12, 0.3) * s;
        for y in 0..size {
            for x in 0..size {
                let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                let inside = match shape {
                    0 => dx * dx + dy * dy <= r * r,                             // disc
                    1 => dx.abs() <= r * 0.85 && dy.abs() <= r * 0.85,           // square
                    2 => dy <= r * 0.8 && dy >= -r * 0.8 + 2.0 * dx.abs() * 0.8, // triangle
                    _ => dx.abs() + dy.abs() <= r,                               // diamond
                };
                if inside {
                    let shade = match texture {
                        0 => 1.0,
                        1 => 0.8 + 0.2 * ((x / 4 + y / 4) % 2) as f32,
                        _ => 0.85 + 0.15 * ((x as f32 * 0.5).sin()),
                    };
                    img.put_pixel(x, y, Rgb(color.map(|v| (v * shade * 255.0) as u8)));
                    mask.put_pixel(x, y, image::Luma([class as u8]));
                }
            }
        }
    }
    // 255 band on boundaries: pixels whose 4-neighbourhood holds another label.
    ignore_boundaries(&mut mask, 1, |_, _| false);
    (img, mask)
}

/// One image of the pretraining corpus (see [`SynthStyle::Corpus`]). A class is a fixed
/// (shape, texture, hue) triple: class c has shape `(c-1) % 8`, texture `(c-1) / 8 + c % 2`
/// (mod 5) and a hue spread around the wheel, jittered per object, so telling classes apart
/// needs colour, shape and texture together.
fn corpus_sample(size: u32, classes: usize, rng: &mut Rng) -> (RgbImage, GrayImage) {
    let mut img = RgbImage::new(size, size);
    let mut noise = Rng(rng.next_u64());
    corpus_background(&mut img, rng, &mut noise);
    corpus_clutter(&mut img, rng);
    let mut mask = GrayImage::new(size, size);
    let mut difficult = GrayImage::new(size, size);
    let objects = 1 + rng.below(6);
    for _ in 0..objects {
        let class = 1 + rng.below(classes - 1);
        let object = CorpusObject::draw(class, classes, size, rng);
        object.paint(&mut img, &mut mask, &mut difficult, &mut noise);
    }
    // Boundary bands (every pixel within Manhattan distance 1 or 2 of another label), and
    // difficult objects marked 255 as a whole.
    let band = 1 + rng.below(2) as i32;
    ignore_boundaries(&mut mask, band, |x, y| difficult.get_pixel(x, y)[0] == 1);
    (img, mask)
}

/// A corpus image's background: five kinds (stripes, checker, gradient, blotches, flat), a random
/// colour pair each, with pixel noise.
fn corpus_background(img: &mut RgbImage, rng: &mut Rng, noise: &mut Rng) {
    use std::f32::consts::PI;
    let s = img.width() as f32;
    let kind = rng.below(5);
    let c0 = hsv(rng.f32(), rng.range(0.0, 0.5), rng.range(0.25, 0.9)).map(|v| v * 255.0);
    let c1 = hsv(rng.f32(), rng.range(0.0, 0.5), rng.range(0.25, 0.9)).map(|v| v * 255.0);
    let (freq, angle) = (rng.range(0.03, 0.4), rng.range(0.0, PI));
    let cell = 4 + rng.below(28) as u32;
    let (ca, sa) = (angle.cos(), angle.sin());
    for (x, y, p) in img.enumerate_pixels_mut() {
        let (fx, fy) = (x as f32, y as f32);
        let t = match kind {
            0 => 0.5 + 0.5 * ((fx * ca + fy * sa) * freq).sin(), // stripes
            1 => (((x / cell) + (y / cell)) % 2) as f32,         // checker
            2 => ((fx * ca + fy * sa) / (s * 1.5) + 0.5).clamp(0.0, 1.0), // gradient
            3 => 0.5 + 0.25 * ((fx * freq).sin() + (fy * freq * 0.7 + 1.3).cos()), // blotches
            _ => 0.0,                                            // flat
        };
        let n = noise.range(-1.0, 1.0) * 14.0;
        for c in 0..3 {
            p[c] = (c0[c] * (1.0 - t) + c1[c] * t + n).clamp(0.0, 255.0) as u8;
        }
    }
}

/// Unlabelled clutter: grey-ish rectangles that stay background.
fn corpus_clutter(img: &mut RgbImage, rng: &mut Rng) {
    let size = img.width();
    for _ in 0..rng.below(4) {
        let g = hsv(rng.f32(), rng.range(0.0, 0.25), rng.range(0.2, 0.95)).map(|v| (v * 255.0) as u8);
        let (x0, y0) = (rng.below(size as usize) as u32, rng.below(size as usize) as u32);
        let (w, h) = (1 + rng.below(size as usize / 4) as u32, 1 + rng.below(size as usize / 4) as u32);
        for y in y0..(y0 + h).min(size) {
            for x in x0..(x0 + w).min(size) {
                img.put_pixel(x, y, Rgb(g));
            }
        }
    }
}

/// One labelled object of a corpus image: its class's shape and texture, placed, sized, turned.
struct CorpusObject {
    class: usize,
    shape: usize,
    texture: usize,
    color: [f32; 3],
    centre: (f32, f32),
    r: f32,
    rot: (f32, f32),
    aspect: f32,
    lobes: [f32; 3],
    hard: bool,
    period: f32,
    size: u32,
}

impl CorpusObject {
    /// Draws the object's parameters from `rng` (in the order the corpus was generated with).
    fn draw(class: usize, classes: usize, size: u32, rng: &mut Rng) -> Self {
        use std::f32::consts::PI;
        let s = size as f32;
        let (shape, texture) = class_look(SynthStyle::Corpus, class);
        let hue = (class as f32 - 1.0) / (classes as f32 - 1.0).max(1.0) + rng.range(-0.02, 0.02);
        let color = hsv(hue, rng.range(0.55, 1.0), rng.range(0.5, 1.0));
        let centre = (rng.range(-0.05, 1.05) * s, rng.range(-0.05, 1.05) * s);
        let r = rng.range(0.04, 0.45) * s;
        let rot = rng.range(0.0, PI);
        let aspect = rng.range(0.35, 0.7);
        let lobes = [rng.range(0.0, 0.25), rng.range(0.0, 0.2), rng.range(0.0, 2.0 * PI)];
        let hard = rng.f32() < 0.04;
        let period = rng.range(3.0, 9.0);
        CorpusObject {
            class,
            shape,
            texture,
            color,
            centre,
            r,
            rot: (rot.cos(), rot.sin()),
            aspect,
            lobes,
            hard,
            period,
            size,
        }
    }

    /// Whether the point at rotated, radius-normalised `(u, v)` is inside the shape.
    fn inside(&self, u: f32, v: f32) -> bool {
        let (d, a, aspect, lobes) = ((u * u + v * v).sqrt(), v.atan2(u), self.aspect, self.lobes);
        match self.shape {
            0 => (u * u) + (v / aspect).powi(2) <= 1.0, // ellipse
            1 => (0.55..=1.0).contains(&d),             // ring
            2 => (u.abs() <= 0.3 && v.abs() <= 1.0) || (v.abs() <= 0.3 && u.abs() <= 1.0), // cross
            3 => d <= 0.45 + 0.55 * (0.5 + 0.5 * (5.0 * a).cos()).powi(3), // star
            4 => u.abs() <= 1.0 && v.abs() <= 0.22,     // bar
            5 => d <= 1.0 && ((u - 0.45).powi(2) + v * v).sqrt() > 0.75, // crescent
            6 => {
                // hexagon
                let (au, av) = (u.abs(), v.abs());
                av <= 0.866 && 0.866 * au + 0.5 * av <= 0.866
            }
            _ => d <= 0.75 + lobes[0] * (3.0 * a + lobes[2]).sin() + lobes[1] * (5.0 * a).cos(), // blob
        }
    }

    /// The texture's brightness at pixel `(x, y)`.
    fn shade(&self, x: u32, y: u32, u: f32, d: f32) -> f32 {
        let period = self.period;
        match self.texture {
            0 => 1.0,
            1 => 0.75 + 0.25 * (((x as f32 / period) as u32 + (y as f32 / period) as u32) % 2) as f32,
            2 => 0.8 + 0.2 * (u * 2.0 * period).sin(),
            3 => 0.7 + 0.3 * (1.0 - d.min(1.0)),
            _ => 0.8 + 0.2 * (((x / 2) ^ (y / 2)) % 3) as f32 / 2.0,
        }
    }

    /// Paints the object into the image, its class into the mask, and whether it is difficult.
    fn paint(&self, img: &mut RgbImage, mask: &mut GrayImage, difficult: &mut GrayImage, noise: &mut Rng) {
        let ((cx, cy), r, (rc, rs), size) = (self.centre, self.r, self.rot, self.size);
        let (x0, x1) = ((cx - r).max(0.0) as u32, ((cx + r).ceil().max(0.0) as u32).min(size));
        let (y0, y1) = ((cy - r).max(0.0) as u32, ((cy + r).ceil().max(0.0) as u32).min(size));
        for y in y0..y1 {
            for x in x0..x1 {
                let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                // Rotated coordinates, normalised by the radius.
                let (u, v) = ((dx * rc + dy * rs) / r, (-dx * rs + dy * rc) / r);
                if !self.inside(u, v) {
                    continue;
                }
                let shade = self.shade(x, y, u, (u * u + v * v).sqrt());
                let n = noise.range(-6.0, 6.0);
                img.put_pixel(x, y, Rgb(self.color.map(|c| (c * shade * 255.0 + n).clamp(0.0, 255.0) as u8)));
                mask.put_pixel(x, y, image::Luma([self.class as u8]));
                difficult.put_pixel(x, y, image::Luma([self.hard as u8]));
            }
        }
    }
}

/// Marks 255 ("ignore") every pixel within Manhattan distance `band` of a pixel with another
/// label (band 1: the 4-neighbourhood), and every pixel `whole(x, y)` names (VOC's "difficult"
/// objects).
fn ignore_boundaries(mask: &mut GrayImage, band: i32, whole: impl Fn(u32, u32) -> bool) {
    let src = mask.clone();
    let (w, h) = (src.width() as i32, src.height() as i32);
    for y in 0..h {
        for x in 0..w {
            let v = src.get_pixel(x as u32, y as u32)[0];
            let differs = whole(x as u32, y as u32)
                || (-band..=band).any(|oy| {
                    (-band..=band).any(|ox| {
                        let (nx, ny) = (x + ox, y + oy);
                        ox.abs() + oy.abs() <= band
                            && (0..w).contains(&nx)
                            && (0..h).contains(&ny)
                            && src.get_pixel(nx as u32, ny as u32)[0] != v
                    })
                });
            if differs {
                mask.put_pixel(x as u32, y as u32, image::Luma([IGNORE_INDEX]));
            }
        }
    }
}

fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h = h.rem_euclid(1.0) * 6.0;
    let i = h.floor() as i32;
    let f = h - i as f32;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Writes `path` through a temporary file in the same directory and a rename, so a reader never
/// sees a partial file and a failure leaves any previous file intact.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(path, e))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        write(&mut w).map_err(|e| Error::io(path, e))?;
        use std::io::Write;
        w.flush().map_err(|e| Error::io(path, e))?;
    }
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    // The temporary file is private (0600); what it becomes is an ordinary file (0644), as a
    // model or mask another user or service reads must be.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(|e| Error::io(path, e))?;
    }
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Writes an index mask as an 8-bit palette PNG (atomically).
pub fn write_index_png(path: &Path, mask: &GrayImage, palette: &[[u8; 3]; 256]) -> Result<()> {
    write_atomic(path, |f| {
        let mut enc = png::Encoder::new(f, mask.width(), mask.height());
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(palette.iter().flatten().copied().collect::<Vec<u8>>());
        let mut w = enc.write_header().map_err(std::io::Error::other)?;
        w.write_image_data(mask.as_raw()).map_err(std::io::Error::other)?;
        w.finish().map_err(std::io::Error::other)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn atomic_writes_leave_an_ordinary_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        write_atomic(&path, |f| std::io::Write::write_all(f, b"x")).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
    }

    #[test]
    fn voc_palette_starts_as_voc() {
        let p = voc_palette();
        assert_eq!(p[0], [0, 0, 0]);
        assert_eq!(p[1], [128, 0, 0]);
        assert_eq!(p[2], [0, 128, 0]);
        assert_eq!(p[15], [192, 128, 128]);
    }

    #[test]
    fn rng_is_deterministic_and_uniformish() {
        let mut a = Rng::derive(1, 2, 3);
        let mut b = Rng::derive(1, 2, 3);
        assert_eq!(a.next_u64(), b.next_u64());
        assert_ne!(Rng::derive(1, 2, 3).next_u64(), Rng::derive(1, 2, 4).next_u64());
        let mean: f32 = (0..10000).map(|_| a.f32()).sum::<f32>() / 10000.0;
        assert!((mean - 0.5).abs() < 0.02);
        assert!((0..1000).all(|_| a.below(7) < 7));
    }

    #[test]
    fn augment_pads_with_ignore_and_keeps_pairs_aligned() {
        let norm = Normalization::IMAGENET;
        // Left half class 1 (white), right half class 2 (black).
        let img = RgbImage::from_fn(32, 32, |x, _| if x < 16 { Rgb([255; 3]) } else { Rgb([0; 3]) });
        let msk = GrayImage::from_fn(32, 32, |x, _| image::Luma([if x < 16 { 1 } else { 2 }]));
        let aug = Augment { crop: 64, scale: (0.5, 2.0), flip: true };
        for seed in 0..20 {
            let (i, m) = augment(&img, &msk, &aug, &norm, &mut Rng(seed));
            assert_eq!(i.dimensions(), (64, 64));
            for (x, y, p) in m.enumerate_pixels() {
                let c = i.get_pixel(x, y);
                // Bilinear image resizing blends colours across the class edge; check away from it.
                let edge = (x.saturating_sub(2)..(x + 3).min(64)).any(|nx| m.get_pixel(nx, y)[0] != p[0]);
                if edge && p[0] != 255 {
                    continue;
                }
                match p[0] {
                    1 => assert!(c[0] > 200, "class 1 pixels are white"),
                    2 => assert!(c[0] < 50, "class 2 pixels are black"),
                    255 => assert_eq!(*c, mean_pixel(&norm), "padding is the mean"),
                    v => panic!("nearest-neighbour only: unexpected label {v}"),
                }
            }
        }
    }

    #[test]
    fn batch_normalizes_and_pads_to_the_multiple() {
        let norm = Normalization::IMAGENET;
        let img = RgbImage::from_pixel(20, 10, Rgb([255, 0, 0]));
        let msk = GrayImage::from_pixel(20, 10, image::Luma([1]));
        let b = Batch::stack(vec![("a".into(), img, msk)], &norm, 16);
        assert_eq!((b.n, b.h, b.w), (1, 16, 32));
        assert!((b.images[0] - (1.0 - 0.485) / 0.229).abs() < 1e-6);
        assert_eq!(b.masks[0], 1);
        assert_eq!(b.masks[16 * 32 - 1], IGNORE_INDEX);
        assert!(b.images[16 * 32 - 1].abs() < 1e-6, "padding normalizes to 0");
    }
}
