//! The table that maps each burn parameter path of a generated model to the ONNX initializer it
//! came from (`PARAMS`, written through `quote!`).

use std::collections::{BTreeMap, HashMap, HashSet};

use proc_macro2::TokenStream;
use quote::quote;

use crate::backbone::Node;

/// One burn parameter and the ONNX value it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// burn's parameter path (`submodule1.conv2d7.weight`).
    pub burn: String,
    /// The initializer, past any `Identity` nodes.
    pub onnx: String,
    /// The value the node reads in that slot (the initializer or an `Identity`'s output).
    pub value: String,
    /// The node's index in the graph, and the input slot.
    pub node: usize,
    pub input: usize,
}

/// The rows of one model.
///
/// burn-onnx names the K-th Conv / BatchNormalization node of the ONNX graph (in graph order,
/// counted per node type before simplification) `conv{N}dK` / `batchnormalizationK`; its weight
/// slots are ONNX inputs 1.. of that node. Inputs reached through `Identity` nodes (torch shares
/// identical tensors that way) are followed back to the initializer. burn-onnx's own weight pack
/// lists every parameter path with its `submoduleN.` prefix (`pack`), so the prefix is taken from
/// there, and every pack path must be mapped: the error names the first that is not.
/// `ranks`: each initializer's rank.
pub fn rows(nodes: &[Node], ranks: &HashMap<&str, usize>, pack: &[&str]) -> Result<Vec<Row>, String> {
    let identity: HashMap<&str, &str> = nodes
        .iter()
        .filter(|n| n.op == "Identity" && !n.inputs.is_empty())
        .map(|n| (n.outputs[0], n.inputs[0]))
        .collect();
    // field name (`conv2d7`) → module path (`submodule1.conv2d7`)
    let module_paths: HashMap<&str, &str> = pack
        .iter()
        .map(|name| name.rsplit_once('.').map_or(*name, |(m, _)| m))
        .map(|module| (module.rsplit('.').next().unwrap_or(module), module))
        .collect();
    let mut counters: HashMap<String, usize> = HashMap::new();
    let mut rows = BTreeMap::new();
    for (index, node) in nodes.iter().enumerate() {
        let (kind, slots): (String, &[&str]) = match node.op {
            "Conv" => {
                let Some(rank) = node.inputs.get(1).and_then(|w| ranks.get(follow_identity(&identity, w))) else {
                    continue;
                };
                (format!("conv{}d", rank - 2), &["weight", "bias"])
            }
            "BatchNormalization" => ("batchnormalization".into(), &["gamma", "beta", "running_mean", "running_var"]),
            _ => continue,
        };
        let k = counters.entry(kind.clone()).or_insert(0);
        *k += 1;
        let Some(module) = module_paths.get(format!("{kind}{k}").as_str()) else { continue };
        for (i, slot) in slots.iter().enumerate() {
            let Some(value) = node.inputs.get(i + 1).filter(|s| !s.is_empty()) else { continue };
            let onnx = follow_identity(&identity, value);
            if ranks.contains_key(onnx) {
                let row = Row {
                    burn: format!("{module}.{slot}"),
                    onnx: onnx.into(),
                    value: value.to_string(),
                    node: index,
                    input: i + 1,
                };
                rows.insert(row.burn.clone(), row);
            }
        }
    }
    match pack.iter().find(|name| !rows.contains_key(**name)) {
        Some(missing) => Err(format!("burn parameter {missing} has no ONNX initializer in the map")),
        None => Ok(rows.into_values().collect()),
    }
}

/// The value `name` copies through a chain of `Identity` nodes (at most one step per node).
pub fn follow_identity<'a>(identity: &HashMap<&'a str, &'a str>, name: &'a str) -> &'a str {
    let mut name = name;
    for _ in 0..=identity.len() {
        match identity.get(name) {
            Some(src) => name = src,
            None => break,
        }
    }
    name
}

/// `PARAMS` as Rust source; a row whose value is in `backbone` is marked so.
pub fn source(rows: &[Row], backbone: &HashSet<String>) -> TokenStream {
    let entries = rows.iter().map(|r| {
        let (burn, onnx, value, node, input) = (&r.burn, &r.onnx, &r.value, r.node, r.input);
        let backbone = backbone.contains(&r.value);
        quote! {
            crate::model::ParamEntry { burn: #burn, onnx: #onnx, value: #value, node: #node, input: #input, backbone: #backbone }
        }
    });
    quote! {
        /// Every burn parameter path of this model with the ONNX initializer it came from.
        pub static PARAMS: &[crate::model::ParamEntry] = &[#(#entries),*];
    }
}
