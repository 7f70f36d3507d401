//! Backend operations implementations.

use alloc::borrow::Cow;
use burn_backend::DType;
use burn_std::{bf16, f16};

use crate::FlexTensor;

/// The `DType` that matches `isize` on the current platform.
#[cfg(target_pointer_width = "64")]
pub(crate) const INDEX_DTYPE: DType = DType::I64;
/// The `DType` that matches `isize` on the current platform.
#[cfg(target_pointer_width = "32")]
pub(crate) const INDEX_DTYPE: DType = DType::I32;

/// Minimum total element count for rayon fan-out on per-row or per-chunk loops.
/// Below this, task-dispatch overhead dominates the per-unit work.
#[cfg(feature = "rayon")]
pub(crate) const PARALLEL_THRESHOLD: usize = 256 * 1024;

/// Wrapper for raw mutable pointers that can be sent across rayon threads.
///
/// # Safety
///
/// The caller must ensure:
/// - The pointer remains valid for the lifetime of all uses
/// - No two threads write to the same offset
/// - No references to the underlying data exist during writes
#[cfg(feature = "rayon")]
pub(crate) struct SendMutPtr<T>(*mut T);

#[cfg(feature = "rayon")]
unsafe impl<T> Send for SendMutPtr<T> {}
#[cfg(feature = "rayon")]
unsafe impl<T> Sync for SendMutPtr<T> {}

#[cfg(feature = "rayon")]
impl<T> SendMutPtr<T> {
    pub(crate) fn new(ptr: *mut T) -> Self {
        Self(ptr)
    }

    /// Write `val` at the given element offset.
    ///
    /// # Safety
    /// Offset must be in bounds and no other thread may write to the same offset.
    pub(crate) unsafe fn write(&self, offset: usize, val: T) {
        unsafe { self.0.add(offset).write(val) }
    }

    /// Returns the raw pointer offset by `offset` elements.
    ///
    /// # Safety
    /// Offset must be in bounds.
    pub(crate) unsafe fn ptr_add(&self, offset: usize) -> *mut T {
        unsafe { self.0.add(offset) }
    }
}

/// Read a float tensor's storage as f32 values, regardless of source dtype.
/// Returns a borrowed slice for F32 (zero-copy) and an owned Vec for other
/// float dtypes (F64, F16, BF16).
///
/// Returns elements in underlying buffer order. Callers needing logical
/// iteration order must call `to_contiguous()` first.
///
/// # Panics
/// Panics if the tensor's dtype is not one of F32, F64, F16, or BF16.
pub(crate) fn float_storage_as_f32(tensor: &FlexTensor) -> Cow<'_, [f32]> {
    match tensor.dtype() {
        DType::F32 => Cow::Borrowed(tensor.storage::<f32>()),
        DType::F64 => Cow::Owned(tensor.storage::<f64>().iter().map(|&x| x as f32).collect()),
        DType::F16 => Cow::Owned(
            tensor
                .storage::<f16>()
                .iter()
                .map(|x| f32::from(*x))
                .collect(),
        ),
        DType::BF16 => Cow::Owned(
            tensor
                .storage::<bf16>()
                .iter()
                .map(|x| f32::from(*x))
                .collect(),
        ),
        other => panic!("float_storage_as_f32: unsupported dtype {:?}", other),
    }
}

pub mod activation;
pub mod attention;
pub mod binary;
mod bool;
pub mod cat;
pub mod comparison;
#[macro_use]
mod conv_common;
pub mod conv;
mod batch_norm;
mod conv_backward;
pub mod conv_transpose;
pub mod cumulative;
pub mod deform_conv;
pub mod expand;
#[cfg(feature = "fft")]
pub mod fft;
pub mod flip;
mod float;
pub mod gather_scatter;
pub mod grid_sample;
mod int;
pub mod interpolate;
pub mod mask;
pub mod matmul;
mod module;
pub mod pool;
mod qtensor;
pub mod reduce;
pub mod repeat_dim;
pub mod slice;
pub mod sort;
mod transaction;
pub mod unary;
pub mod unfold;

/// segtune's patch: its options, set by the application (this crate reads no environment).
pub mod patch {
    use core::sync::atomic::{AtomicBool, Ordering};

    static UPSTREAM_ONLY: AtomicBool = AtomicBool::new(false);
    static GEMM_TRACE: AtomicBool = AtomicBool::new(false);

    /// `true` turns the patch's convolution backward passes and BatchNorm off: burn-backend's
    /// defaults run instead, to measure or compare against upstream in the same binary
    /// (`VENDORED.md`). Ops already running are not affected.
    pub fn set_upstream_only(on: bool) {
        UPSTREAM_ONLY.store(on, Ordering::Relaxed);
    }

    /// Whether [`set_upstream_only`] turned the patch's kernels off.
    pub fn upstream_only() -> bool {
        UPSTREAM_ONLY.load(Ordering::Relaxed)
    }

    /// `true` makes each traced GEMM call print its shape and wall time to stderr
    /// (`crate::ops::gemm_trace`).
    pub fn set_gemm_trace(on: bool) {
        GEMM_TRACE.store(on, Ordering::Relaxed);
    }

    pub(crate) fn gemm_trace_on() -> bool {
        GEMM_TRACE.load(Ordering::Relaxed)
    }
}

/// Whether segtune's patch is off ([`patch::set_upstream_only`]).
pub(crate) fn upstream_only() -> bool {
    patch::upstream_only()
}

/// `f(i, chunk)` for each `size`-element chunk of `buf` (segtune's patch), in parallel with
/// rayon; an empty `buf` or `size` 0 runs nothing.
pub(crate) fn for_each_chunk(buf: &mut [f32], size: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        buf.par_chunks_mut(size.max(1)).enumerate().for_each(|(i, chunk)| f(i, chunk));
    }
    #[cfg(not(feature = "rayon"))]
    for (i, chunk) in buf.chunks_mut(size.max(1)).enumerate() {
        f(i, chunk);
    }
}

/// The threading segtune's patch hands gemm: all of rayon's threads when it has them.
pub(crate) fn gemm_parallelism() -> gemm::Parallelism {
    #[cfg(feature = "rayon")]
    {
        gemm::Parallelism::Rayon(0)
    }
    #[cfg(not(feature = "rayon"))]
    gemm::Parallelism::None
}

/// One GEMM call's trace (segtune's patch): with [`patch::set_gemm_trace`] on, each call site's
/// guard prints `GEMM <site> <m> <n> <k> <wall ns>` to stderr when dropped, after the call;
/// `bench/gemm_trace.sh` sums them per shape. Off, a guard is one flag load.
#[cfg(feature = "std")]
pub(crate) struct GemmTrace(Option<(std::time::Instant, &'static str, [usize; 3])>);

/// Starts the trace of a `[m, k] · [k, n]` product at `site` (see [`GemmTrace`]).
#[cfg(feature = "std")]
pub(crate) fn gemm_trace(site: &'static str, m: usize, n: usize, k: usize) -> GemmTrace {
    GemmTrace(patch::gemm_trace_on().then(|| (std::time::Instant::now(), site, [m, n, k])))
}

/// Without std there is nothing to print to: no trace.
#[cfg(not(feature = "std"))]
pub(crate) fn gemm_trace(_site: &'static str, _m: usize, _n: usize, _k: usize) {}

#[cfg(feature = "std")]
impl Drop for GemmTrace {
    fn drop(&mut self) {
        if let Some((t, site, [m, n, k])) = self.0 {
            std::eprintln!("GEMM {site} {m} {n} {k} {}", t.elapsed().as_nanos());
        }
    }
}
