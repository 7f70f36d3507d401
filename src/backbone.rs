//! Which part of a DeepLab graph is its backbone, and where the graph is cut after it: one rule
//! for `build.rs` (the head it generates, trained behind a frozen backbone run in onnxruntime),
//! `--freeze backbone` and `segtune inspect`, so that none of them can disagree.
//!
//! The backbone is found by name where names exist: every parameter whose dotted name has an
//! `encoder` or `backbone` component, under any prefix (`encoder.*`, `backbone.*`, a wrapper's
//! `m.encoder.*`, Lightning's `model.backbone.*`, DataParallel's `module.encoder.*`). Where no
//! name says so (an eval-mode export folds BatchNorm into Conv and names the weights
//! `onnx::Conv_N`), by structure: the sub-graph upstream of the feature the ASPP reads (the last
//! value read by a global average pool and by two or more convolutions: its pooling branch and
//! its 1×1 and atrous branches). Everything else the decoder reads of it (the low-level skip)
//! becomes part of the cut's boundary.
//!
//! std only: `build.rs` includes this file with `#[path]` and sees the graph through onnx-ir's
//! protobuf types, segtune through prost's; both hand the rule a [`Node`] view.

use std::collections::{HashMap, HashSet};

/// One node of a graph as the rule sees it (absent optional inputs are empty strings).
#[derive(Debug, Clone)]
pub struct Node<'a> {
    pub op: &'a str,
    pub inputs: Vec<&'a str>,
    pub outputs: Vec<&'a str>,
}

/// How a backbone was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Parameter names with an `encoder` or `backbone` component.
    Names,
    /// Everything upstream of the feature the ASPP reads.
    Structure,
}

impl Rule {
    pub fn describe(self) -> &'static str {
        match self {
            Rule::Names => "by name (parameters with an `encoder` or `backbone` component)",
            Rule::Structure => "by structure (everything upstream of the feature the ASPP reads)",
        }
    }
}

/// A graph's backbone.
#[derive(Debug, Clone)]
pub struct Backbone {
    pub rule: Rule,
    /// The values backbone nodes read in their weight slots (input 1 on): its parameters.
    pub params: HashSet<String>,
    /// With [`Rule::Structure`], the value the ASPP reads.
    pub aspp_input: Option<String>,
}

/// Which side of the cut a node is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Reads neither the image nor a value computed from it: copied where it is needed.
    Const,
    Backbone,
    Head,
}

/// A graph cut after its backbone.
#[derive(Debug, Clone)]
pub struct Cut {
    /// The side of each node, in graph order.
    pub kinds: Vec<Kind>,
    /// The backbone values the head reads, in the order the head first reads them.
    pub boundary: Vec<String>,
    /// Whether a head node reads the image (through `Shape`/`Size` only: the size to upsample the
    /// logits to); the image is then the head's last input.
    pub reads_image: bool,
}

/// Ops whose inputs 1.. are parameters (weights, biases, BatchNorm's scale, bias and statistics).
pub fn is_weighted(op: &str) -> bool {
    matches!(op, "Conv" | "ConvTranspose" | "BatchNormalization" | "Gemm" | "MatMul")
}

/// Whether a parameter name says it belongs to a backbone: a component (split at `.`, `/` or
/// `:`) that is exactly `encoder` or `backbone`. `decoder.backbone_proj.weight` does not.
pub fn is_backbone_name(name: &str) -> bool {
    name.split(['.', '/', ':']).any(|c| c == "encoder" || c == "backbone")
}

/// Ops that keep a 4-D float input 4-D: where a boundary value may come from.
const RANK_KEEPING: &[&str] = &[
    "Conv",
    "BatchNormalization",
    "Relu",
    "Clip",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "HardSwish",
    "HardSigmoid",
    "Sigmoid",
    "LeakyRelu",
    "PRelu",
    "Concat",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Resize",
];

/// The backbone of a graph whose image input is `image`, or why none was found.
pub fn find(nodes: &[Node], image: &str) -> Result<Backbone, String> {
    let named: HashSet<String> = weight_inputs(nodes.iter()).filter(|v| is_backbone_name(v)).collect();
    if !named.is_empty() {
        return Ok(Backbone { rule: Rule::Names, params: named, aspp_input: None });
    }
    let aspp_input = aspp_input(nodes).ok_or_else(|| {
        "no parameter is named encoder.* or backbone.* (under any prefix), and no ASPP was found (a value read by a \
         global average pool and by two or more convolutions)"
            .to_string()
    })?;
    let producer = producers(nodes);
    let mut upstream = vec![false; nodes.len()];
    let mut stack: Vec<usize> = producer.get(aspp_input).copied().into_iter().collect();
    let mut reaches_image = false;
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut upstream[i], true) {
            continue;
        }
        for v in &nodes[i].inputs {
            reaches_image |= *v == image;
            stack.extend(producer.get(v).copied());
        }
    }
    let params: HashSet<String> =
        weight_inputs(nodes.iter().zip(&upstream).filter(|(_, up)| **up).map(|(n, _)| n)).collect();
    if !reaches_image || params.is_empty() {
        return Err(format!(
            "the ASPP's input {aspp_input:?} {}",
            if reaches_image { "has no parameters upstream" } else { "is not computed from the image" }
        ));
    }
    Ok(Backbone { rule: Rule::Structure, params, aspp_input: Some(aspp_input.to_string()) })
}

/// Every non-empty value a weighted node reads in its slots 1.. .
fn weight_inputs<'n, 'a: 'n>(nodes: impl Iterator<Item = &'n Node<'a>>) -> impl Iterator<Item = String> {
    nodes
        .filter(|n| is_weighted(n.op))
        .flat_map(|n| n.inputs.iter().skip(1).filter(|v| !v.is_empty()).map(|v| v.to_string()))
}

fn producers<'a>(nodes: &[Node<'a>]) -> HashMap<&'a str, usize> {
    nodes.iter().enumerate().flat_map(|(i, n)| n.outputs.iter().map(move |o| (*o, i))).collect()
}

fn consumers<'a>(nodes: &[Node<'a>]) -> HashMap<&'a str, Vec<usize>> {
    let mut c: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for v in n.inputs.iter().filter(|v| !v.is_empty()) {
            c.entry(v).or_default().push(i);
        }
    }
    c
}

/// The last value (in graph order) that a global average pool (`GlobalAveragePool`, or a
/// `ReduceMean` as dynamo exports it) and two or more `Conv` nodes read: the ASPP's input.
fn aspp_input<'a>(nodes: &[Node<'a>]) -> Option<&'a str> {
    let consumers = consumers(nodes);
    nodes.iter().flat_map(|n| n.outputs.iter().copied()).rev().find(|v| {
        let users = consumers.get(v).map(Vec::as_slice).unwrap_or(&[]);
        let pooled = users.iter().any(|&u| matches!(nodes[u].op, "GlobalAveragePool" | "ReduceMean"));
        let convs = users.iter().filter(|&&u| nodes[u].op == "Conv").count();
        pooled && convs >= 2
    })
}

/// Cuts the graph after `backbone`. Walking the nodes in order, a node is head when it reads a
/// parameter that is not the backbone's (a weighted node's slot 1..) or a head value, or is a
/// `Shape`/`Size` (shape arithmetic stays with its consumer); else backbone when it reads the
/// image or a backbone value; else a constant. A parameter-free backbone node whose consumers
/// are all head nodes then joins the head (the ASPP's pooling, a trailing activation), so the
/// boundary sits at the last values the backbone's parameters produce. Refused (with the reason)
/// when either side is empty, a head node other than `Shape`/`Size` reads the image, or a
/// boundary value is not the output of an op known to keep its 4-D input's rank.
pub fn cut(nodes: &[Node], image: &str, backbone: &Backbone) -> Result<Cut, String> {
    let is_param = |v: &str| backbone.params.contains(v);
    let mut kind: HashMap<&str, Kind> = HashMap::from([(image, Kind::Backbone)]);
    let mut kinds = Vec::with_capacity(nodes.len());
    for node in nodes {
        let inputs = || node.inputs.iter().filter(|v| !v.is_empty());
        let head_param = is_weighted(node.op) && node.inputs.iter().skip(1).any(|v| !v.is_empty() && !is_param(v));
        let k = if matches!(node.op, "Shape" | "Size")
            || head_param
            || inputs().any(|v| kind.get(v) == Some(&Kind::Head))
        {
            Kind::Head
        } else if inputs().any(|v| kind.get(v) == Some(&Kind::Backbone)) {
            Kind::Backbone
        } else {
            Kind::Const
        };
        kinds.push(k);
        for o in &node.outputs {
            kind.insert(o, k);
        }
    }
    let consumers = consumers(nodes);
    for i in (0..nodes.len()).rev() {
        let node = &nodes[i];
        let users: Vec<usize> =
            node.outputs.iter().flat_map(|o| consumers.get(o).into_iter().flatten()).copied().collect();
        if kinds[i] == Kind::Backbone
            && !node.inputs.iter().any(|v| is_param(v))
            && !users.is_empty()
            && users.iter().all(|&u| kinds[u] == Kind::Head)
        {
            kinds[i] = Kind::Head;
            for o in &node.outputs {
                kind.insert(o, Kind::Head);
            }
        }
    }
    if !kinds.contains(&Kind::Head) || !kinds.contains(&Kind::Backbone) {
        return Err(format!("the {} side is empty", if kinds.contains(&Kind::Head) { "backbone" } else { "head" }));
    }
    let producer = producers(nodes);
    let (mut boundary, mut reads_image) = (Vec::<String>::new(), false);
    for (node, _) in nodes.iter().zip(&kinds).filter(|(_, k)| **k == Kind::Head) {
        for v in node.inputs.iter().filter(|v| !v.is_empty()) {
            if *v == image {
                if !matches!(node.op, "Shape" | "Size") {
                    return Err(format!("a head node ({}) reads the image itself", node.op));
                }
                reads_image = true;
            } else if kind.get(v) == Some(&Kind::Backbone) && !boundary.iter().any(|b| b == v) {
                let op = nodes[producer[v]].op;
                if !RANK_KEEPING.contains(&op) {
                    return Err(format!("the boundary value {v:?} comes from a {op}, not known to keep its rank"));
                }
                boundary.push(v.to_string());
            }
        }
    }
    if boundary.is_empty() {
        return Err("the head reads nothing of the backbone's".into());
    }
    Ok(Cut { kinds, boundary, reads_image })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node<'a>(op: &'a str, inputs: &[&'a str], output: &'a str) -> Node<'a> {
        Node { op, inputs: inputs.to_vec(), outputs: vec![output] }
    }

    /// A DeepLabv3+ in miniature: stem → skip (1/4) → high (1/16) → ASPP (1×1, atrous, pooling
    /// upsampled to `Shape(high)`) → projection, skip projection, concat → classifier; the nine
    /// weights are `names`.
    fn graph(names: &[String]) -> Vec<Node<'_>> {
        let n = |i: usize| names[i].as_str();
        vec![
            node("Conv", &["image", n(0)], "s"),
            node("Relu", &["s"], "s1"),
            node("Conv", &["s1", n(1)], "skip"),
            node("Conv", &["skip", n(2)], "high"),
            node("Conv", &["high", n(3)], "a1"),
            node("Conv", &["high", n(4)], "a2"),
            node("GlobalAveragePool", &["high"], "g"),
            node("Conv", &["g", n(5)], "g1"),
            node("Shape", &["high"], "hs"),
            node("Resize", &["g1", "", "", "hs"], "g2"),
            node("Concat", &["a1", "a2", "g2"], "aspp"),
            node("Conv", &["aspp", n(6)], "p"),
            node("Conv", &["skip", n(7)], "l"),
            node("Concat", &["p", "l"], "d"),
            node("Conv", &["d", n(8)], "logits"),
        ]
    }

    #[test]
    fn names_with_an_encoder_or_backbone_component_under_any_prefix() {
        for prefix in ["", "m.", "model.", "module.", "net.model."] {
            for part in ["encoder", "backbone"] {
                let names: Vec<String> = ["stem", "skip", "high", "b1", "b2", "pool", "proj", "low", "cls"]
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        if i < 3 { format!("{prefix}{part}.{n}.weight") } else { format!("{prefix}decoder.{n}.weight") }
                    })
                    .collect();
                let g = graph(&names);
                let b = find(&g, "image").unwrap();
                assert_eq!(b.rule, Rule::Names, "{prefix}{part}");
                assert_eq!(b.params.len(), 3);
                let c = cut(&g, "image", &b).unwrap();
                assert_eq!(c.boundary, ["high", "skip"], "{prefix}{part}");
                assert!(!c.reads_image);
            }
        }
        assert!(!is_backbone_name("decoder.backbone_proj.weight"));
        assert!(!is_backbone_name("encoders.0.weight"));
        assert!(is_backbone_name("deeplab/backbone/conv1/kernel"));
    }

    #[test]
    fn structure_where_no_name_says_backbone() {
        let names: Vec<String> = (0..9).map(|i| format!("onnx::Conv_{}", 100 + i)).collect();
        let g = graph(&names);
        let b = find(&g, "image").unwrap();
        assert_eq!(b.rule, Rule::Structure);
        assert_eq!(b.aspp_input.as_deref(), Some("high"));
        let want: HashSet<String> = names[..3].iter().cloned().collect();
        assert_eq!(b.params, want, "stem, skip and high convolutions: upstream of the ASPP");
        let c = cut(&g, "image", &b).unwrap();
        assert_eq!(c.boundary, ["high", "skip"]);
        // The pooling (parameter-free, read only by the head) and Shape(high) join the head.
        assert_eq!(c.kinds[6], Kind::Head);
        assert_eq!(c.kinds[8], Kind::Head);
        assert_eq!(c.kinds[1], Kind::Backbone);
    }

    #[test]
    fn no_backbone_says_why() {
        let names: Vec<String> = (0..9).map(|i| format!("w{i}")).collect();
        let mut g = graph(&names);
        g.retain(|n| n.op != "GlobalAveragePool");
        let e = find(&g, "image").unwrap_err();
        assert!(e.contains("no ASPP was found"), "{e}");
    }

    #[test]
    fn a_head_that_reads_the_image_itself_is_not_cut() {
        let names: Vec<String> = (0..9).map(|i| format!("encoder.w{i}")).collect();
        let mut names = names;
        for n in names.iter_mut().skip(3) {
            *n = n.replace("encoder", "decoder");
        }
        let mut g = graph(&names);
        g.push(node("Add", &["logits", "image"], "out"));
        let b = find(&g, "image").unwrap();
        let e = cut(&g, "image", &b).unwrap_err();
        assert!(e.contains("reads the image itself"), "{e}");
    }
}
