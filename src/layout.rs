//! How pixels become a model's input: the tensor layout (NCHW or NHWC) and the normalization,
//! read from a model's metadata, and the shape of a batch in either layout.

use std::collections::BTreeMap;

/// Input tensor layout of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Layout {
    /// `[N, 3, H, W]` (PyTorch exports).
    Nchw,
    /// `[N, H, W, 3]` (tf2onnx exports of Keras models).
    Nhwc,
}

impl Layout {
    /// The shape of `n` images of `h × w` RGB pixels in this layout.
    pub fn shape(self, n: usize, h: usize, w: usize) -> [usize; 4] {
        match self {
            Layout::Nchw => [n, 3, h, w],
            Layout::Nhwc => [n, h, w, 3],
        }
    }

    /// The class axis of the model's output, laid out as its input: 1 (NCHW) or 3 (NHWC).
    pub fn class_axis(self) -> usize {
        match self {
            Layout::Nchw => 1,
            Layout::Nhwc => 3,
        }
    }
}

/// How pixels in [0, 1] become model input: `(x - mean) / std` per channel, in `layout`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub layout: Layout,
    /// Input height and width must be multiples of this.
    pub size_multiple: usize,
}

impl Normalization {
    /// ImageNet mean/std, NCHW: smp and torchvision models.
    pub const IMAGENET: Normalization = Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        layout: Layout::Nchw,
        size_multiple: 16,
    };

    /// Reads `segtune.mean`, `segtune.std`, `segtune.layout`, `segtune.size_multiple` from
    /// `metadata_props`; what is absent defaults to [`Normalization::IMAGENET`].
    pub fn from_metadata(meta: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut n = Self::IMAGENET;
        let triple = |key: &str| -> Result<Option<[f32; 3]>, String> {
            let Some(v) = meta.get(key) else { return Ok(None) };
            let vals: Vec<f32> = v
                .split(',')
                .map(|s| s.trim().parse::<f32>())
                .collect::<Result<_, _>>()
                .map_err(|_| format!("metadata {key}: expected three comma-separated numbers, found {v:?}"))?;
            <[f32; 3]>::try_from(vals)
                .map(Some)
                .map_err(|_| format!("metadata {key}: expected three numbers, found {v:?}"))
        };
        if let Some(m) = triple("segtune.mean")? {
            n.mean = m;
        }
        if let Some(s) = triple("segtune.std")? {
            if s.iter().any(|&v| v <= 0.0) {
                return Err(format!("metadata segtune.std: expected positive values, found {s:?}"));
            }
            n.std = s;
        }
        match meta.get("segtune.layout").map(String::as_str) {
            None | Some("NCHW") => {}
            Some("NHWC") => n.layout = Layout::Nhwc,
            Some(other) => return Err(format!("metadata segtune.layout: expected NCHW or NHWC, found {other:?}")),
        }
        if let Some(v) = meta.get("segtune.size_multiple") {
            n.size_multiple =
                v.parse().ok().filter(|&m| m > 0).ok_or_else(|| {
                    format!("metadata segtune.size_multiple: expected a positive integer, found {v:?}")
                })?;
        }
        Ok(n)
    }
}
