//! The ONNX file as the build reads it: external data inlined, the node view the backbone rule
//! works on, and the graph after the backbone (the head) cut out as a model of its own.

use std::collections::HashMap;
use std::path::Path;

use crate::backbone;

/// The graph as `backbone`'s rule sees it.
pub fn node_view(graph: &onnx_ir::GraphProto) -> Vec<backbone::Node<'_>> {
    graph
        .node
        .iter()
        .map(|n| backbone::Node {
            op: n.op_type.as_str(),
            inputs: n.input.iter().map(String::as_str).collect(),
            outputs: n.output.iter().map(String::as_str).collect(),
        })
        .collect()
}

/// An external-data entry of a tensor (`location`, `offset`, `length`).
fn external_field<'a>(t: &'a onnx_ir::TensorProto, key: &str) -> Option<&'a str> {
    t.external_data.iter().find(|e| e.key == key).map(|e| e.value.as_str())
}

/// The side files (external-data locations) the model's tensors name.
pub fn external_files(model: &onnx_ir::ModelProto) -> std::collections::BTreeSet<String> {
    model
        .graph
        .initializer
        .iter()
        .filter(|t| t.data_location.value() == 1)
        .filter_map(|t| external_field(t, "location"))
        .map(String::from)
        .collect()
}

/// Reads every external-data tensor into its `raw_data`, refusing locations outside the model's
/// directory (as segtune's reader does at run time).
pub fn inline_external_data(path: &Path, model: &mut onnx_ir::ModelProto) {
    let dir = path.parent().expect("models/ is a directory");
    for t in model.graph.mut_or_insert_default().initializer.iter_mut().filter(|t| t.data_location.value() == 1) {
        let location = external_field(t, "location")
            .unwrap_or_else(|| panic!("{}: tensor {:?} has external data without a location", path.display(), t.name));
        let rel = Path::new(location);
        assert!(
            !rel.is_absolute() && rel.components().all(|c| matches!(c, std::path::Component::Normal(_))),
            "{}: tensor {:?}: external data location {location:?} must be a relative path inside models/",
            path.display(),
            t.name
        );
        let file = dir.join(rel);
        println!("cargo:rerun-if-changed={}", file.display());
        let data = std::fs::read(&file).unwrap_or_else(|e| {
            panic!(
                "{}: tensor {:?} keeps its data in {location:?}, the side file's name when the model was saved: {}: {e}; \
                 put that file beside the model under that name",
                path.display(),
                t.name,
                file.display()
            )
        });
        let number = |key: &str| external_field(t, key).map(|v| v.parse::<usize>().expect("a byte count"));
        let offset = number("offset").unwrap_or(0);
        let length = number("length").unwrap_or(data.len().saturating_sub(offset));
        let bytes = data.get(offset..offset + length).unwrap_or_else(|| {
            panic!(
                "{}: tensor {:?} needs bytes {offset}..{} of {}",
                path.display(),
                t.name,
                offset + length,
                file.display()
            )
        });
        t.raw_data = bytes.to_vec().into();
        t.external_data.clear();
        t.data_location = Default::default();
    }
}

/// Splits a model after its backbone ([`backbone::cut`]): returns the graph of everything
/// downstream (decoder and head) with the backbone's outputs as its inputs, those outputs' names
/// in input order, and whether the head also reads the image (for its shape); then the image is
/// the head graph's last input. `None` (no split: training runs the whole graph in burn) where
/// the rule refuses the cut.
pub fn split_head(
    model: &onnx_ir::ModelProto,
    found: &backbone::Backbone,
) -> Option<(onnx_ir::ModelProto, Vec<String>, bool)> {
    use backbone::Kind;
    let graph = &model.graph;
    let image = graph.input.first()?.name.clone();
    let cut = match backbone::cut(&node_view(graph), &image, found) {
        Ok(cut) => cut,
        Err(why) => {
            println!("cargo:warning=no backbone/head split for {:?}: {why}", graph.name);
            return None;
        }
    };
    let (node_kind, boundary, reads_image) = (cut.kinds, cut.boundary, cut.reads_image);
    let producer: HashMap<&str, usize> =
        graph.node.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i))).collect();
    let head_nodes: Vec<usize> = (0..graph.node.len()).filter(|&i| node_kind[i] == Kind::Head).collect();
    // Head nodes plus the constants they need (transitively), in graph order.
    let mut keep = vec![false; graph.node.len()];
    let mut stack = head_nodes.clone();
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut keep[i], true) {
            continue;
        }
        for v in &graph.node[i].input {
            if let Some(&p) = producer.get(v.as_str())
                && node_kind[p] != Kind::Backbone
            {
                stack.push(p);
            }
        }
    }
    let mut head = model.clone();
    let g = head.graph.as_mut().expect("the model has a graph");
    g.node = graph.node.iter().zip(&keep).filter(|(_, k)| **k).map(|(n, _)| n.clone()).collect();
    let used: std::collections::HashSet<&str> =
        g.node.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
    g.initializer = graph.initializer.iter().filter(|t| used.contains(t.name.as_str())).cloned().collect();
    g.value_info.clear();
    let template = graph.input[0].clone();
    let mut inputs: Vec<_> = boundary
        .iter()
        .enumerate()
        .map(|(i, name)| {
            // The image input's float 4-D type with every dimension symbolic (the batch shared).
            let mut v = template.clone();
            v.name = name.clone();
            let t = v.type_.mut_or_insert_default().mut_tensor_type();
            for (d, dim) in t.shape.mut_or_insert_default().dim.iter_mut().enumerate() {
                dim.set_dim_param(if d == 0 { "batch".to_string() } else { format!("f{i}_d{d}") });
            }
            v
        })
        .collect();
    if reads_image {
        inputs.push(template);
    }
    g.input = inputs;
    Some((head, boundary, reads_image))
}
