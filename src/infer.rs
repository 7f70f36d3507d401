//! `segtune infer`: batch inference with onnxruntime on new images. Inputs are files, folders
//! or globs; images are decoded and prepared by the model's test-time pipeline (the one validate
//! scores with: `crate::pipeline`) in parallel while onnxruntime runs the previous batch, and
//! masks are written while it runs the next; logits are upsampled back to each image's original
//! size before the argmax. Writes palette PNG masks, optional overlays, and `summary.json`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use image::{Rgb, RgbImage};
use ndarray::{Array4, s};
use rayon::prelude::*;
use serde::Serialize;

use crate::data::{self, load_image, voc_palette};
use crate::error::{Error, Result};
use crate::imaging::normalize_into;
use crate::layout::Normalization;
use crate::pipeline::Pipeline;
use crate::runtime::{OpenedModel, OrtOutput, Provider};
use crate::upsample::{Upsampling, logits_to_mask};

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
    /// Longer side of the model input in pixels, rounded up to the model's size multiple: images
    /// keep their aspect ratio and are padded with the mean to that multiple. `None`: the
    /// pipeline the model records (an export's: native resolution, as validate scores it).
    pub size: Option<usize>,
    /// Letterbox every image into a `size × size` square instead (every input the same shape).
    pub square: bool,
    /// Where onnxruntime runs the model.
    pub provider: Provider,
    /// Let onnxruntime's threads spin-wait between parallel sections (default off: on few
    /// cores the stages beside it then get less time and the whole run is slower).
    pub spin: bool,
    /// Sliding-window tiles, test-time scales and flips.
    pub test_time: crate::predict::TestTimeArgs,
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
    /// How the images became model input, and where that came from.
    pub pipeline: Pipeline,
    /// Where onnxruntime ran the model.
    pub provider: Provider,
    /// Whether onnxruntime's threads spin-waited (`--spin`).
    pub spinning: bool,
    /// Tiles, scales and flips beyond one forward pass ("" for none).
    pub test_time: String,
    /// The graph's final upsampling, where segtune did it within the mask's own (the logits
    /// before it from onnxruntime, never the full-resolution ones): "bilinear ×4×4 (align_corners)".
    pub folded_resize: Option<String>,
    pub seconds: f64,
    pub images_per_s: f64,
    /// Time onnxruntime spent running, in seconds (with tiles or augmented views, the
    /// blending of their scores too).
    pub run_seconds: f64,
    /// Time spent decoding and preparing the images, and upsampling, taking the argmax and
    /// writing, in seconds. These stages run beside onnxruntime at the lowest CPU priority, in
    /// the time its threads leave idle, so that they do not slow it down.
    pub decode_seconds: f64,
    pub write_seconds: f64,
}

/// The name each input's outputs get (relative to the output directory, no extension): its file
/// stem where stems are unique, else its path relative to the inputs' common folder (`a/x.jpg`
/// and `b/x.jpg` → `a/x`, `b/x`), else its file name (`x.jpg`, `x.png` in one folder). Never two
/// inputs one name: nothing is overwritten.
pub fn output_names(files: &[PathBuf]) -> Vec<PathBuf> {
    let unique = |names: &[PathBuf]| names.iter().collect::<std::collections::HashSet<_>>().len() == names.len();
    let stem = |p: &Path, name: &str| p.parent().unwrap_or(Path::new("")).join(name);
    let stems: Vec<PathBuf> = files.iter().map(|f| PathBuf::from(f.file_stem().unwrap_or(f.as_os_str()))).collect();
    if unique(&stems) {
        return stems;
    }
    let absolute: Vec<PathBuf> = files.iter().map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone())).collect();
    let mut root = absolute[0].parent().map(Path::to_path_buf).unwrap_or_default();
    while !absolute.iter().all(|f| f.starts_with(&root)) && root.pop() {}
    let relative: Vec<&Path> = absolute.iter().map(|f| f.strip_prefix(&root).unwrap_or(f)).collect();
    let by_stem: Vec<PathBuf> =
        relative.iter().map(|r| stem(r, &r.file_stem().unwrap_or_default().to_string_lossy())).collect();
    if unique(&by_stem) {
        return by_stem;
    }
    relative.iter().map(|r| stem(r, &r.file_name().unwrap_or_default().to_string_lossy())).collect()
}

/// A decoded image and its letterboxed model input.
struct Prepared {
    path: PathBuf,
    /// Where its outputs go, relative to the output directory, without extension.
    name: PathBuf,
    original: RgbImage,
    input: RgbImage,
    /// Size of the scaled image inside the (padded) input.
    inner: (usize, usize),
}

/// `segtune infer MODEL INPUT... --out DIR`. Unreadable images are reported and skipped; the
/// caller turns a non-empty `failed` into a non-zero exit.
pub fn infer(model: &Path, inputs: &[String], opts: &InferOptions) -> Result<InferSummary> {
    let started = Instant::now();
    if opts.batch == 0 {
        return Err(Error::BadArgument("--batch 0: expected at least 1".into()));
    }
    // One forward pass per image: the graph's final upsampling goes into the mask's own.
    let opened = OpenedModel::open(model, opts.threads, opts.spin, opts.provider, opts.test_time.is_plain())?;
    let pipeline = opened.pipeline(model, opts.size, opts.square)?;
    opts.test_time.check(pipeline.normalization.size_multiple)?;
    let OpenedModel { session, norm, classes, class_names, input: shape, upsampling, output_layout, .. } = opened;
    let class_names = class_names.unwrap_or_else(|| (0..classes).map(|i| format!("class_{i}")).collect());
    // A graph fixed at one batch size gets exactly that many rows (the last batch padded).
    let (batch, rows) = match shape.batch {
        Some(b) => (b, b),
        None => (opts.batch, 0),
    };
    let files = crate::inputs::expand_inputs(inputs)?;
    let names = output_names(&files);
    if opts.out.exists() && !opts.out.is_dir() {
        return Err(Error::bad_file(&opts.out, "expected an output directory, found a file"));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;

    let named: Vec<(PathBuf, PathBuf)> = files.iter().cloned().zip(names).collect();
    let pool = Arc::new(side_pool()?);
    let (decoded, producer) = spawn_decoder(named.chunks(batch).map(|c| c.to_vec()).collect(), pipeline, pool.clone());
    let (ran, writer) = spawn_writer(opts.out.clone(), opts.overlay, (classes, upsampling), pool);
    let mut runner = Runner {
        session,
        norm,
        output_layout,
        rows,
        classes,
        test_time: &opts.test_time,
        origin: model,
        input: Array4::zeros((0, 0, 0, 0)),
    };
    let (failed, run_seconds) = runner.run_all(decoded, ran, files.len(), started)?;
    let decode_seconds = producer.join().unwrap_or(0.0);
    let (images, write_seconds) =
        writer.join().map_err(|_| Error::Runtime("the mask writer thread panicked".into()))??;
    let seconds = started.elapsed().as_secs_f64();
    let summary = InferSummary {
        model: model.display().to_string(),
        images_per_s: images.len() as f64 / seconds,
        images,
        failed,
        class_names,
        pipeline,
        provider: opts.provider,
        spinning: opts.spin,
        test_time: opts.test_time.describe(),
        folded_resize: upsampling.map(|u| u.describe()),
        seconds,
        run_seconds,
        decode_seconds,
        write_seconds,
    };
    let json = serde_json::to_string_pretty(&summary).expect("summary serializes");
    data::write_atomic(&opts.out.join("summary.json"), |f| std::io::Write::write_all(f, json.as_bytes()))?;
    Ok(summary)
}

/// A batch's decoded images, and the files that could not be read (with why).
type Decoded = (Vec<Prepared>, Vec<(String, String)>);
/// A group of one input shape and its scores.
type Ran = (Vec<Prepared>, Scores);
/// The writer's results and the time it spent.
type Written = Result<(Vec<ImageResult>, f64)>;

/// Stage 1 (thread): decodes and prepares each batch's images in parallel.
/// Returns the time it spent.
fn spawn_decoder(
    chunks: Vec<Vec<(PathBuf, PathBuf)>>,
    pipeline: Pipeline,
    pool: Arc<rayon::ThreadPool>,
) -> (mpsc::Receiver<Decoded>, std::thread::JoinHandle<f64>) {
    let (tx, rx) = mpsc::sync_channel::<Decoded>(2);
    let producer = std::thread::spawn(move || {
        let mut seconds = 0.0;
        for chunk in chunks {
            let t = Instant::now();
            let results: Vec<std::result::Result<Prepared, (String, String)>> = pool.install(|| {
                chunk
                    .par_iter()
                    .map(|(p, name)| {
                        let original = load_image(p).map_err(|e| (p.display().to_string(), e.to_string()))?;
                        let (input, inner) = pipeline.prepare(&original);
                        Ok(Prepared { path: p.clone(), name: name.clone(), original, input, inner })
                    })
                    .collect()
            });
            seconds += t.elapsed().as_secs_f64();
            let (mut ok, mut bad) = (vec![], vec![]);
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
        seconds
    });
    (rx, producer)
}

/// Stage 3 (thread): upsamples, takes the argmax and writes while onnxruntime runs the next
/// group. Returns the results and the time it spent.
fn spawn_writer(
    out_dir: PathBuf,
    overlay: bool,
    (classes, upsampling): (usize, Option<Upsampling>),
    pool: Arc<rayon::ThreadPool>,
) -> (mpsc::SyncSender<Ran>, std::thread::JoinHandle<Written>) {
    let (wtx, wrx) = mpsc::sync_channel::<Ran>(2);
    let writer = std::thread::spawn(move || -> Written {
        let palette = voc_palette();
        let (mut results, mut seconds) = (vec![], 0.0);
        for (prepared, scores) in wrx {
            let t = Instant::now();
            let write =
                |p: &Prepared, mask: &image::GrayImage| write_outputs(p, mask, &out_dir, overlay, &palette, classes);
            let upsampled = |p: &Prepared, v: ndarray::ArrayView3<'_, f32>, up: Option<&Upsampling>| {
                let ((w, h), (iw, ih)) = (p.original.dimensions(), p.input.dimensions());
                let size = |w: u32, h: u32| (w as usize, h as usize);
                let mask = logits_to_mask(v, up, size(iw, ih), p.inner, size(w, h))
                    .map_err(|e| Error::Runtime(format!("{}: {e}", p.path.display())))?;
                write(p, &mask)
            };
            let batch: Result<Vec<ImageResult>> = pool.install(|| match &scores {
                Scores::Batch(output) => {
                    let logits = output.class_logits(classes)?;
                    prepared
                        .par_iter()
                        .enumerate()
                        .map(|(i, p)| upsampled(p, logits.slice(s![i, .., .., ..]), upsampling.as_ref()))
                        .collect()
                }
                Scores::Each(each) => {
                    prepared.par_iter().zip(each).map(|(p, a)| upsampled(p, a.view(), None)).collect()
                }
                Scores::Masks(masks) => prepared.par_iter().zip(masks).map(|(p, m)| write(p, m)).collect(),
            });
            results.extend(batch?);
            seconds += t.elapsed().as_secs_f64();
        }
        Ok((results, seconds))
    });
    (wtx, writer)
}

/// The threads of the decoding and writing stages, one per core, at the lowest CPU priority:
/// on a machine with few cores they would otherwise take cores from onnxruntime's threads in
/// the middle of its parallel ops (each op waits for its slowest thread), slowing every run;
/// at the lowest priority they run when onnxruntime's threads wait (between and inside ops,
/// and while it waits for the next batch).
fn side_pool() -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .thread_name(|i| format!("segtune-infer-side-{i}"))
        .start_handler(|_| lowest_priority())
        .build()
        .map_err(|e| Error::Runtime(format!("starting the decoding and writing threads: {e}")))
}

/// Gives the calling thread the lowest CPU priority (nice 19; Linux only, where a thread has
/// its own nice value). Lowering one's own priority needs no privilege; a failure leaves it.
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority take and return plain integers; no memory is shared.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
    }
}

/// Stage 2 (this thread): onnxruntime over each group of one input shape.
struct Runner<'a> {
    session: crate::runtime::OrtModel,
    norm: Normalization,
    /// The session's output layout ([`OpenedModel::output_layout`]).
    output_layout: crate::layout::Layout,
    rows: usize,
    classes: usize,
    test_time: &'a crate::predict::TestTimeArgs,
    origin: &'a Path,
    /// The model input, reused from batch to batch ([`fill_batch`]).
    input: Array4<f32>,
}

impl Runner<'_> {
    /// Runs every decoded batch and hands it to the writer; returns the unreadable files and
    /// onnxruntime's time.
    fn run_all(
        &mut self,
        decoded: mpsc::Receiver<Decoded>,
        ran: mpsc::SyncSender<Ran>,
        total: usize,
        started: Instant,
    ) -> Result<(Vec<(String, String)>, f64)> {
        let tty = std::io::stderr().is_terminal();
        let (mut failed, mut run_seconds, mut done) = (vec![], 0f64, 0usize);
        for (prepared, bad) in decoded {
            for (file, why) in bad {
                eprintln!("error: {file}: {why}; skipped");
                failed.push((file, why));
            }
            // One run per input shape: padding a smaller image to a larger one's shape would
            // change what the image pooling sees, and its prediction with it.
            for group in same_shape_groups(prepared) {
                let (scores, seconds) = self.scores(&group)?;
                run_seconds += seconds;
                done += group.len();
                if tty {
                    let rate = done as f64 / started.elapsed().as_secs_f64();
                    eprint!("\rinfer {done}/{total} images, {rate:.1} img/s ");
                }
                if ran.send((group, scores)).is_err() {
                    break;
                }
            }
        }
        if tty {
            eprintln!();
        }
        Ok((failed, run_seconds))
    }

    /// One group's scores: one batched run, each image's tiles band by band, or each image's
    /// augmented views; and onnxruntime's time (with tiles or views, their blending too).
    fn scores(&mut self, group: &[Prepared]) -> Result<(Scores, f64)> {
        let t = Instant::now();
        let tt = self.test_time;
        if tt.is_plain() {
            fill_batch(&mut self.input, group, self.rows, &self.norm);
            let t = Instant::now();
            let output = self.session.run_output(self.input.view(), self.output_layout)?;
            return Ok((Scores::Batch(output), t.elapsed().as_secs_f64()));
        }
        if let (Some(tile), true) = (tt.tile, tt.single_view()) {
            let mask = |p: &Prepared, s: &mut crate::runtime::OrtModel| {
                let prepared =
                    crate::predict::Prepared { input: &p.input, inner: p.inner, size: p.original.dimensions() };
                crate::predict::tiled_image_mask(s, &self.norm, &prepared, (tile, tt.overlap), self.classes)
            };
            let masks = group.iter().map(|p| mask(p, &mut self.session)).collect::<Result<_>>()?;
            return Ok((Scores::Masks(masks), t.elapsed().as_secs_f64()));
        }
        let mut each = vec![];
        for p in group {
            let (scores, _) = crate::predict::scores(&mut self.session, &self.norm, &p.input, p.inner, tt)?;
            crate::runtime::check_channels(scores.dim().0, self.classes, &self.origin.display().to_string())?;
            each.push(scores);
        }
        Ok((Scores::Each(each), t.elapsed().as_secs_f64()))
    }
}

/// A group's class scores: one onnxruntime run's output, or each image's own (tiles, scales,
/// flips: [`crate::predict`]).
enum Scores {
    Batch(OrtOutput),
    Each(Vec<ndarray::Array3<f32>>),
    /// Tiled images' masks, taken band by band ([`crate::predict::tiled_mask`]).
    Masks(Vec<image::GrayImage>),
}

/// `prepared` split into runs of one input shape each, in order of first appearance.
fn same_shape_groups(prepared: Vec<Prepared>) -> Vec<Vec<Prepared>> {
    let mut groups: Vec<Vec<Prepared>> = vec![];
    for p in prepared {
        match groups.iter_mut().find(|g| g[0].input.dimensions() == p.input.dimensions()) {
            Some(g) => g.push(p),
            None => groups.push(vec![p]),
        }
    }
    groups
}

/// Fills `input` with one shape's images as a normalized batch of at least `rows` rows (a graph
/// fixed at one batch size gets exactly that many; the extra rows are 0, the normalized mean).
/// The buffer is reused from batch to batch while the shape stays: a fresh 9 MB array per run
/// cost its page faults every time.
fn fill_batch(input: &mut Array4<f32>, group: &[Prepared], rows: usize, norm: &Normalization) {
    let n = group.len().max(rows);
    let (w, h) = group[0].input.dimensions();
    let (w, h) = (w as usize, h as usize);
    let shape = norm.layout.shape(n, h, w);
    if input.shape() != shape {
        *input = Array4::<f32>::zeros(shape);
    }
    for (i, p) in group.iter().enumerate() {
        normalize_into(input.slice_mut(s![i, .., .., ..]), &p.input, norm);
    }
    input.slice_mut(s![group.len().., .., .., ..]).fill(0.0);
}

/// Writes one image's mask (at its original size) as `STEM.png` (VOC palette) and, with
/// `overlay`, `overlay/STEM.jpg`.
fn write_outputs(
    p: &Prepared,
    mask: &image::GrayImage,
    out: &Path,
    overlay: bool,
    palette: &[[u8; 3]; 256],
    classes: usize,
) -> Result<ImageResult> {
    let (w, h) = p.original.dimensions();
    let file = |dir: &Path, ext: &str| -> Result<PathBuf> {
        let path = dir.join(format!("{}.{ext}", p.name.display()));
        let parent = path.parent().expect("joined onto a directory");
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        Ok(path)
    };
    let mask_path = file(out, "png")?;
    data::write_index_png(&mask_path, mask, palette)?;
    if overlay {
        let blended = RgbImage::from_fn(w, h, |x, y| {
            let (a, c) = (p.original.get_pixel(x, y), palette[mask.get_pixel(x, y)[0] as usize]);
            Rgb([0, 1, 2].map(|i| ((a[i] as u16 + c[i] as u16) / 2) as u8))
        });
        let path = file(&out.join("overlay"), "jpg")?;
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

    fn paths(v: &[&str]) -> Vec<PathBuf> {
        v.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn output_names_never_collide() {
        // Unique stems: the stem.
        assert_eq!(output_names(&paths(&["a/x.jpg", "b/y.png"])), paths(&["x", "y"]));
        // The same stem in two folders: the paths below their common folder.
        assert_eq!(output_names(&paths(&["/d/a/x.jpg", "/d/b/x.jpg", "/d/b/y.jpg"])), paths(&["a/x", "b/x", "b/y"]));
        // The same stem in one folder: the file name.
        assert_eq!(output_names(&paths(&["/d/x.jpg", "/d/x.png"])), paths(&["x.jpg", "x.png"]));
    }

    #[test]
    fn a_reused_batch_buffer_holds_only_this_batch() {
        let norm = Normalization { mean: [0.5; 3], std: [0.5; 3], ..Normalization::IMAGENET };
        let image = |v: u8| Prepared {
            path: PathBuf::new(),
            name: PathBuf::new(),
            original: RgbImage::new(1, 1),
            input: RgbImage::from_pixel(4, 2, Rgb([v; 3])),
            inner: (2, 4),
        };
        let mut input = Array4::zeros((0, 0, 0, 0));
        fill_batch(&mut input, &[image(255), image(255)], 2, &norm);
        assert_eq!(input.dim(), (2, 3, 2, 4));
        assert!(input.iter().all(|&x| x == 1.0));
        // A last, shorter batch of a graph fixed at 2 rows: the second row is the mean again.
        fill_batch(&mut input, &[image(0)], 2, &norm);
        assert!(input.slice(s![0, .., .., ..]).iter().all(|&x| x == -1.0));
        assert!(input.slice(s![1, .., .., ..]).iter().all(|&x| x == 0.0));
        // Another shape: a new buffer.
        fill_batch(&mut input, &[image(255)], 0, &norm);
        assert_eq!(input.dim(), (1, 3, 2, 4));
    }
}
