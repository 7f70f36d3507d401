//! Editing ONNX graphs before onnxruntime runs them or segtune writes them: a model's weights
//! and BatchNorm statistics written into its graph (Identity aliases un-shared, the classifier
//! and the class dimension resized), the backbone cut out as a graph of its own, external data
//! read in and written back out beside a file, and a fixed input size made symbolic.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result as SegResult};
use burn::store::ModuleSnapshot;
use burn::store::burn_pack::Tensor as PackTensor;

use crate::model::{Checkpoint, Layout, ModelInfo, SegModel, Split};
use crate::onnx::{self, IdentityResolver, ModelProto, TensorProto, ValueInfoProto, proto};

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

pub(crate) fn dims_mut(v: &mut ValueInfoProto) -> Option<&mut Vec<proto::tensor_shape_proto::Dimension>> {
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

fn f32_bytes(t: &TensorProto, dir: Option<&Path>) -> Result<Vec<u8>, String> {
    Ok(onnx::tensor_f32(t, dir)?.iter().flat_map(|v| v.to_le_bytes()).collect())
}

fn set_data(t: &mut TensorProto, dims: &[usize], bytes: Vec<u8>) {
    t.dims = dims.iter().map(|&d| d as i64).collect();
    t.data_type = Some(onnx::DATA_TYPE_FLOAT);
    t.float_data.clear();
    t.raw_data = Some(bytes);
    t.data_location = None;
    t.external_data.clear();
}

/// Tensors (a burnpack's, or a module's `collect`) by burn path: shape and little-endian f32 bytes,
/// as [`weights_into_graph`] takes them.
pub fn tensors_by_name(tensors: Vec<burn::store::burn_pack::Tensor>) -> HashMap<String, (Vec<usize>, Vec<u8>)> {
    tensors
        .into_iter()
        .map(|t| {
            let bytes = t.to_bytes().map(|b| b.to_vec()).unwrap_or_default();
            (t.name.clone(), (t.shape.to_vec(), bytes))
        })
        .collect()
}

/// The graph of `source` with `trained`'s tensors (burn path → shape and little-endian f32 bytes)
/// written into its initializers: each parameter's slot found through the checkpoint's node map
/// and `Identity` aliases (an alias whose trained value now differs from the tensor it shared gets
/// an initializer of its own), the classifier and the output's class dimension resized to
/// `classes`. `weights` names where the tensors came from, for errors. Returns the graph, the
/// tensors written and those un-shared.
pub fn weights_into_graph(
    source: &Checkpoint,
    trained: &HashMap<String, (Vec<usize>, Vec<u8>)>,
    classes: usize,
    weights: &Path,
) -> SegResult<(ModelProto, usize, usize)> {
    let mut proto: ModelProto = source.proto.clone();
    let class_axis = source.normalization.layout.class_axis();
    let source_classes = onnx::output_classes(onnx::graph(&proto), class_axis);
    let classifier = source.info.classifier();
    let (mut written, mut unshared) = (0, 0);
    {
        let g = proto.graph.as_mut().expect("decoded models have a graph");
        // Per parameter: its node in this graph, the input slot, and the initializer it reads
        // (after following Identity nodes).
        let sources: Vec<(usize, usize, String)> = {
            let resolver = IdentityResolver::new(g);
            source
                .info
                .params
                .iter()
                .map(|e| {
                    let node = source.node_index(e.node);
                    let value = &g.node[node].input[e.input];
                    (node, e.input, resolver.resolve(value).to_string())
                })
                .collect()
        };
        let index: HashMap<String, usize> =
            g.initializer.iter().enumerate().map(|(i, t)| (t.name().to_string(), i)).collect();
        // Pass 1: parameters that read their initializer directly; pass 2: Identity aliases,
        // which keep sharing only while their trained value equals the shared one.
        for pass in 0..2 {
            for (e, (node, input, init)) in source.info.params.iter().zip(&sources) {
                let value = g.node[*node].input[*input].clone();
                let direct = &value == init;
                if direct != (pass == 0) {
                    continue;
                }
                let slot = index[init.as_str()];
                let old_dims: Vec<usize> = g.initializer[slot].dims.iter().map(|&d| d as usize).collect();
                let (dims, bytes) = trained_tensor(trained, e.burn, init, &old_dims, classifier.contains(&e.burn))
                    .map_err(|m| Error::bad_file(weights, format!("{m} ({})", source.info.name)))?;
                if direct {
                    set_data(&mut g.initializer[slot], dims, bytes.clone());
                } else {
                    let shared =
                        f32_bytes(&g.initializer[slot], None).map_err(|m| Error::bad_file(source.origin(), m))?;
                    if &shared == bytes && old_dims == *dims {
                        written += 1;
                        continue;
                    }
                    let name = format!("{value}.segtune");
                    let mut t = TensorProto { name: Some(name.clone()), ..Default::default() };
                    set_data(&mut t, dims, bytes.clone());
                    g.initializer.push(t);
                    g.node[*node].input[*input] = name;
                    unshared += 1;
                }
                written += 1;
            }
        }
        if classes != source_classes.unwrap_or(classes) {
            set_output_classes(g, classes, class_axis);
        }
    }
    Ok((proto, written, unshared))
}

/// The trained tensor `burn` for the initializer `init` of `old_dims`: the same shape, or, for
/// the classifier, the same but for its class count.
fn trained_tensor<'a>(
    trained: &'a HashMap<String, (Vec<usize>, Vec<u8>)>,
    burn: &str,
    init: &str,
    old_dims: &[usize],
    class_head: bool,
) -> Result<&'a (Vec<usize>, Vec<u8>), String> {
    let t = trained
        .get(burn)
        .ok_or_else(|| format!("expected tensor {burn}, found none: the run does not match the ONNX"))?;
    let dims = &t.0;
    if dims != old_dims && !(class_head && dims.len() == old_dims.len() && dims[1..] == old_dims[1..]) {
        return Err(format!(
            "tensor {burn} has shape {dims:?}, the ONNX initializer {init:?} {old_dims:?}: the run does not match the ONNX"
        ));
    }
    Ok(t)
}

/// The graph's output (and its value_info) declared with `classes` on the class axis.
fn set_output_classes(g: &mut onnx::GraphProto, classes: usize, class_axis: usize) {
    for o in &mut g.output {
        set_class_dim(o, classes, class_axis);
    }
    let output = g.output.first().map(|o| o.name().to_string()).unwrap_or_default();
    for v in g.value_info.iter_mut().filter(|v| v.name() == output) {
        set_class_dim(v, classes, class_axis);
    }
}

fn set_class_dim(v: &mut onnx::ValueInfoProto, classes: usize, axis: usize) {
    use onnx::proto::{tensor_shape_proto::dimension::Value as D, type_proto::Value as T};
    if let Some(T::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut())
        && let Some(dim) = t.shape.as_mut().and_then(|s| s.dim.get_mut(axis))
        && matches!(dim.value, Some(D::DimValue(_)))
    {
        dim.value = Some(D::DimValue(classes as i64));
    }
}

/// The backbone of `info`'s graph as an ONNX model of its own: the nodes that compute
/// `split.boundary`, which become its outputs, with the weights and BN statistics of `model`
/// (each backbone slot gets an initializer of its own, so tensors an `Identity` shared in the
/// reference graph but that differ in `model` stay apart).
pub fn backbone_onnx<M: SegModel>(model: &M, info: &ModelInfo, split: &Split) -> SegResult<Vec<u8>> {
    use onnx::proto::{TypeProto, type_proto};
    use prost::Message;
    let mut proto = info.reference()?;
    let g = proto.graph.as_mut().expect("decoded models have a graph");
    // The nodes the boundary values need.
    let producer: HashMap<&str, usize> =
        g.node.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i))).collect();
    let mut keep = vec![false; g.node.len()];
    let mut stack: Vec<usize> = split.boundary.iter().filter_map(|b| producer.get(b).copied()).collect();
    if stack.len() != split.boundary.len() {
        return Err(Error::CheckFailed(format!(
            "{}: a backbone output of {:?} has no node",
            info.name, split.boundary
        )));
    }
    while let Some(i) = stack.pop() {
        if !std::mem::replace(&mut keep[i], true) {
            stack.extend(g.node[i].input.iter().filter_map(|v| producer.get(v.as_str()).copied()));
        }
    }
    // Their weights and statistics from `model`.
    let tensors: HashMap<String, PackTensor> =
        model.collect(None, None, false).into_iter().map(|t| (t.name.clone(), t)).collect();
    for (i, e) in info.params.iter().enumerate().filter(|(_, e)| keep[e.node]) {
        let Some(t) = tensors.get(e.burn) else {
            return Err(Error::CheckFailed(format!("{}: the model has no tensor {}", info.name, e.burn)));
        };
        let name = format!("segtune.backbone.{i}");
        let dims = t.shape.iter().map(|&d| d as i64).collect();
        let raw = t.to_bytes().expect("in-memory tensors always have bytes").to_vec();
        g.initializer.push(TensorProto {
            name: Some(name.clone()),
            dims,
            data_type: Some(onnx::DATA_TYPE_FLOAT),
            raw_data: Some(raw),
            ..Default::default()
        });
        g.node[e.node].input[e.input] = name;
    }
    let nodes = std::mem::take(&mut g.node);
    g.node = nodes.into_iter().zip(keep).filter(|(_, k)| *k).map(|(n, _)| n).collect();
    let used: std::collections::HashSet<&str> =
        g.node.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
    let initializers = std::mem::take(&mut g.initializer);
    g.initializer = initializers.into_iter().filter(|t| used.contains(t.name())).collect();
    g.value_info.clear();
    let float = TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: Some(onnx::DATA_TYPE_FLOAT),
            shape: None,
        })),
        ..Default::default()
    };
    g.output = split
        .boundary
        .iter()
        .map(|b| onnx::ValueInfoProto { name: Some(b.to_string()), r#type: Some(float.clone()), ..Default::default() })
        .collect();
    // The image at any batch and size (a fixed-size export declares one; its backbone computes
    // nothing from it).
    let layout =
        crate::layout::Normalization::from_metadata(&onnx::metadata(&proto)).map_or(Layout::Nchw, |n| n.layout);
    Ok(crate::graph::with_symbolic_input(&proto, layout, true, true).encode_to_vec())
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
