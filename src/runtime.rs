//! onnxruntime through `ort`: finding `libonnxruntime` (ORT_DYLIB_PATH, segtune's cache, or the
//! pinned PyPI wheel provisioned into that cache), the one process-wide environment, sessions.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ndarray::{Array4, ArrayView4};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use crate::error::{Error, Result};
use crate::layout::{Layout, Normalization};
use crate::onnx::ModelProto;

/// The onnxruntime release segtune provisions (ort's `api-30` works with 1.30 and later).
pub const ORT_VERSION: &str = "1.31.1";

/// How to fix a missing runtime, shown in every such error.
const FIX: &str = "set ORT_DYLIB_PATH to a libonnxruntime.so (>= 1.30), e.g. from `pip install onnxruntime==1.31.1` \
(site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1), or make `python3 -m pip` available so segtune can fetch it";

/// segtune's per-user cache: `$SEGTUNE_CACHE_DIR`, else `$XDG_CACHE_HOME/segtune`, else
/// `~/.cache/segtune`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SEGTUNE_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("segtune"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("segtune"))
}

fn cached_library() -> Option<PathBuf> {
    cache_dir().map(|d| d.join(format!("onnxruntime-{ORT_VERSION}")).join(format!("libonnxruntime.so.{ORT_VERSION}")))
}

/// Finds `libonnxruntime`: `ORT_DYLIB_PATH`, then the cache, then the PyPI wheel provisioned
/// into the cache (announced once on stderr).
pub fn locate_library() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::Runtime(format!("ORT_DYLIB_PATH={} is not a file; {FIX}", p.display())))
        };
    }
    let target = cached_library().ok_or_else(|| Error::Runtime(format!("no cache directory (HOME unset); {FIX}")))?;
    if target.is_file() {
        return Ok(target);
    }
    // One process provisions at a time; the others wait and then find the library in place.
    let dir = target.parent().expect("cache path has a parent");
    let _lock = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::File::create(dir.join(".lock")))
        .and_then(|f| f.lock().map(|_| f))
        .map_err(|e| Error::Runtime(format!("locking {}: {e}; {FIX}", dir.display())))?;
    if target.is_file() {
        return Ok(target);
    }
    provision(&target)
        .map_err(|e| Error::Runtime(format!("libonnxruntime not found and could not be fetched ({e}); {FIX}")))?;
    eprintln!("segtune: fetched onnxruntime {ORT_VERSION} from PyPI into {}", target.display());
    Ok(target)
}

/// Downloads the pinned `onnxruntime` wheel with pip and extracts its shared library into
/// `target`, through a temporary file and a rename so a concurrent or interrupted run never
/// leaves a partial library behind.
fn provision(target: &Path) -> std::result::Result<(), String> {
    let dir = target.parent().expect("cache path has a parent");
    let work = tempfile::tempdir_in(dir).map_err(|e| format!("temp dir in {}: {e}", dir.display()))?;
    let python = std::env::var("SEGTUNE_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"])
        .arg(format!("onnxruntime=={ORT_VERSION}"))
        .arg("-d")
        .arg(work.path())
        .output()
        .map_err(|e| format!("running {python} -m pip: {e}"))?;
    if !out.status.success() {
        return Err(format!("pip download failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let wheel = std::fs::read_dir(work.path())
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or("pip downloaded no wheel")?;
    let member = format!("onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}");
    let partial = work.path().join("libonnxruntime.partial");
    let script = "import sys, zipfile, shutil\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    shutil.copyfileobj(src, dst)";
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(&wheel)
        .arg(&member)
        .arg(&partial)
        .output()
        .map_err(|e| format!("running {python}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "extracting {member} from {}: {}",
            wheel.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    std::fs::rename(&partial, target).map_err(|e| format!("moving into {}: {e}", target.display()))
}

static ENVIRONMENT: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();

/// The process-wide onnxruntime environment (ort allows one per process).
pub fn environment() -> Result<&'static ort::environment::Environment> {
    ENVIRONMENT
        .get_or_init(|| {
            let lib = locate_library().map_err(|e| e.to_string())?;
            let builder =
                ort::init_from(&lib).map_err(|e| format!("onnxruntime: loading {}: {e}; {FIX}", lib.display()))?;
            builder.with_name("segtune").build().map_err(|e| format!("onnxruntime: creating environment: {e}"))
        })
        .as_ref()
        .map_err(|e| Error::Runtime(e.trim_start_matches("onnxruntime: ").to_string()))
}

/// Where onnxruntime runs a model (`--provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// onnxruntime's CPU kernels.
    #[default]
    Cpu,
    /// CUDAExecutionProvider (an onnxruntime-gpu build).
    Cuda,
    /// TensorrtExecutionProvider, falling back to CUDA and the CPU for what TensorRT cannot run.
    Tensorrt,
}

impl Provider {
    fn flag(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::Tensorrt => "tensorrt",
        }
    }

    /// The execution provider to register, or `None` for the CPU; an error naming what the
    /// loaded library has where it lacks this one.
    fn dispatch(self) -> Result<Option<ort::ep::ExecutionProviderDispatch>> {
        use ort::ep::{CUDA, ExecutionProvider, TensorRT};
        let available = match self {
            Provider::Cpu => return Ok(None),
            Provider::Cuda => CUDA::is_available(),
            Provider::Tensorrt => TensorRT::is_available(),
        };
        if !available.map_err(|e| Error::Runtime(format!("asking onnxruntime for its providers: {e}")))? {
            return Err(Error::BadArgument(format!(
                "--provider {}: {} has no {}; it has {}. Point ORT_DYLIB_PATH at an onnxruntime-gpu build's \
                 libonnxruntime.so, or use --provider cpu",
                self.flag(),
                library_name(),
                self.name(),
                available_providers().join(", ")
            )));
        }
        Ok(Some(match self {
            Provider::Tensorrt => TensorRT::default().build().error_on_failure(),
            _ => CUDA::default().build().error_on_failure(),
        }))
    }

    /// The error for a provider the library has but could not start: its own libraries (CUDA,
    /// cuDNN, TensorRT) or a driver missing, which is the machine's lack, not the model's.
    fn not_started(self, detail: &str) -> Error {
        // onnxruntime's status text leads with its source location: keep what follows "FAIL : ".
        let detail = detail.rsplit_once("FAIL : ").map_or(detail, |(_, d)| d).trim();
        Error::BadArgument(format!(
            "--provider {}: {} has {} but could not start it: {detail}. It needs the NVIDIA driver and the \
             CUDA{} libraries that build was made with on the loader path (LD_LIBRARY_PATH); or use --provider cpu",
            self.flag(),
            library_name(),
            self.name(),
            if self == Provider::Tensorrt { ", cuDNN and TensorRT" } else { " and cuDNN" },
        ))
    }

    fn name(self) -> &'static str {
        use ort::ep::{CPU, CUDA, ExecutionProvider, TensorRT};
        match self {
            Provider::Cpu => CPU::NAME,
            Provider::Cuda => CUDA::NAME,
            Provider::Tensorrt => TensorRT::NAME,
        }
    }
}

/// The onnxruntime library's path, for messages.
fn library_name() -> String {
    locate_library().map(|p| p.display().to_string()).unwrap_or_else(|_| "onnxruntime".into())
}

/// Which of the providers `--provider` names the loaded onnxruntime library was built with.
pub fn available_providers() -> Vec<&'static str> {
    use ort::ep::{self, ExecutionProvider};
    fn has<E: ExecutionProvider>() -> Option<&'static str> {
        E::is_available().ok().filter(|&a| a).map(|_| E::NAME)
    }
    [has::<ep::CPU>(), has::<ep::CUDA>(), has::<ep::TensorRT>()].into_iter().flatten().collect()
}

/// An onnxruntime session over a segmentation model with one image input and logits output.
pub struct OrtModel {
    session: Session,
    origin: String,
}

impl OrtModel {
    /// A session over ONNX bytes; `threads` = 0 lets onnxruntime choose.
    pub fn from_bytes(bytes: &[u8], origin: &str, threads: usize) -> Result<Self> {
        Self::with_options(bytes, origin, threads, true)
    }

    /// As [`from_bytes`](Self::from_bytes); `spinning` = false stops onnxruntime's idle threads
    /// from busy-waiting between ops, for pipelines whose other stages need the cores.
    pub fn with_options(bytes: &[u8], origin: &str, threads: usize, spinning: bool) -> Result<Self> {
        Self::build(bytes, origin, threads, spinning, false, Provider::Cpu)
    }

    /// A one-thread session that logs nothing: for probing the sizes a graph takes, where
    /// onnxruntime's refusals are expected answers, not errors to show.
    fn quiet(bytes: &[u8], origin: &str) -> Result<Self> {
        Self::build(bytes, origin, 1, true, true, Provider::Cpu)
    }

    fn build(
        bytes: &[u8],
        origin: &str,
        threads: usize,
        spinning: bool,
        quiet: bool,
        provider: Provider,
    ) -> Result<Self> {
        let env = environment()?;
        let fail = |e: String| Error::bad_file(origin, format!("onnxruntime refused the model: {e}"));
        let mut builder = Session::builder(env).map_err(|e| fail(e.to_string()))?;
        if quiet {
            builder = builder.with_log_level(ort::logging::LogLevel::Fatal).map_err(|e| fail(e.to_string()))?;
        }
        builder = builder.with_optimization_level(GraphOptimizationLevel::All).map_err(|e| fail(e.to_string()))?;
        if threads > 0 {
            builder = builder.with_intra_threads(threads).map_err(|e| fail(e.to_string()))?;
        }
        if !spinning {
            builder = builder.with_intra_op_spinning(false).map_err(|e| fail(e.to_string()))?;
        }
        if let Some(ep) = provider.dispatch()? {
            builder = builder.with_execution_providers([ep]).map_err(|e| provider.not_started(&e.to_string()))?;
        }
        let session = builder.commit_from_memory(bytes).map_err(|e| fail(e.to_string()))?;
        Ok(OrtModel { session, origin: origin.to_string() })
    }

    /// The file (or description) the session was made from, for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Runs the model on an input batch laid out as `layout` and keeps its first output where
    /// onnxruntime put it (no copy); [`OrtOutput::logits`] views it NCHW.
    pub fn run_output(&mut self, input: ArrayView4<'_, f32>, layout: Layout) -> Result<OrtOutput> {
        let fail = |e: String| Error::Runtime(format!("running {}: {e}", self.origin));
        let tensor = TensorRef::from_array_view(input).map_err(|e| fail(e.to_string()))?;
        let outputs = self.session.run(ort::inputs![tensor]).map_err(|e| fail(e.to_string()))?;
        let (_, value) = outputs.into_iter().next().ok_or_else(|| fail("the model has no output".into()))?;
        Ok(OrtOutput { value, layout, origin: self.origin.clone() })
    }

    /// Runs the model and copies out every output, in graph order, as `(shape, values)`.
    pub fn run_outputs(&mut self, input: ArrayView4<'_, f32>) -> Result<Vec<(Vec<usize>, Vec<f32>)>> {
        let fail = |e: String| Error::Runtime(format!("running {}: {e}", self.origin));
        let tensor = TensorRef::from_array_view(input).map_err(|e| fail(e.to_string()))?;
        let outputs = self.session.run(ort::inputs![tensor]).map_err(|e| fail(e.to_string()))?;
        outputs
            .into_iter()
            .map(|(_, value)| {
                let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| fail(e.to_string()))?;
                Ok((shape.iter().map(|&d| d as usize).collect(), data.to_vec()))
            })
            .collect()
    }

    /// Runs the model and hands each output's values, in graph order, to `visit` (no copy).
    pub fn visit_outputs(&mut self, input: ArrayView4<'_, f32>, mut visit: impl FnMut(usize, &[f32])) -> Result<()> {
        let fail = |e: String| Error::Runtime(format!("running {}: {e}", self.origin));
        let tensor = TensorRef::from_array_view(input).map_err(|e| fail(e.to_string()))?;
        let outputs = self.session.run(ort::inputs![tensor]).map_err(|e| fail(e.to_string()))?;
        for (i, (_, value)) in outputs.into_iter().enumerate() {
            let (_, data) = value.try_extract_tensor::<f32>().map_err(|e| fail(e.to_string()))?;
            visit(i, data);
        }
        Ok(())
    }

    /// Runs the model on an input laid out as `layout` and returns the logits NCHW
    /// (`[N, classes, H, W]`, a copy): NHWC outputs (tf2onnx exports of Keras) are transposed.
    pub fn run_logits(&mut self, input: ArrayView4<'_, f32>, layout: Layout) -> Result<Array4<f32>> {
        Ok(self.run_output(input, layout)?.logits()?.as_standard_layout().into_owned())
    }
}

/// The first output of one [`OrtModel`] run, in onnxruntime's own buffer: taking it costs no
/// copy, and it can move to another thread while the session runs the next batch.
pub struct OrtOutput {
    value: ort::value::DynValue,
    layout: Layout,
    origin: String,
}

impl OrtOutput {
    /// The logits as `[N, classes, H, W]`: a view of onnxruntime's buffer (an NHWC output is
    /// viewed with its axes permuted, not copied).
    pub fn logits(&self) -> Result<ArrayView4<'_, f32>> {
        let fail = |e: String| Error::Runtime(format!("reading the output of {}: {e}", self.origin));
        let out = self.value.try_extract_array::<f32>().map_err(|e| fail(e.to_string()))?;
        let out = out.into_dimensionality::<ndarray::Ix4>().map_err(|e| fail(format!("expected a 4-D output: {e}")))?;
        Ok(match self.layout {
            Layout::Nchw => out,
            Layout::Nhwc => out.permuted_axes([0, 3, 1, 2]),
        })
    }

    /// [`logits`](Self::logits), checked to hold one channel per class of the `classes` the
    /// model's metadata (or graph) promises: a model whose output disagrees is refused, not
    /// argmaxed into out-of-range masks.
    pub fn class_logits(&self, classes: usize) -> Result<ArrayView4<'_, f32>> {
        let logits = self.logits()?;
        check_channels(logits.shape()[1], classes, &self.origin)?;
        Ok(logits)
    }
}

/// `channels`, the class axis of a model's output, against the `classes` it is said to have.
pub fn check_channels(channels: usize, classes: usize, origin: &str) -> Result<()> {
    if channels == classes {
        return Ok(());
    }
    Err(Error::bad_file(
        origin,
        format!(
            "expected {classes} output channels (one per class, as its metadata segtune.classes or graph says), \
             found {channels}: the output is not this model's logits"
        ),
    ))
}

/// The input sizes a graph runs at, as onnxruntime showed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct InputShape {
    /// The batch size the graph is fixed at (`None`: any).
    pub batch: Option<usize>,
    /// The height and width it is fixed at (`None`: any multiple of the model's size multiple).
    pub size: Option<(usize, usize)>,
}

impl InputShape {
    /// "any size", "64×64 only", with the batch where it is fixed.
    pub fn describe(&self) -> String {
        let size = self.size.map_or("any size".to_string(), |(h, w)| format!("{h}×{w} only"));
        match self.batch {
            Some(b) => format!("{size}, batches of {b} only"),
            None => size,
        }
    }
}

/// `model` made to run at the sizes it can. onnxruntime enforces an input's declared dims and
/// the most common export declares a fixed height and width (`dynamic_axes` on the batch only)
/// though its graph computes every shape from the input: each fixed batch, height or width is
/// made symbolic, then checked by running onnxruntime at the declared size and at another
/// (2 size multiples larger, one image more). What fails there is fixed inside the graph (a
/// fully static export hard-codes its ASPP pooling's upsampling size) and stays declared.
/// Returns the edited graph (`None`: a graph that declares no fixed size stays as it is).
pub fn runnable(model: &ModelProto, norm: &Normalization, origin: &str) -> Result<(Option<ModelProto>, InputShape)> {
    use crate::graph::{declared_input, with_symbolic_input};
    use prost::Message;
    let d = declared_input(model, norm.layout);
    if d == Default::default() {
        return Ok((None, InputShape::default()));
    }
    let m = norm.size_multiple;
    let base = (d.batch.unwrap_or(1), d.height.unwrap_or(4 * m), d.width.unwrap_or(4 * m));
    let relaxed = with_symbolic_input(model, norm.layout, true, true);
    let mut session = OrtModel::quiet(&relaxed.encode_to_vec(), origin)?;
    let mut runs = |(n, h, w): (usize, usize, usize)| {
        let shape = match norm.layout {
            Layout::Nchw => (n, 3, h, w),
            Layout::Nhwc => (n, h, w, 3),
        };
        session.run_logits(Array4::<f32>::zeros(shape).view(), norm.layout).map(|_| ())
    };
    runs(base)?;
    let (other_batch, other_h, other_w) = (base.0 + 1, base.1 + 2 * m, base.2 + 2 * m);
    if runs((other_batch, other_h, other_w)).is_ok() {
        return Ok((Some(relaxed), InputShape::default()));
    }
    let size_free = runs((base.0, other_h, other_w)).is_ok();
    let batch_free = runs((other_batch, base.1, base.2)).is_ok();
    let shape = InputShape { batch: (!batch_free).then_some(base.0), size: (!size_free).then_some((base.1, base.2)) };
    Ok((Some(with_symbolic_input(model, norm.layout, batch_free, size_free)), shape))
}

/// Makes a checkpoint's graph [`runnable`] (once), so that everything onnxruntime runs or
/// segtune writes from it has the sizes it can take, and returns them.
pub fn prepare(ckpt: &mut crate::model::Checkpoint) -> Result<InputShape> {
    if let Some(shape) = ckpt.input {
        return Ok(shape);
    }
    let (proto, shape) = runnable(&ckpt.proto, &ckpt.normalization, &ckpt.origin())?;
    if let Some(proto) = proto {
        ckpt.proto = proto;
        ckpt.edited = true;
    }
    ckpt.input = Some(shape);
    Ok(shape)
}

/// An ONNX segmentation model file opened for onnxruntime, as `validate` and `infer` run it: its
/// external data read in, its sizes made symbolic where its graph allows ([`runnable`]), its
/// normalization, layout and classes from segtune's metadata (else the graph's output).
pub struct OpenedModel {
    pub session: OrtModel,
    pub norm: Normalization,
    pub classes: usize,
    /// `segtune.class_names`, where it names `classes` classes.
    pub class_names: Option<Vec<String>>,
    /// The sizes the graph runs at.
    pub input: InputShape,
    /// The test-time pipeline its metadata records (native where none).
    pub recorded: crate::pipeline::Pipeline,
    /// The graph's final bilinear Resize, where it was taken out for the mask's upsampling to
    /// do (the session's output is then the logits before it: [`crate::final_resize`]).
    pub upsampling: Option<crate::upsample::Upsampling>,
    /// The layout of the session's output: the input's, or NCHW where a Transpose to NHWC after
    /// the final Resize was taken out with it.
    pub output_layout: Layout,
}

impl OpenedModel {
    /// Opens `path` with `threads` onnxruntime threads (0: its default) on `provider`;
    /// `spinning` as in [`OrtModel::with_options`]; with `fold_resize`, the graph's final
    /// bilinear Resize is left to the caller ([`upsampling`](Self::upsampling)).
    pub fn open(path: &Path, threads: usize, spinning: bool, provider: Provider, fold_resize: bool) -> Result<Self> {
        use prost::Message;
        let mut proto = crate::onnx::read_model(path)?;
        crate::graph::inline_external(&mut proto, path.parent()).map_err(|e| Error::bad_file(path, e))?;
        crate::model::check_input_rank(&proto, path)?;
        let meta = crate::onnx::metadata(&proto);
        let norm = Normalization::from_metadata(&meta).map_err(|e| Error::bad_file(path, e))?;
        let classes = crate::onnx::model_classes(&proto, norm.layout.class_axis(), path)?;
        let class_names = meta
            .get("segtune.class_names")
            .map(|v| v.split(',').map(String::from).collect::<Vec<_>>())
            .filter(|n| n.len() == classes);
        let origin = path.display().to_string();
        let (runnable, input) = runnable(&proto, &norm, &origin)?;
        let graph = runnable.as_ref().unwrap_or(&proto);
        let folded = if fold_resize { crate::final_resize::without_final_resize(graph, norm.layout) } else { None };
        let (bytes, upsampling, output_layout) = match folded {
            Some(f) => {
                (f.model.encode_to_vec(), Some(f.upsampling), if f.transposed { Layout::Nchw } else { norm.layout })
            }
            None => (graph.encode_to_vec(), None, norm.layout),
        };
        let session = OrtModel::build(&bytes, &origin, threads, spinning, false, provider)?;
        let recorded = crate::pipeline::Pipeline::recorded(&meta, norm).map_err(|e| Error::bad_file(path, e))?;
        Ok(OpenedModel { session, norm, classes, class_names, input, recorded, upsampling, output_layout })
    }

    /// The pipeline to run `path` (this model) with: the recorded one, `--size`/`--square`
    /// overriding it, and the graph's fixed size over both.
    pub fn pipeline(&self, path: &Path, size: Option<usize>, square: bool) -> Result<crate::pipeline::Pipeline> {
        let flagged = self.recorded.overridden(size, square).map_err(Error::BadArgument)?;
        flagged.fitted(self.input.size).map_err(|e| Error::bad_file(path, e))
    }
}
