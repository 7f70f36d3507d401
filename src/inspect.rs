//! `segtune inspect FILE.onnx`: what a checkpoint is and what segtune can do with it. Its graph
//! (opset, inputs and outputs, ops, BatchNorm kept or folded, a trailing softmax, Resize modes,
//! metadata), the backbone segtune finds in it (by name or by structure, the boundary a frozen
//! backbone is cut at, its parameter count; or why none), where its tensors live, the sizes
//! onnxruntime runs it at, and the compiled-in model it loads into as `--weights` (or the first
//! difference from the closest one).

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::backbone;
use crate::error::Result;
use crate::layout::Normalization;
use crate::model::Checkpoint;
use crate::onnx::{self, GraphProto, IdentityResolver, Inspection, ModelProto};

/// The backbone [`backbone::find`] and [`backbone::cut`] find in a graph.
#[derive(Debug, Clone, Serialize)]
pub struct BackboneReport {
    /// `names` or `structure`; `None` when no backbone was found.
    pub rule: Option<&'static str>,
    /// Why no backbone was found.
    pub why_none: Option<String>,
    /// Initializers and float values the backbone's parameters hold.
    pub tensors: usize,
    pub parameters: u64,
    /// With the structural rule, the value the ASPP reads.
    pub aspp_input: Option<String>,
    /// The values a frozen backbone hands to the head (empty when it cannot be cut).
    pub boundary: Vec<String>,
    /// Whether the head also reads the image (for its size).
    pub reads_image: bool,
    /// Why it cannot be cut (the whole model then trains in burn).
    pub why_no_cut: Option<String>,
}

/// What `segtune inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub graph: Inspection,
    pub backbone: BackboneReport,
    /// Tensors whose data lives in a side file (`FILE.onnx.data`).
    pub external_tensors: usize,
    /// The sizes onnxruntime runs it at, or why that could not be checked.
    pub runs_at: std::result::Result<String, String>,
    /// The compiled-in model it loads into as `--weights`, or the difference from the closest.
    pub compiled_in: std::result::Result<String, String>,
}

/// The graph as the backbone rule sees it, with its image input's name.
pub fn node_view(g: &GraphProto) -> (Vec<backbone::Node<'_>>, String) {
    let nodes = g
        .node
        .iter()
        .map(|n| backbone::Node {
            op: n.op_type(),
            inputs: n.input.iter().map(String::as_str).collect(),
            outputs: n.output.iter().map(String::as_str).collect(),
        })
        .collect();
    let image = onnx::graph_inputs(g).first().map(|v| v.name.clone()).unwrap_or_default();
    (nodes, image)
}

/// The backbone of `g`, as `build.rs` would find and cut it.
pub fn backbone_report(g: &GraphProto) -> BackboneReport {
    let (nodes, image) = node_view(g);
    let mut report = BackboneReport {
        rule: None,
        why_none: None,
        tensors: 0,
        parameters: 0,
        aspp_input: None,
        boundary: vec![],
        reads_image: false,
        why_no_cut: None,
    };
    let found = match backbone::find(&nodes, &image) {
        Ok(found) => found,
        Err(why) => {
            report.why_none = Some(why);
            return report;
        }
    };
    report.rule = Some(match found.rule {
        backbone::Rule::Names => "names",
        backbone::Rule::Structure => "structure",
    });
    let resolver = IdentityResolver::new(g);
    let inits: HashSet<&str> = found.params.iter().map(|v| resolver.resolve(v)).collect();
    for t in g.initializer.iter().filter(|t| inits.contains(t.name())) {
        report.tensors += 1;
        report.parameters += onnx::element_count(&t.dims).unwrap_or(0) as u64;
    }
    report.aspp_input = found.aspp_input.clone();
    match backbone::cut(&nodes, &image, &found) {
        Ok(cut) => {
            report.boundary = cut.boundary;
            report.reads_image = cut.reads_image;
        }
        Err(why) => report.why_no_cut = Some(why),
    }
    report
}

/// `segtune inspect FILE`.
pub fn inspect(path: &Path) -> Result<Report> {
    let proto: ModelProto = onnx::read_model(path)?;
    let g = onnx::graph(&proto);
    let external_tensors = g.initializer.iter().filter(|t| onnx::is_external(t)).count();
    let graph = onnx::inspect(&proto, path);
    let backbone = backbone_report(g);
    let runs_at = runs_at(&proto, path);
    let compiled_in = Checkpoint::open(None, Some(path)).map(|c| c.info.name.to_string()).map_err(|e| e.to_string());
    Ok(Report { graph, backbone, external_tensors, runs_at, compiled_in })
}

/// The sizes onnxruntime runs the file at ([`crate::runtime::runnable`]).
fn runs_at(proto: &ModelProto, path: &Path) -> std::result::Result<String, String> {
    let mut proto = proto.clone();
    crate::graph::inline_external(&mut proto, path.parent())?;
    let norm = Normalization::from_metadata(&onnx::metadata(&proto))?;
    let declared = crate::graph::declared_input(&proto, norm.layout);
    let (_, shape) = crate::runtime::runnable(&proto, &norm, &path.display().to_string()).map_err(|e| e.to_string())?;
    let fixed = declared.batch.is_some() || declared.height.is_some() || declared.width.is_some();
    Ok(match (fixed, shape == Default::default()) {
        (false, _) => "any size (its input declares none)".to_string(),
        (true, true) => "any size: the fixed size its input declares is made symbolic (checked at two sizes)".into(),
        (true, false) => format!("{} (fixed inside the graph; segtune resizes to it)", shape.describe()),
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.graph.to_string().trim_end())?;
        if self.external_tensors > 0 {
            writeln!(f, "data        {} tensors in a side file (external data)", self.external_tensors)?;
        }
        let b = &self.backbone;
        match (&b.rule, &b.why_none) {
            (Some(rule), _) => {
                let how = if *rule == "names" { backbone::Rule::Names } else { backbone::Rule::Structure };
                writeln!(
                    f,
                    "backbone    found {}: {} tensors, {} parameters",
                    how.describe(),
                    b.tensors,
                    b.parameters
                )?;
                if let Some(v) = &b.aspp_input {
                    writeln!(f, "            the ASPP reads {v:?}")?;
                }
                match &b.why_no_cut {
                    None => writeln!(
                        f,
                        "            cut at {}{}; with --freeze backbone --bn frozen it runs in onnxruntime",
                        b.boundary.join(", "),
                        if b.reads_image { " (the head also reads the image's size)" } else { "" }
                    )?,
                    Some(why) => writeln!(f, "            not cut ({why}): a frozen backbone trains in burn")?,
                }
            }
            (None, why) => writeln!(
                f,
                "backbone    none found: {}; use --freeze 'GLOB' on initializer names",
                why.as_deref().unwrap_or("")
            )?,
        }
        match &self.runs_at {
            Ok(s) => writeln!(f, "runs at     {s}")?,
            Err(e) => writeln!(f, "runs at     unchecked ({e})")?,
        }
        match &self.compiled_in {
            Ok(name) => write!(f, "segtune     loads as --weights of compiled-in model {name}"),
            Err(e) => write!(f, "segtune     matches no compiled-in model: {e}"),
        }
    }
}
