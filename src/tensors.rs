//! Tensor and array helpers shared by the commands: batches as burn tensors or ndarray views in
//! the model's layout, seeded inputs, conversions between burn and ndarray, the per-pixel
//! argmax over classes, comparing two batches of logits, and raw little-endian f32 files.

use burn::tensor::{Device, Int, Tensor, TensorData};
use ndarray::{Array4, ArrayView4};

use crate::data::Batch;
use crate::error::{Error, Result};
use crate::layout::{Layout, Normalization};
use crate::rng::Rng;

/// The values of a raw little-endian f32 file (a fixture, a bench's batch) holding `expected`
/// values where given.
pub fn read_f32(path: &std::path::Path, expected: Option<usize>) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.len() % 4 != 0 || expected.is_some_and(|n| n * 4 != bytes.len()) {
        let want = expected.map_or("a multiple of 4".to_string(), |n| (n * 4).to_string());
        return Err(Error::bad_file(path, format!("expected {want} bytes of f32, found {}", bytes.len())));
    }
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// A deterministic batch of images in [0, 1], normalized for the model: `[N, 3, S, S]` (NCHW) or
/// `[N, S, S, 3]` (NHWC), drawn from [`Rng`] so it is identical on every platform.
pub fn seeded_input(batch: usize, size: usize, norm: &Normalization, seed: u64) -> Array4<f32> {
    let mut rng = Rng(seed.wrapping_add(0x9E37_79B9_7F4A_7C15));
    let nchw = Array4::from_shape_fn((batch, 3, size, size), |(_, c, _, _)| (rng.f32() - norm.mean[c]) / norm.std[c]);
    match norm.layout {
        Layout::Nchw => nchw,
        Layout::Nhwc => nchw.permuted_axes([0, 2, 3, 1]).as_standard_layout().to_owned(),
    }
}

/// Converts an ndarray batch to a burn tensor on `device`.
pub fn to_tensor(a: ArrayView4<'_, f32>, device: &Device) -> Tensor<4> {
    let shape = a.shape().to_vec();
    let data: Vec<f32> = a.iter().copied().collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// Converts a burn tensor to an ndarray batch.
pub fn to_array(t: Tensor<4>) -> Array4<f32> {
    let dims = t.dims();
    let data = t.into_data().try_into_vec::<f32>().expect("float tensor");
    Array4::from_shape_vec((dims[0], dims[1], dims[2], dims[3]), data).expect("dims match data")
}

/// The class of each pixel of `[N, C, H, W]` logits (the first of equal maxima), in `[N, H, W]`
/// order.
pub fn argmax_classes(logits: ArrayView4<'_, f32>) -> Vec<u8> {
    let (n, c, h, w) = logits.dim();
    let mut out = Vec::with_capacity(n * h * w);
    for i in 0..n {
        for y in 0..h {
            for x in 0..w {
                let best = (0..c).fold((0, f32::NEG_INFINITY), |b, k| {
                    let v = logits[[i, k, y, x]];
                    if v > b.1 { (k, v) } else { b }
                });
                out.push(best.0 as u8);
            }
        }
    }
    out
}

/// Max |Δ|, mean |Δ| and argmax agreement (over axis 1) of two logit batches of equal shape.
pub fn compare_logits(a: &Array4<f32>, b: &Array4<f32>) -> (f32, f32, f64) {
    assert_eq!(a.shape(), b.shape(), "logit shapes differ");
    let (mut max, mut sum) = (0f32, 0f64);
    for (x, y) in a.iter().zip(b.iter()) {
        let d = (x - y).abs();
        max = if d.is_nan() { f32::INFINITY } else { max.max(d) };
        sum += d as f64;
    }
    let (pa, pb) = (argmax_classes(a.view()), argmax_classes(b.view()));
    let agree = pa.iter().zip(&pb).filter(|(x, y)| x == y).count();
    (max, (sum / a.len().max(1) as f64) as f32, agree as f64 / pa.len().max(1) as f64)
}

/// A batch's images (in the model's layout) and label maps as tensors.
pub fn batch_tensors(batch: &Batch, device: &Device) -> (Tensor<4>, Tensor<3, Int>) {
    (image_tensor(batch, device), target_tensor(batch, device))
}

/// A batch's images as a tensor in the model's layout.
pub fn image_tensor(batch: &Batch, device: &Device) -> Tensor<4> {
    let shape = batch.layout.shape(batch.n, batch.h, batch.w);
    Tensor::from_data(TensorData::new(batch.images.clone(), shape), device)
}

/// A batch's label maps as an integer tensor `[N, H, W]`.
pub fn target_tensor(batch: &Batch, device: &Device) -> Tensor<3, Int> {
    let masks: Vec<i64> = batch.masks.iter().map(|&v| v as i64).collect();
    Tensor::from_data(TensorData::new(masks, [batch.n, batch.h, batch.w]), device)
}

/// A batch's images as an array in the model's layout.
pub fn batch_view(batch: &Batch) -> Result<ArrayView4<'_, f32>> {
    ArrayView4::from_shape(batch.layout.shape(batch.n, batch.h, batch.w), &batch.images)
        .map_err(|e| Error::Runtime(format!("batch of {} images: {e}", batch.n)))
}

/// Per-pixel argmax over classes of `[N, C, H, W]` logits on their device (burn's argmax; on a GPU
/// only the classes come back).
pub fn argmax_labels(logits: Tensor<4>) -> Vec<u8> {
    let [n, _, h, w] = logits.dims();
    let idx = logits.argmax(1).reshape([n * h * w]);
    idx.into_data().iter::<i64>().map(|v| v as u8).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn raw_f32_files_are_read_and_a_wrong_length_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.f32");
        let values = [1.5f32, -2.0, 0.25];
        std::fs::write(&path, values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        assert_eq!(super::read_f32(&path, Some(3)).unwrap(), values);
        assert_eq!(super::read_f32(&path, None).unwrap(), values);
        let err = super::read_f32(&path, Some(4)).unwrap_err().to_string();
        assert!(err.contains("x.f32") && err.contains("expected 16 bytes of f32, found 12"), "{err}");
        std::fs::write(&path, [0u8; 5]).unwrap();
        let err = super::read_f32(&path, None).unwrap_err().to_string();
        assert!(err.contains("expected a multiple of 4 bytes of f32, found 5"), "{err}");
    }
}
