//! Where burn runs (`--device cpu|wgpu|cuda`), and what a GPU device needs before segtune hands
//! it work: a missing driver, library or adapter is one line naming what is missing (exit 2),
//! not a panic inside cudarc, cubecl or wgpu.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where training runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// burn's flex CPU backend (always available).
    Cpu,
    /// burn's wgpu backend (Vulkan/Metal/DX12), cargo feature `wgpu`.
    Wgpu,
    /// burn's CUDA backend (CUDA C++ through NVRTC), cargo feature `cuda`.
    Cuda,
}

/// The autodiff device of `kind`, checked first ([`check`]).
pub fn training_device(kind: DeviceKind) -> Result<Device> {
    check(kind)?;
    Ok(plain_device(kind).autodiff())
}

/// The device of `kind` without autodiff (for evaluation), unchecked.
fn plain_device(kind: DeviceKind) -> Device {
    match kind {
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => Device::cuda(0),
        _ => crate::model::cpu_device(),
    }
}

/// Whether `kind` can run here: built in, and for a GPU, its driver, libraries and a device
/// present, and a first tensor computed on it (the probe catches what only panics tell).
pub fn check(kind: DeviceKind) -> Result<()> {
    let flag = format!("{kind:?}").to_lowercase();
    let unavailable = |why: String| Error::BadArgument(format!("--device {flag}: {why}; use --device cpu"));
    match kind {
        DeviceKind::Cpu => return Ok(()),
        DeviceKind::Wgpu if !cfg!(feature = "wgpu") => {}
        DeviceKind::Cuda if !cfg!(feature = "cuda") => {}
        _ => {
            #[cfg(feature = "cuda")]
            if kind == DeviceKind::Cuda {
                cuda_libraries().map_err(unavailable)?;
            }
            return probe(kind).map_err(unavailable);
        }
    }
    Err(Error::BadArgument(format!(
        "--device {flag}: this segtune was built without the `{flag}` feature; rebuild with `cargo build --features {flag}`"
    )))
}

/// What CUDA needs at run time, as cudarc and cubecl-cuda look for it.
#[cfg(feature = "cuda")]
fn cuda_libraries() -> std::result::Result<(), String> {
    // SAFETY: each only tries to dlopen the library by its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("libcuda.so (the NVIDIA driver) not found: no NVIDIA driver on this machine".into());
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("libnvrtc.so (CUDA's runtime compiler) not found: install the CUDA toolkit, or PyTorch's \
             nvidia-cuda-nvrtc package, and put its lib folder on LD_LIBRARY_PATH"
            .into());
    }
    let headers = cubecl_cuda::install::cuda_path().map(|p| p.join("include"));
    if !headers.as_ref().is_some_and(|p| p.join("cuda.h").is_file() || p.join("cuda_runtime.h").is_file()) {
        return Err(format!(
            "the CUDA headers were not found ({}): NVRTC compiles the kernels against them; set CUDA_PATH to a CUDA \
             installation",
            headers.map_or("no CUDA_PATH, /usr/local/cuda, /opt/cuda or /usr/bin/nvcc".into(), |p| p
                .display()
                .to_string())
        ));
    }
    cudarc::driver::result::init().map_err(|e| format!("the NVIDIA driver does not start: {e}"))?;
    match cudarc::driver::result::device::get_count() {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err("no CUDA device".into()),
        Err(e) => Err(format!("counting CUDA devices: {e}")),
    }
}

/// Adds two numbers on `kind` and reads the result back, with panics caught (wgpu without an
/// adapter, CUDA without a usable device panic inside burn's backends).
fn probe(kind: DeviceKind) -> std::result::Result<(), String> {
    use burn::tensor::{Tensor, TensorData};
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(|| {
        let device = plain_device(kind);
        let t = Tensor::<1>::from_data(TensorData::new(vec![1f32, 2.0], [2]), &device);
        t.sum().into_scalar::<f32>()
    });
    std::panic::set_hook(hook);
    match result {
        Ok(3.0) => Ok(()),
        Ok(v) => Err(format!("a first computation on it gave {v} for 1 + 2")),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "no message".into());
            let first = msg.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
            Err(format!("no usable device ({first})"))
        }
    }
}

/// The CPU backend's options from segtune's environment, passed to vendor/burn-flex (which reads
/// none itself): `SEGTUNE_UPSTREAM_FLEX=1` runs burn-backend's upstream convolution backward
/// passes and BatchNorm instead of the patch's kernels (to measure the patch in one binary:
/// `UPSTREAM=1 bench/train_vs_torch.sh`), `SEGTUNE_GEMM_TRACE` set prints each GEMM call's
/// shape and time (`bench/gemm_trace.sh`).
pub fn configure_cpu_kernels() {
    burn_flex::ops::patch::set_upstream_only(std::env::var_os("SEGTUNE_UPSTREAM_FLEX").is_some_and(|v| v == "1"));
    burn_flex::ops::patch::set_gemm_trace(std::env::var_os("SEGTUNE_GEMM_TRACE").is_some());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_is_always_there_and_a_missing_feature_says_how_to_build_it() {
        assert!(check(DeviceKind::Cpu).is_ok());
        for (kind, built) in [(DeviceKind::Wgpu, cfg!(feature = "wgpu")), (DeviceKind::Cuda, cfg!(feature = "cuda"))] {
            if built {
                continue;
            }
            let e = check(kind).unwrap_err().to_string();
            assert!(e.contains("built without the") && e.contains("cargo build --features"), "{e}");
        }
    }
}
