//! Editing ONNX graphs before onnxruntime runs them or segtune writes them: external data read
//! in and written back out beside a file, and a fixed input size made symbolic.

use std::collections::HashMap;
use std::path::Path;

use crate::model::Layout;
use crate::onnx::{self, ModelProto, ValueInfoProto, proto};

/// Reads every external-data initializer of `model` into its `raw_data` (from `dir`, the
/// model's directory; locations outside it are refused). Returns whether there were any.
pub fn inline_external(model: &mut ModelProto, dir: Option<&Path>) -> Result<bool, String> {
    let g = model.graph.as_mut().expect("decoded models have a graph");
    let mut any = false;
    for t in g.initializer.iter_mut().filter(|t| onnx::is_external(t)) {
        let bytes = onnx::external_bytes(t, dir)?;
        t.raw_data = Some(bytes);
        t.data_location = None;
        t.external_data.clear();
        any = true;
    }
    Ok(any)
}

/// As [`inline_external`], from side files held in memory (`(location, bytes)`: the embedded
/// copies of a compiled-in model's side files).
pub fn inline_embedded(model: &mut ModelProto, files: &[(&str, &[u8])]) -> Result<bool, String> {
    let g = model.graph.as_mut().expect("decoded models have a graph");
    let mut any = false;
    for t in g.initializer.iter_mut().filter(|t| onnx::is_external(t)) {
        let (location, offset, length) = onnx::external_span(t, onnx::tensor_bytes(t)?)?;
        let (_, file) = files
            .iter()
            .find(|(name, _)| *name == location)
            .ok_or_else(|| format!("tensor {:?}: external data {location:?} is not embedded", t.name()))?;
        let bytes = onnx::external_slice(t, (offset, length), file.len() as u64, &location, |o, buf| {
            buf.copy_from_slice(&file[o as usize..o as usize + buf.len()]);
            Ok(())
        })?;
        t.raw_data = Some(bytes);
        t.data_location = None;
        t.external_data.clear();
        any = true;
    }
    Ok(any)
}

/// Moves the data of every initializer of at least `threshold` bytes out of `model` into one
/// buffer (to be written to the file `location` beside the model): each tensor records its
/// offset and length there, as onnx's `save_as_external_data` does. `location` is checked as the
/// reader checks it.
pub fn split_external(model: &mut ModelProto, location: &str, threshold: usize) -> Result<Vec<u8>, String> {
    onnx::check_external_location(location)?;
    let g = model.graph.as_mut().expect("decoded models have a graph");
    let mut data = Vec::new();
    for t in g.initializer.iter_mut() {
        let Some(raw) = t.raw_data.take_if(|r| r.len() >= threshold) else { continue };
        // Offsets aligned to 4 KiB, as onnx aligns them for memory mapping.
        data.resize(data.len().next_multiple_of(4096), 0);
        let entry = |k: &str, v: String| proto::StringStringEntryProto { key: Some(k.into()), value: Some(v) };
        t.external_data = vec![
            entry("location", location.to_string()),
            entry("offset", data.len().to_string()),
            entry("length", raw.len().to_string()),
        ];
        t.data_location = Some(proto::tensor_proto::DataLocation::External as i32);
        data.extend_from_slice(&raw);
    }
    Ok(data)
}

/// The batch, height and width a graph's image input declares as fixed numbers (`None` where
/// symbolic or absent), in `layout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeclaredInput {
    pub batch: Option<usize>,
    pub height: Option<usize>,
    pub width: Option<usize>,
}

/// Axes of batch, height and width in `layout`.
fn axes(layout: Layout) -> [usize; 3] {
    match layout {
        Layout::Nchw => [0, 2, 3],
        Layout::Nhwc => [0, 1, 2],
    }
}

fn dims_mut(v: &mut ValueInfoProto) -> Option<&mut Vec<proto::tensor_shape_proto::Dimension>> {
    match v.r#type.as_mut()?.value.as_mut()? {
        proto::type_proto::Value::TensorType(t) => t.shape.as_mut().map(|s| &mut s.dim),
        _ => None,
    }
}

/// What the image input of `model` declares (its first input that is not an initializer).
pub fn declared_input(model: &ModelProto, layout: Layout) -> DeclaredInput {
    let inputs = onnx::graph_inputs(onnx::graph(model));
    let Some(input) = inputs.first() else { return DeclaredInput::default() };
    let fixed = |axis: usize| match input.dims.get(axis) {
        Some(onnx::Dim::Fixed(n)) if *n > 0 => Some(*n as usize),
        _ => None,
    };
    let [b, h, w] = axes(layout);
    DeclaredInput { batch: fixed(b), height: fixed(h), width: fixed(w) }
}

/// `model` with its image input's (and outputs') batch made symbolic where `batch`, height and
/// width where `size`, and its intermediate shape annotations (`value_info`, which would hold
/// the old sizes) dropped. onnxruntime enforces an input's declared dims; burn never did.
pub fn with_symbolic_input(model: &ModelProto, layout: Layout, batch: bool, size: bool) -> ModelProto {
    use proto::tensor_shape_proto::dimension::Value as D;
    let mut model = model.clone();
    let image = onnx::graph_inputs(onnx::graph(&model)).first().map(|v| v.name.clone());
    let g = model.graph.as_mut().expect("decoded models have a graph");
    let [b, h, w] = axes(layout);
    let names: HashMap<usize, &str> = [(b, "batch"), (h, "height"), (w, "width")].into();
    let relax = |v: &mut ValueInfoProto| {
        let Some(dims) = dims_mut(v) else { return };
        for (axis, dim) in dims.iter_mut().enumerate() {
            let wanted = if axis == b { batch } else { size && (axis == h || axis == w) };
            if wanted && matches!(dim.value, Some(D::DimValue(_))) {
                dim.value = Some(D::DimParam(names[&axis].to_string()));
            }
        }
    };
    for v in g.input.iter_mut().filter(|v| Some(v.name()) == image.as_deref()) {
        relax(v);
    }
    for v in g.output.iter_mut() {
        relax(v);
    }
    g.value_info.clear();
    model
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_with_input(dims: &[i64]) -> ModelProto {
        use proto::tensor_shape_proto::{Dimension, dimension::Value as D};
        let info = |name: &str, dims: &[i64]| ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(proto::TypeProto {
                value: Some(proto::type_proto::Value::TensorType(proto::type_proto::Tensor {
                    elem_type: Some(1),
                    shape: Some(proto::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| Dimension { value: Some(D::DimValue(d)), ..Default::default() })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let raw = |name: &str, n: usize| onnx::TensorProto {
            name: Some(name.into()),
            dims: vec![n as i64],
            data_type: Some(1),
            raw_data: Some((0..n as u32).flat_map(|v| (v as f32).to_le_bytes()).collect()),
            ..Default::default()
        };
        ModelProto {
            ir_version: Some(8),
            graph: Some(onnx::GraphProto {
                input: vec![info("input", dims)],
                output: vec![info("output", &[dims[0], 6, dims[2], dims[3]])],
                value_info: vec![info("hidden", &[1, 8, 32, 32])],
                initializer: vec![raw("small", 3), raw("big", 2000)],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn fixed_sizes_become_symbolic_where_asked() {
        let m = model_with_input(&[1, 3, 64, 64]);
        let d = declared_input(&m, Layout::Nchw);
        assert_eq!(d, DeclaredInput { batch: Some(1), height: Some(64), width: Some(64) });
        let size_only = with_symbolic_input(&m, Layout::Nchw, false, true);
        assert_eq!(declared_input(&size_only, Layout::Nchw), DeclaredInput { batch: Some(1), ..Default::default() });
        let out = onnx::ValueInfo::from_proto(&onnx::graph(&size_only).output[0]);
        assert_eq!(out.to_string(), "output [1, 6, height, width] (float32)");
        assert!(onnx::graph(&size_only).value_info.is_empty());
        let all = with_symbolic_input(&m, Layout::Nchw, true, true);
        assert_eq!(declared_input(&all, Layout::Nchw), DeclaredInput::default());
        // NHWC: [N, H, W, 3].
        let nhwc = model_with_input(&[2, 32, 48, 3]);
        assert_eq!(
            declared_input(&nhwc, Layout::Nhwc),
            DeclaredInput { batch: Some(2), height: Some(32), width: Some(48) }
        );
    }

    #[test]
    fn external_data_round_trips_and_stays_inside_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = model_with_input(&[1, 3, 64, 64]);
        let original = m.clone();
        let data = split_external(&mut m, "m.onnx.data", 1024).unwrap();
        let g = onnx::graph(&m);
        assert!(!onnx::is_external(&g.initializer[0]), "3 floats stay inline");
        assert!(onnx::is_external(&g.initializer[1]));
        assert_eq!(data.len(), 8000);
        std::fs::write(dir.path().join("m.onnx.data"), &data).unwrap();
        assert!(inline_external(&mut m, Some(dir.path())).unwrap());
        assert_eq!(m, original);
        for bad in ["../m.onnx.data", "/tmp/m.onnx.data", ""] {
            let e = split_external(&mut m.clone(), bad, 1024).unwrap_err();
            assert!(e.contains("must be a relative path inside the model's directory"), "{e}");
        }
    }
}
