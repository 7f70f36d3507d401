//! ONNX files: prost types built from `proto/onnx.proto`, reading with clear errors, tensor data
//! (including external data), graph helpers and `segtune inspect`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

/// prost types generated at build time from `proto/onnx.proto` (package `onnx`).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub use proto::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};

/// ONNX `TensorProto.DataType.FLOAT`.
pub const DATA_TYPE_FLOAT: i32 = 1;
/// Largest element count segtune accepts for one tensor (2^31): beyond it the dims are absurd
/// for a segmentation model and would only serve to exhaust memory.
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 31;
/// Largest graph segtune accepts, in nodes plus initializers (Xception-65 DeepLab has ~1,000).
pub const MAX_GRAPH_ITEMS: usize = 200_000;

/// Reads and decodes an ONNX model, refusing empty, foreign, truncated or graph-less files.
pub fn read_model(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::bad_file(path, "no such file; expected an ONNX model"),
        _ => Error::io(path, e),
    })?;
    decode_model(&bytes, path)
}

/// Decodes ONNX bytes; `origin` names the file in errors.
pub fn decode_model(bytes: &[u8], origin: &Path) -> Result<ModelProto> {
    use prost::Message;
    if bytes.is_empty() {
        return Err(Error::bad_file(origin, "empty file (0 bytes); expected an ONNX model"));
    }
    if let Some(kind) = sniff_foreign(bytes) {
        return Err(Error::bad_file(origin, format!("expected an ONNX model (protobuf), found {kind}")));
    }
    let model = ModelProto::decode(bytes).map_err(|e| {
        Error::bad_file(
            origin,
            format!("expected an ONNX model, found a truncated or corrupt protobuf ({} bytes): {e}", bytes.len()),
        )
    })?;
    let Some(graph) = model.graph.as_ref() else {
        return Err(Error::bad_file(origin, "expected an ONNX model with a graph, found none"));
    };
    let items = graph.node.len() + graph.initializer.len();
    if items > MAX_GRAPH_ITEMS {
        return Err(Error::bad_file(
            origin,
            format!("expected a graph of at most {MAX_GRAPH_ITEMS} nodes and initializers, found {items}"),
        ));
    }
    if model.ir_version() <= 0 || graph.node.is_empty() {
        return Err(Error::bad_file(
            origin,
            format!(
                "expected an ONNX model (ir_version > 0, at least one node), found ir_version {} and {} nodes",
                model.ir_version(),
                graph.node.len()
            ),
        ));
    }
    Ok(model)
}

/// Names well-known non-ONNX formats from their magic bytes.
fn sniff_foreign(bytes: &[u8]) -> Option<&'static str> {
    const MAGICS: &[(&[u8], &str)] = &[
        (b"\x89PNG\r\n\x1a\n", "a PNG image"),
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"PK\x03\x04", "a ZIP archive (a PyTorch .pt checkpoint?)"),
        (b"\x93NUMPY", "a NumPy array"),
        (b"GIF8", "a GIF image"),
        (b"\x7fELF", "an ELF binary"),
    ];
    MAGICS.iter().find(|(m, _)| bytes.starts_with(m)).map(|(_, k)| *k)
}

/// The graph of a model decoded by [`decode_model`] (which guarantees it exists).
pub fn graph(model: &ModelProto) -> &GraphProto {
    model.graph.as_ref().expect("decode_model guarantees a graph")
}

/// The default-domain opset version, if declared.
pub fn opset(model: &ModelProto) -> Option<i64> {
    model.opset_import.iter().find(|o| matches!(o.domain(), "" | "ai.onnx")).map(|o| o.version())
}

/// Attribute of a node by name.
pub fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name() == name)
}

/// String attribute of a node, or `default`.
pub fn attr_str(node: &NodeProto, name: &str, default: &str) -> String {
    attr(node, name)
        .and_then(|a| a.s.as_ref())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .unwrap_or_else(|| default.to_string())
}

/// Float attribute of a node, or `default`.
pub fn attr_f32(node: &NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).and_then(|a| a.f).unwrap_or(default)
}

/// The constant value of `name`: an initializer or a Constant node's `value`, through Identity.
pub fn constant<'a>(graph: &'a GraphProto, name: &str) -> Option<&'a TensorProto> {
    let resolver = IdentityResolver::new(graph);
    let name = resolver.resolve(name);
    graph.initializer.iter().find(|t| t.name() == name).or_else(|| {
        let node =
            graph.node.iter().find(|n| n.op_type() == "Constant" && n.output.first().is_some_and(|o| o == name))?;
        attr(node, "value").and_then(|a| a.t.as_ref())
    })
}

/// How many nodes read each value, plus one for each graph output that is it.
pub fn readers(graph: &GraphProto) -> HashMap<String, usize> {
    let mut n: HashMap<String, usize> = HashMap::new();
    let inputs = graph.node.iter().flat_map(|node| node.input.iter().map(String::as_str));
    for name in inputs.chain(graph.output.iter().map(|o| o.name())) {
        *n.entry(name.to_string()).or_default() += 1;
    }
    n
}

/// Key → value of the model's `metadata_props`.
pub fn metadata(model: &ModelProto) -> BTreeMap<String, String> {
    model.metadata_props.iter().map(|p| (p.key().to_string(), p.value().to_string())).collect()
}

/// Follows `Identity` nodes back from a value name to its source (torch shares identical
/// tensors between parameters that way).
pub struct IdentityResolver<'a> {
    sources: HashMap<&'a str, &'a str>,
}

impl<'a> IdentityResolver<'a> {
    pub fn new(graph: &'a GraphProto) -> Self {
        let sources = graph
            .node
            .iter()
            .filter(|n| n.op_type() == "Identity" && !n.input.is_empty() && !n.output.is_empty())
            .map(|n| (n.output[0].as_str(), n.input[0].as_str()))
            .collect();
        Self { sources }
    }

    /// The value `name` ultimately copies (itself when no Identity produces it). A cycle, which
    /// no valid graph has, stops after as many steps as there are Identity nodes.
    pub fn resolve(&self, mut name: &'a str) -> &'a str {
        for _ in 0..=self.sources.len() {
            match self.sources.get(name) {
                Some(src) => name = src,
                None => break,
            }
        }
        name
    }
}

/// Element count of `dims`, refusing negative or absurd dims before anything is allocated.
pub fn element_count(dims: &[i64]) -> Result<usize, String> {
    let mut n: u64 = 1;
    for &d in dims {
        if d < 0 {
            return Err(format!("negative dimension {d} in {dims:?}"));
        }
        n = n
            .checked_mul(d as u64)
            .filter(|&n| n <= MAX_TENSOR_ELEMENTS)
            .ok_or_else(|| format!("dims {dims:?} exceed {MAX_TENSOR_ELEMENTS} elements"))?;
    }
    Ok(n as usize)
}

/// The f32 values of an initializer. `model_dir` resolves external data, which must stay
/// inside that directory. Every declared size is checked against the data actually present.
pub fn tensor_f32(t: &TensorProto, model_dir: Option<&Path>) -> Result<Vec<f32>, String> {
    if t.data_type() != DATA_TYPE_FLOAT {
        return Err(format!("tensor {:?}: expected FLOAT data (type 1), found data type {}", t.name(), t.data_type()));
    }
    let n = element_count(&t.dims).map_err(|e| format!("tensor {:?}: {e}", t.name()))?;
    let external = is_external(t);
    let raw: Option<std::borrow::Cow<'_, [u8]>> =
        if external { Some(read_external(t, model_dir, n * 4)?.into()) } else { t.raw_data.as_deref().map(Into::into) };
    match raw {
        Some(raw) => {
            if raw.len() != n * 4 {
                return Err(format!(
                    "tensor {:?}: dims {:?} declare {} bytes, found {}",
                    t.name(),
                    t.dims,
                    n * 4,
                    raw.len()
                ));
            }
            Ok(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        }
        None => {
            if t.float_data.len() != n {
                return Err(format!(
                    "tensor {:?}: dims {:?} declare {n} values, found {}",
                    t.name(),
                    t.dims,
                    t.float_data.len()
                ));
            }
            Ok(t.float_data.clone())
        }
    }
}

/// Bytes per element of an ONNX tensor data type (`None`: strings and sub-byte types).
pub fn dtype_size(data_type: i32) -> Option<usize> {
    match data_type {
        2 | 3 | 9 => Some(1),       // uint8, int8, bool
        4 | 5 | 10 | 16 => Some(2), // uint16, int16, float16, bfloat16
        1 | 6 | 12 => Some(4),      // float, int32, uint32
        7 | 11 | 13 => Some(8),     // int64, double, uint64
        _ => None,
    }
}

/// Whether a tensor's data lives in a side file.
pub fn is_external(t: &TensorProto) -> bool {
    t.data_location == Some(proto::tensor_proto::DataLocation::External as i32)
}

/// The bytes an external-data tensor's dims and type declare (fixed-size types only).
pub fn tensor_bytes(t: &TensorProto) -> Result<usize, String> {
    let size = dtype_size(t.data_type())
        .ok_or_else(|| format!("tensor {:?}: external data of type {} is not supported", t.name(), t.data_type()))?;
    let n = element_count(&t.dims).map_err(|e| format!("tensor {:?}: {e}", t.name()))?;
    Ok(n * size)
}

/// The bytes an external-data tensor holds (any fixed-size type), read from `model_dir`.
pub fn external_bytes(t: &TensorProto, model_dir: Option<&Path>) -> Result<Vec<u8>, String> {
    read_external(t, model_dir, tensor_bytes(t)?)
}

/// Checks an external-data `location`: a relative path of plain components inside the model's
/// directory. Absolute paths and `..` are how a hostile model would read (or, written, replace)
/// arbitrary files; the reader and the writer both refuse them.
pub fn check_external_location(location: &str) -> Result<(), String> {
    let rel = Path::new(location);
    if location.is_empty()
        || rel.is_absolute()
        || rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "external data location {location:?} must be a relative path inside the model's directory"
        ));
    }
    Ok(())
}

/// Where an external-data tensor's bytes are: its checked location, offset and length (which
/// must be the `expected` bytes its dims and type declare).
pub fn external_span(t: &TensorProto, expected: usize) -> Result<(String, u64, usize), String> {
    let field = |k: &str| t.external_data.iter().find(|e| e.key() == k).map(|e| e.value().to_string());
    let location =
        field("location").ok_or_else(|| format!("tensor {:?}: external data without a location", t.name()))?;
    check_external_location(&location).map_err(|e| format!("tensor {:?}: {e}", t.name()))?;
    let parse = |k: &str| -> Result<u64, String> {
        field(k).map_or(Ok(0), |v| v.parse().map_err(|_| format!("tensor {:?}: bad external {k} {v:?}", t.name())))
    };
    let offset = parse("offset")?;
    let length = match field("length") {
        Some(_) => parse("length")? as usize,
        None => expected,
    };
    if length != expected {
        return Err(format!("tensor {:?}: external length {length} but dims declare {expected} bytes", t.name()));
    }
    Ok((location, offset, length))
}

/// The `length` bytes at `offset` of a side file of `size` bytes, read by `read`; `name` names
/// the file in errors.
pub fn external_slice(
    t: &TensorProto,
    (offset, length): (u64, usize),
    size: u64,
    name: &str,
    read: impl FnOnce(u64, &mut [u8]) -> std::io::Result<()>,
) -> Result<Vec<u8>, String> {
    if offset.checked_add(length as u64).is_none_or(|end| end > size) {
        return Err(format!(
            "tensor {:?}: external data {name} has {size} bytes, needs {length} at offset {offset}",
            t.name()
        ));
    }
    let mut buf = vec![0u8; length];
    read(offset, &mut buf).map_err(|e| format!("external data {name}: {e}"))?;
    Ok(buf)
}

/// Reads an external-data tensor from `model_dir`, refusing locations outside it
/// ([`check_external_location`]).
fn read_external(t: &TensorProto, model_dir: Option<&Path>, expected: usize) -> Result<Vec<u8>, String> {
    let (location, offset, length) = external_span(t, expected)?;
    let dir = model_dir.ok_or_else(|| format!("tensor {:?}: external data needs the model's directory", t.name()))?;
    let path: PathBuf = dir.join(location);
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(&path).map_err(|e| format!("external data {}: {e}", path.display()))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    external_slice(t, (offset, length), size, &path.display().to_string(), |offset, buf| {
        f.seek(SeekFrom::Start(offset)).and_then(|_| f.read_exact(buf))
    })
}

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(i64),
    Symbolic(String),
    Unknown(Option<()>),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => f.write_str(s),
            Dim::Unknown(_) => f.write_str("?"),
        }
    }
}

/// A graph input or output with its element type and dims.
#[derive(Debug, Clone, Serialize)]
pub struct ValueInfo {
    pub name: String,
    pub elem_type: i32,
    pub dims: Vec<Dim>,
}

impl ValueInfo {
    pub fn from_proto(v: &ValueInfoProto) -> Self {
        use proto::tensor_shape_proto::dimension::Value as D;
        use proto::type_proto::Value as T;
        let (elem_type, dims) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(T::TensorType(t)) => (
                t.elem_type(),
                t.shape
                    .as_ref()
                    .map(|s| {
                        s.dim
                            .iter()
                            .map(|d| match &d.value {
                                Some(D::DimValue(n)) => Dim::Fixed(*n),
                                Some(D::DimParam(p)) => Dim::Symbolic(p.clone()),
                                None => Dim::Unknown(None),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            _ => (0, vec![]),
        };
        ValueInfo { name: v.name().to_string(), elem_type, dims }
    }
}

impl fmt::Display for ValueInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.dims.iter().map(|d| d.to_string()).collect();
        write!(f, "{} [{}] ({})", self.name, dims.join(", "), elem_type_name(self.elem_type))
    }
}

fn elem_type_name(t: i32) -> &'static str {
    match t {
        1 => "float32",
        2 => "uint8",
        6 => "int32",
        7 => "int64",
        10 => "float16",
        11 => "float64",
        16 => "bfloat16",
        _ => "other",
    }
}

/// The fixed class dimension (`class_axis`: 1 for NCHW, 3 for NHWC outputs) of the graph's first
/// output, if it is fixed.
pub fn output_classes(graph: &GraphProto, class_axis: usize) -> Option<usize> {
    let out = ValueInfo::from_proto(graph.output.first()?);
    match out.dims.get(class_axis) {
        Some(Dim::Fixed(c)) if *c > 0 => Some(*c as usize),
        _ => None,
    }
}

/// The class count of an exported model: `segtune.classes`, else the fixed class dimension.
pub fn model_classes(proto: &ModelProto, class_axis: usize, path: &Path) -> Result<usize> {
    let meta = metadata(proto);
    let graph_classes = output_classes(graph(proto), class_axis);
    if let Some(c) = meta.get("segtune.classes").and_then(|v| v.parse::<usize>().ok()) {
        return match graph_classes {
            Some(g) if g != c => Err(Error::bad_file(
                path,
                format!("its metadata segtune.classes says {c} classes, but its output has {g} channels"),
            )),
            _ => Ok(c),
        };
    }
    graph_classes.ok_or_else(|| {
        Error::bad_file(
            path,
            "expected a fixed class dimension on the output or segtune.classes metadata, found neither",
        )
    })
}

/// The real graph inputs (those that are not initializers).
pub fn graph_inputs(graph: &GraphProto) -> Vec<ValueInfo> {
    let inits: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    graph.input.iter().filter(|i| !inits.contains(i.name())).map(ValueInfo::from_proto).collect()
}

/// A Softmax (or LogSoftmax) that produces a graph output, possibly through layout-only ops.
#[derive(Debug, Clone, Serialize)]
pub struct TrailingSoftmax {
    pub node: String,
    pub op_type: String,
    pub axis: i64,
    pub output: String,
}

/// Finds a softmax applied to a graph output: the seed's mistake (a loss that expects logits
/// receiving probabilities) shows in a graph this way.
pub fn trailing_softmax(graph: &GraphProto, opset: Option<i64>) -> Option<TrailingSoftmax> {
    // Softmax-13 and later default to the last axis, earlier versions to axis 1.
    let default_axis = if opset.unwrap_or(13) >= 13 { -1 } else { 1 };
    let producer: HashMap<&str, &NodeProto> =
        graph.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n))).collect();
    for out in &graph.output {
        let mut name = out.name();
        for _ in 0..8 {
            let Some(node) = producer.get(name) else { break };
            match node.op_type() {
                "Softmax" | "LogSoftmax" => {
                    let axis = attr(node, "axis").and_then(|a| a.i).unwrap_or(default_axis);
                    return Some(TrailingSoftmax {
                        node: node.name().to_string(),
                        op_type: node.op_type().to_string(),
                        axis,
                        output: out.name().to_string(),
                    });
                }
                "Identity" | "Transpose" | "Cast" | "Reshape" | "Squeeze" | "Unsqueeze" => {
                    name = node.input.first().map(String::as_str).unwrap_or("");
                }
                _ => break,
            }
        }
    }
    None
}

/// Resize nodes grouped by (mode, coordinate_transformation_mode).
#[derive(Debug, Clone, Serialize)]
pub struct ResizeModes {
    pub mode: String,
    pub coordinate_transformation_mode: String,
    pub count: usize,
}

/// What `segtune inspect` reports about a model.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub file: String,
    pub ir_version: i64,
    pub opset: Option<i64>,
    pub producer: String,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    pub nodes: usize,
    pub op_histogram: BTreeMap<String, usize>,
    pub initializers: usize,
    pub parameters: u64,
    pub batchnorm_nodes: usize,
    /// `"present"` when BatchNormalization nodes exist (BN can be trained and its statistics
    /// updated), `"folded"` when none exist and the Conv weights carry them (an eval-mode export).
    pub batchnorm: &'static str,
    pub trailing_softmax: Option<TrailingSoftmax>,
    pub resize: Vec<ResizeModes>,
    pub metadata_props: BTreeMap<String, String>,
}

/// Inspects a decoded model.
pub fn inspect(model: &ModelProto, file: &Path) -> Inspection {
    let g = graph(model);
    let mut op_histogram = BTreeMap::new();
    for n in &g.node {
        *op_histogram.entry(n.op_type().to_string()).or_insert(0) += 1;
    }
    let parameters = g
        .initializer
        .iter()
        .filter(|t| t.data_type() == DATA_TYPE_FLOAT)
        .map(|t| element_count(&t.dims).unwrap_or(0) as u64)
        .sum();
    let mut resize: BTreeMap<(String, String), usize> = BTreeMap::new();
    for n in g.node.iter().filter(|n| n.op_type() == "Resize") {
        let key = (attr_str(n, "mode", "nearest"), attr_str(n, "coordinate_transformation_mode", "half_pixel"));
        *resize.entry(key).or_insert(0) += 1;
    }
    let batchnorm_nodes = op_histogram.get("BatchNormalization").copied().unwrap_or(0);
    Inspection {
        file: file.display().to_string(),
        ir_version: model.ir_version(),
        opset: opset(model),
        producer: format!("{} {}", model.producer_name(), model.producer_version()).trim().to_string(),
        inputs: graph_inputs(g),
        outputs: g.output.iter().map(ValueInfo::from_proto).collect(),
        nodes: g.node.len(),
        op_histogram,
        initializers: g.initializer.len(),
        parameters,
        batchnorm_nodes,
        batchnorm: if batchnorm_nodes > 0 { "present" } else { "folded" },
        trailing_softmax: trailing_softmax(g, opset(model)),
        resize: resize
            .into_iter()
            .map(|((mode, coordinate_transformation_mode), count)| ResizeModes {
                mode,
                coordinate_transformation_mode,
                count,
            })
            .collect(),
        metadata_props: metadata(model),
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "file        {}", self.file)?;
        let opset = self.opset.map_or("none".to_string(), |o| o.to_string());
        writeln!(f, "opset       {opset} (ir_version {}, producer {})", self.ir_version, self.producer)?;
        for i in &self.inputs {
            writeln!(f, "input       {i}")?;
        }
        for o in &self.outputs {
            writeln!(f, "output      {o}")?;
        }
        writeln!(f, "parameters  {} in {} initializers", self.parameters, self.initializers)?;
        let hist: Vec<String> = self.op_histogram.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(f, "ops         {} nodes: {}", self.nodes, hist.join(", "))?;
        match self.batchnorm {
            "present" => writeln!(
                f,
                "batchnorm   present: {} BatchNormalization nodes (trainable, statistics updatable)",
                self.batchnorm_nodes
            )?,
            _ => writeln!(
                f,
                "batchnorm   folded: no BatchNormalization nodes, statistics folded into Conv (eval-mode export)"
            )?,
        }
        match &self.trailing_softmax {
            Some(s) => writeln!(
                f,
                "softmax     FLAGGED: output {:?} comes from {} node {:?} (axis {}); segtune trains on the logits before it. \
                 A loss that expects logits applied to this output double-applies softmax.",
                s.output, s.op_type, s.node, s.axis
            )?,
            None => writeln!(f, "softmax     none: outputs are logits")?,
        }
        for r in &self.resize {
            writeln!(
                f,
                "resize      {} x mode={} coordinate_transformation_mode={}",
                r.count, r.mode, r.coordinate_transformation_mode
            )?;
        }
        if self.metadata_props.is_empty() {
            writeln!(f, "metadata    none")?;
        }
        for (k, v) in &self.metadata_props {
            writeln!(f, "metadata    {k} = {v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_count_refuses_negative_and_absurd_dims() {
        assert_eq!(element_count(&[2, 3, 4]), Ok(24));
        assert_eq!(element_count(&[]), Ok(1));
        assert!(element_count(&[-1, 3]).unwrap_err().contains("negative"));
        assert!(element_count(&[1 << 20, 1 << 20]).unwrap_err().contains("exceed"));
    }

    #[test]
    fn decode_refuses_empty_png_and_garbage() {
        let p = Path::new("x.onnx");
        let e = decode_model(b"", p).unwrap_err().to_string();
        assert!(e.contains("x.onnx") && e.contains("empty file"), "{e}");
        let e = decode_model(b"\x89PNG\r\n\x1a\nrest", p).unwrap_err().to_string();
        assert!(e.contains("found a PNG image"), "{e}");
        let e = decode_model(&[0xff; 64], p).unwrap_err().to_string();
        assert!(e.contains("expected an ONNX model"), "{e}");
    }

    #[test]
    fn deep_nesting_and_huge_graphs_are_refused() {
        // Subgraphs nested far beyond prost's recursion limit: a decode error, not a stack overflow.
        use prost::Message;
        let mut g = GraphProto { name: Some("leaf".into()), ..Default::default() };
        for _ in 0..200 {
            let attr = AttributeProto { name: Some("then_branch".into()), g: Some(g), ..Default::default() };
            let node = NodeProto { op_type: Some("If".into()), attribute: vec![attr], ..Default::default() };
            g = GraphProto { node: vec![node], ..Default::default() };
        }
        let m = ModelProto { ir_version: Some(8), graph: Some(g), ..Default::default() };
        let e = decode_model(&m.encode_to_vec(), Path::new("deep.onnx")).unwrap_err().to_string();
        assert!(e.contains("deep.onnx") && e.contains("corrupt protobuf"), "{e}");

        let node = NodeProto { op_type: Some("Relu".into()), ..Default::default() };
        let g = GraphProto { node: vec![node; MAX_GRAPH_ITEMS + 1], ..Default::default() };
        let m = ModelProto { ir_version: Some(8), graph: Some(g), ..Default::default() };
        let e = decode_model(&m.encode_to_vec(), Path::new("huge.onnx")).unwrap_err().to_string();
        assert!(e.contains("at most 200000 nodes"), "{e}");
    }

    #[test]
    fn tensor_size_mismatch_is_refused() {
        let t = TensorProto {
            name: Some("w".into()),
            dims: vec![2, 2],
            data_type: Some(DATA_TYPE_FLOAT),
            raw_data: Some(vec![0; 12]),
            ..Default::default()
        };
        let e = tensor_f32(&t, None).unwrap_err();
        assert!(e.contains("declare 16 bytes, found 12"), "{e}");
    }

    #[test]
    fn external_data_outside_the_model_dir_is_refused() {
        for loc in ["../../etc/passwd", "/etc/passwd"] {
            let t = TensorProto {
                name: Some("w".into()),
                dims: vec![1],
                data_type: Some(DATA_TYPE_FLOAT),
                data_location: Some(proto::tensor_proto::DataLocation::External as i32),
                external_data: vec![proto::StringStringEntryProto {
                    key: Some("location".into()),
                    value: Some(loc.into()),
                }],
                ..Default::default()
            };
            let e = tensor_f32(&t, Some(Path::new("/tmp"))).unwrap_err();
            assert!(e.contains("must be a relative path inside"), "{e}");
        }
    }
}
