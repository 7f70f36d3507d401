//! Static int8 QDQ rewriting of an ONNX graph, as onnxruntime's quantizer writes it: BatchNorm
//! folded into the Conv before it, a ReLU / ReLU6 after a Conv merged into the Conv's quantized
//! output, QuantizeLinear → DequantizeLinear on the float activations into and out of each Conv,
//! Add, Concat, Resize and pooling (uint8, asymmetric), weights per output channel symmetric int8
//! and biases int32 behind a DequantizeLinear. onnxruntime fuses each DQ → op → Q group into one
//! integer kernel (QLinearConv, QLinearAdd, QLinearConcat, …). The
//! activation ranges come from the caller (`segtune quantize` calibrates them in onnxruntime).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::onnx::proto::attribute_proto::AttributeType;
use crate::onnx::{self, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, constant, readers};

/// ONNX data types used here.
const UINT8: i32 = 2;
const INT8: i32 = 3;
const INT32: i32 = 6;

fn constant_f32(graph: &GraphProto, name: &str) -> Result<Vec<f32>, String> {
    let t = constant(graph, name).ok_or_else(|| format!("{name:?} is not a constant"))?;
    onnx::tensor_f32(t, None)
}

fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    raw_tensor(name, dims, onnx::DATA_TYPE_FLOAT, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

fn raw_tensor(name: &str, dims: &[i64], data_type: i32, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(data_type),
        raw_data: Some(raw),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str, axis: Option<i64>) -> NodeProto {
    let attribute = axis
        .map(|a| AttributeProto {
            name: Some("axis".into()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(a),
            ..Default::default()
        })
        .into_iter()
        .collect();
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

/// Each Conv's output → the Conv's node index.
fn conv_producers(graph: &GraphProto) -> HashMap<String, usize> {
    graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op_type() == "Conv")
        .map(|(i, n)| (n.output[0].clone(), i))
        .collect()
}

/// The node indices of the Convs, in node order (ordinal → index).
fn conv_indices(graph: &GraphProto) -> Vec<usize> {
    (0..graph.node.len()).filter(|&i| graph.node[i].op_type() == "Conv").collect()
}

/// The node indices of the Convs at `ordinals` ([`matching_convs`]) in `graph`.
fn conv_nodes_at(graph: &GraphProto, ordinals: &BTreeMap<usize, String>) -> HashSet<usize> {
    let convs = conv_indices(graph);
    ordinals.keys().filter_map(|&k| convs.get(k).copied()).collect()
}

/// Drops the nodes at `removed` and what nothing reads any more.
fn remove_nodes(graph: &mut GraphProto, removed: &HashSet<usize>) {
    let mut i = 0;
    graph.node.retain(|_| {
        i += 1;
        !removed.contains(&(i - 1))
    });
    prune(graph);
}

/// Folds each BatchNormalization whose input is a Conv's output read by nothing else into that
/// Conv's weights and bias (new initializers; shared ones are left to other readers). Returns how
/// many it folded.
pub fn fold_batchnorm(model: &mut ModelProto) -> Result<usize, String> {
    let graph = model.graph.as_mut().ok_or("no graph")?;
    let counts = readers(graph);
    let producer = conv_producers(graph);
    let mut folds = vec![];
    for (b, bn) in graph.node.iter().enumerate().filter(|(_, n)| n.op_type() == "BatchNormalization") {
        let Some(&c) = producer.get(&bn.input[0]) else { continue };
        if counts.get(&bn.input[0]) != Some(&1) || bn.output.len() > 1 && bn.output[1..].iter().any(|o| !o.is_empty()) {
            continue;
        }
        folds.push((c, b));
    }
    let mut added = vec![];
    for &(c, b) in &folds {
        let (conv, bn) = (&graph.node[c], &graph.node[b]);
        let param = |i: usize| constant_f32(graph, &bn.input[i]);
        let (gamma, beta, mean, var) = (param(1)?, param(2)?, param(3)?, param(4)?);
        let eps = onnx::attr_f32(bn, "epsilon", 1e-5);
        let w_t = constant(graph, &conv.input[1])
            .ok_or_else(|| format!("Conv {:?}: its weight is not a constant", conv.name()))?;
        let (mut w, dims) = (onnx::tensor_f32(w_t, None)?, w_t.dims.clone());
        let out_channels = gamma.len();
        let mut bias = match conv.input.get(2).filter(|s| !s.is_empty()) {
            Some(name) => constant_f32(graph, name)?,
            None => vec![0.0; out_channels],
        };
        if dims.first() != Some(&(out_channels as i64)) || bias.len() != out_channels {
            return Err(format!(
                "Conv {:?}: {out_channels} BatchNorm channels against weight dims {dims:?}",
                conv.name()
            ));
        }
        let per = w.len() / out_channels;
        for o in 0..out_channels {
            let k = gamma[o] / (var[o] + eps).sqrt();
            w[o * per..(o + 1) * per].iter_mut().for_each(|v| *v *= k);
            bias[o] = (bias[o] - mean[o]) * k + beta[o];
        }
        let stem = conv.output[0].clone();
        added.push((
            c,
            b,
            f32_tensor(&format!("{stem}.folded_weight"), &dims, &w),
            f32_tensor(&format!("{stem}.folded_bias"), &[out_channels as i64], &bias),
        ));
    }
    let mut removed = HashSet::new();
    for (c, b, w, bias) in added {
        let bn_out = graph.node[b].output[0].clone();
        let conv = &mut graph.node[c];
        conv.input.truncate(2);
        conv.input[1] = w.name().to_string();
        conv.input.push(bias.name().to_string());
        conv.output[0] = bn_out;
        graph.initializer.extend([w, bias]);
        removed.insert(b);
    }
    let n = removed.len();
    remove_nodes(graph, &removed);
    Ok(n)
}

/// A ReLU, or a Clip whose lower bound is 0, right after a Conv whose output nothing else reads.
fn merges_into_conv(graph: &GraphProto, act: &NodeProto) -> bool {
    match act.op_type() {
        "Relu" => true,
        "Clip" => {
            let bound = |i: usize| act.input.get(i).filter(|s| !s.is_empty()).map(|s| constant_f32(graph, s));
            let min_zero = match bound(1) {
                Some(Ok(v)) => v.first() == Some(&0.0),
                _ => onnx::attr(act, "min").is_some_and(|a| a.f() == 0.0),
            };
            let max_ok = !matches!(bound(2), Some(Err(_)));
            min_zero && max_ok
        }
        _ => false,
    }
}

/// Merges each ReLU / ReLU6 (Clip at 0) that follows a Conv into it: the Conv then produces the
/// activation's output, whose calibrated range (at least 0, at most the clip) a uint8 with zero
/// point 0 represents, so quantizing it applies the activation. The Convs `kept` (ordinals
/// among the Convs, [`matching_convs`]) stay float, so keep theirs. Call on a graph calibrated
/// before the merge. Returns how many it merged.
pub fn merge_activations(model: &mut ModelProto, kept: &BTreeMap<usize, String>) -> Result<usize, String> {
    let graph = model.graph.as_mut().ok_or("no graph")?;
    let counts = readers(graph);
    let conv_of = conv_producers(graph);
    let float = conv_nodes_at(graph, kept);
    let mut merges = vec![];
    for (a, act) in graph.node.iter().enumerate() {
        let Some(&c) = act.input.first().and_then(|i| conv_of.get(i)) else { continue };
        if float.contains(&c) {
            continue;
        }
        if counts.get(&act.input[0]) == Some(&1) && merges_into_conv(graph, act) {
            merges.push((c, a, act.output[0].clone()));
        }
    }
    let removed: HashSet<usize> = merges.iter().map(|m| m.1).collect();
    for (c, _, out) in merges {
        graph.node[c].output[0] = out;
    }
    remove_nodes(graph, &removed);
    Ok(removed.len())
}

/// The ops whose float activations are quantized: onnxruntime runs each group of DQ → op → Q
/// as one integer kernel (QLinearConv, QLinearAdd, QLinearConcat, a uint8 Resize, …).
const QUANTIZED_OPS: [&str; 7] = ["Conv", "Add", "Concat", "Resize", "GlobalAveragePool", "AveragePool", "MaxPool"];

/// The activations to quantize: the non-constant float data inputs and the output of each of
/// [`QUANTIZED_OPS`], except the graph outputs (the logits stay float), sorted.
pub fn activation_targets(model: &ModelProto) -> Vec<String> {
    let graph = onnx::graph(model);
    let floats = float_values(graph);
    let outputs = output_values(graph);
    let mut out = BTreeSet::new();
    for n in graph.node.iter().filter(|n| QUANTIZED_OPS.contains(&n.op_type())) {
        let data = match n.op_type() {
            "Conv" | "Resize" => &n.input[..1],
            _ => &n.input[..],
        };
        for t in data.iter().chain(n.output.first()) {
            if floats.contains(t.as_str()) && !outputs.contains(t.as_str()) && constant(graph, t).is_none() {
                out.insert(t.clone());
            }
        }
    }
    out.into_iter().collect()
}

/// The graph outputs and the values that become one only through layout ops read by nothing
/// else (the final Resize before tf2onnx's Transpose to NHWC): quantizing those would round the
/// logits themselves, and keep infer from folding that Resize (`crate::final_resize`).
fn output_values(graph: &GraphProto) -> HashSet<&str> {
    let readers = onnx::readers(graph);
    let made: HashMap<&str, &NodeProto> =
        graph.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n))).collect();
    let mut outputs = HashSet::new();
    for o in &graph.output {
        let mut at = o.name();
        outputs.insert(at);
        let layout_op = |n: &&&NodeProto| matches!(n.op_type(), "Transpose" | "Reshape" | "Identity");
        while let Some(input) = made.get(at).filter(layout_op).and_then(|n| n.input.first()) {
            at = input.as_str();
            if readers.get(at) != Some(&1) {
                break;
            }
            outputs.insert(at);
        }
    }
    outputs
}

/// The values of float type, propagated from the float graph inputs and constants: an op's
/// output is float where its first input is, except Shape (int64) and Cast (its `to`).
fn float_values(graph: &GraphProto) -> HashSet<&str> {
    let elem = |v: &onnx::ValueInfoProto| match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(onnx::proto::type_proto::Value::TensorType(t)) => t.elem_type(),
        _ => 0,
    };
    let mut floats: HashSet<&str> =
        graph.input.iter().filter(|i| elem(i) == onnx::DATA_TYPE_FLOAT).map(|i| i.name()).collect();
    floats.extend(graph.initializer.iter().filter(|t| t.data_type() == onnx::DATA_TYPE_FLOAT).map(|t| t.name()));
    for n in &graph.node {
        let float = match n.op_type() {
            "Shape" | "Size" => false,
            "Cast" => onnx::attr(n, "to").is_some_and(|a| a.i() == onnx::DATA_TYPE_FLOAT as i64),
            "Constant" => onnx::attr(n, "value")
                .and_then(|a| a.t.as_ref())
                .is_some_and(|t| t.data_type() == onnx::DATA_TYPE_FLOAT),
            _ => n.input.first().is_some_and(|i| floats.contains(i.as_str())),
        };
        if float {
            floats.extend(n.output.iter().map(String::as_str));
        }
    }
    floats
}

/// uint8 asymmetric parameters for the range `[lo, hi]` (widened to hold 0): scale, zero point.
pub fn uint8_params(lo: f32, hi: f32) -> (f32, u8) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    let zp = (-lo / scale).round().clamp(0.0, 255.0) as u8;
    (scale, zp)
}

/// Per-output-channel symmetric int8 weights: the values and each channel's scale.
pub fn int8_per_channel(w: &[f32], channels: usize) -> (Vec<i8>, Vec<f32>) {
    let per = w.len() / channels.max(1);
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(channels);
    for c in w.chunks(per.max(1)).take(channels) {
        let amax = c.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
        q.extend(c.iter().map(|v| (v / s).round().clamp(-127.0, 127.0) as i8));
        scales.push(s);
    }
    (q, scales)
}

/// A Conv's name in messages: its node name, else its output's.
fn conv_label(n: &NodeProto) -> &str {
    if n.name().is_empty() { &n.output[0] } else { n.name() }
}

/// The Convs `patterns` (`--exclude`: wildcards `*`, `?`) match, by a Conv's node name, weight
/// or output name, as ordinals among the graph's Convs in node order (which folding BatchNorms
/// and merging activations keep) with their labels. A pattern matching no Conv is an error
/// naming a few.
pub fn matching_convs(model: &ModelProto, patterns: &[String]) -> Result<BTreeMap<usize, String>, String> {
    let graph = onnx::graph(model);
    let convs: Vec<&NodeProto> = conv_indices(graph).into_iter().map(|i| &graph.node[i]).collect();
    let hits = |p: &str, n: &NodeProto| {
        [n.name(), n.input.get(1).map_or("", String::as_str), n.output[0].as_str()]
            .iter()
            .any(|name| !name.is_empty() && crate::glob::glob_match(p, name))
    };
    let mut out = BTreeMap::new();
    for p in patterns {
        let matched: Vec<usize> = (0..convs.len()).filter(|&i| hits(p, convs[i])).collect();
        if matched.is_empty() {
            let some: Vec<&str> = convs[convs.len().saturating_sub(3)..].iter().map(|n| conv_label(n)).collect();
            return Err(format!(
                "--exclude {p:?} matches no Conv (its node name, weight or output name); the last Convs are {}",
                some.join(", ")
            ));
        }
        out.extend(matched.into_iter().map(|i| (i, conv_label(convs[i]).to_string())));
    }
    Ok(out)
}

/// What [`quantize`] did.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct QdqStats {
    /// Convs with int8 weights.
    pub convs: usize,
    /// Convs kept in float (`--exclude`): float weights and output.
    pub excluded: usize,
    pub activations: usize,
}

/// Rewrites `model` (BatchNorm folded, activations merged) into QDQ form with the calibrated
/// `ranges` of [`activation_targets`], except the Convs `excluded` ([`matching_convs`]'s
/// ordinals), whose weights and outputs stay float. Needs opset 13 (per-channel DequantizeLinear).
pub fn quantize(
    model: &mut ModelProto,
    ranges: &HashMap<String, (f32, f32)>,
    excluded: &BTreeMap<usize, String>,
) -> Result<QdqStats, String> {
    if let Some(v) = onnx::opset(model).filter(|&v| v < 13) {
        return Err(format!(
            "opset {v}: per-channel QuantizeLinear needs opset 13 or later; re-export with opset_version=17"
        ));
    }
    let targets = activation_targets(model);
    let params: HashMap<String, (f32, u8)> = targets
        .iter()
        .map(|t| {
            ranges
                .get(t)
                .map(|&(lo, hi)| (t.clone(), uint8_params(lo, hi)))
                .ok_or_else(|| format!("no calibrated range for {t:?}"))
        })
        .collect::<Result<_, _>>()?;
    let graph = model.graph.as_mut().ok_or("no graph")?;
    let float_convs = conv_nodes_at(graph, excluded);
    let mut params = params;
    for &i in &float_convs {
        params.remove(&graph.node[i].output[0]);
    }
    // A Resize (or MaxPool) keeps its input's parameters, so that onnxruntime runs it on uint8.
    for n in graph.node.iter().filter(|n| matches!(n.op_type(), "Resize" | "MaxPool")) {
        if let (Some(&p), true) = (params.get(&n.input[0]), params.contains_key(&n.output[0])) {
            params.insert(n.output[0].clone(), p);
        }
    }
    let mut weight_nodes = vec![];
    let mut initializers = vec![];
    let mut convs = 0;
    for i in conv_indices(graph).into_iter().filter(|i| !float_convs.contains(i)) {
        let x_scale = params.get(&graph.node[i].input[0]).map(|p| p.0);
        let (nodes, inits, inputs) = quantized_weights(graph, &graph.node[i], x_scale)?;
        weight_nodes.extend(nodes);
        initializers.extend(inits);
        graph.node[i].input = inputs;
        convs += 1;
    }
    let mut qdq: HashMap<String, [NodeProto; 2]> = HashMap::new();
    for (t, &(scale, zp)) in &params {
        let (s, z, q, dq) =
            (format!("{t}.scale"), format!("{t}.zero_point"), format!("{t}.quantized"), format!("{t}.dequantized"));
        initializers.push(f32_tensor(&s, &[], &[scale]));
        initializers.push(raw_tensor(&z, &[], UINT8, vec![zp]));
        qdq.insert(
            t.clone(),
            [
                node("QuantizeLinear", &q, &[t, &s, &z], &q, None),
                node("DequantizeLinear", &dq, &[&q, &s, &z], &dq, None),
            ],
        );
    }
    // Every reader of a quantized value reads its dequantized copy (graph outputs keep it).
    for n in graph.node.iter_mut() {
        for input in n.input.iter_mut().filter(|i| qdq.contains_key(i.as_str())) {
            *input = format!("{input}.dequantized");
        }
    }
    let mut nodes = weight_nodes;
    for input in graph.input.iter().filter_map(|i| qdq.remove(i.name())) {
        nodes.extend(input);
    }
    for n in std::mem::take(&mut graph.node) {
        let after: Vec<NodeProto> = n.output.iter().filter_map(|o| qdq.remove(o)).flatten().collect();
        nodes.push(n);
        nodes.extend(after);
    }
    graph.node = nodes;
    graph.initializer.extend(initializers);
    graph.value_info.clear();
    prune(graph);
    Ok(QdqStats { convs, excluded: float_convs.len(), activations: params.len() })
}

type Quantized = (Vec<NodeProto>, Vec<TensorProto>, Vec<String>);

/// One Conv's weight as int8 per output channel, and its bias as int32 at the input scale times
/// each channel's weight scale (onnxruntime's QLinearConv needs both), each behind a
/// DequantizeLinear on axis 0. Returns the nodes, initializers and the Conv's new inputs.
fn quantized_weights(graph: &GraphProto, conv: &NodeProto, x_scale: Option<f32>) -> Result<Quantized, String> {
    let stem = conv.output[0].clone();
    let w_t = constant(graph, &conv.input[1])
        .ok_or_else(|| format!("Conv {:?}: its weight is not a constant", conv.name()))?;
    let (w, dims) = (onnx::tensor_f32(w_t, None)?, w_t.dims.clone());
    let channels = *dims.first().ok_or("a weight without dims")? as usize;
    let (q, scales) = int8_per_channel(&w, channels);
    let c = [channels as i64];
    let (wq, ws, wz, wd) = (
        format!("{stem}.weight_int8"),
        format!("{stem}.weight_scale"),
        format!("{stem}.weight_zero_point"),
        format!("{stem}.weight"),
    );
    let mut inits = vec![
        raw_tensor(&wq, &dims, INT8, q.iter().map(|&v| v as u8).collect()),
        f32_tensor(&ws, &c, &scales),
        raw_tensor(&wz, &c, INT8, vec![0; channels]),
    ];
    let mut nodes = vec![node("DequantizeLinear", &wd, &[&wq, &ws, &wz], &wd, Some(0))];
    let mut inputs = vec![conv.input[0].clone(), wd];
    if let Some(b_name) = conv.input.get(2).filter(|s| !s.is_empty()) {
        let b = constant_f32(graph, b_name)?;
        match x_scale {
            Some(xs) => {
                let bs: Vec<f32> = scales.iter().map(|s| s * xs).collect();
                let bq: Vec<i32> = b
                    .iter()
                    .zip(&bs)
                    .map(|(v, s)| (v / s).round().clamp(i32::MIN as f32, i32::MAX as f32) as i32)
                    .collect();
                let (bq_n, bs_n, bz_n, bd) = (
                    format!("{stem}.bias_int32"),
                    format!("{stem}.bias_scale"),
                    format!("{stem}.bias_zero_point"),
                    format!("{stem}.bias"),
                );
                inits.push(raw_tensor(&bq_n, &c, INT32, bq.iter().flat_map(|v| v.to_le_bytes()).collect()));
                inits.push(f32_tensor(&bs_n, &c, &bs));
                inits.push(raw_tensor(&bz_n, &c, INT32, vec![0; 4 * channels]));
                nodes.push(node("DequantizeLinear", &bd, &[&bq_n, &bs_n, &bz_n], &bd, Some(0)));
                inputs.push(bd);
            }
            None => inputs.push(b_name.clone()),
        }
    }
    Ok((nodes, inits, inputs))
}

/// Removes nodes nothing reads (repeatedly) and initializers no node reads (from the graph's
/// inputs too, where older exports list them).
pub fn prune(graph: &mut GraphProto) {
    loop {
        let counts = readers(graph);
        let before = graph.node.len();
        graph.node.retain(|n| n.output.iter().any(|o| counts.contains_key(o)));
        if graph.node.len() == before {
            break;
        }
    }
    let counts = readers(graph);
    let dropped: HashSet<String> =
        graph.initializer.iter().filter(|t| !counts.contains_key(t.name())).map(|t| t.name().to_string()).collect();
    graph.initializer.retain(|t| !dropped.contains(t.name()));
    graph.input.retain(|i| !dropped.contains(i.name()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uint8_parameters_hold_zero_exactly() {
        let (s, z) = uint8_params(-1.0, 3.0);
        assert!((s - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(z, 64);
        assert_eq!(uint8_params(0.5, 6.0), (6.0 / 255.0, 0), "a positive range widens down to 0");
        assert_eq!(uint8_params(0.0, 0.0), (1.0, 0), "an all-zero tensor");
    }

    #[test]
    fn int8_weights_are_symmetric_per_output_channel() {
        let (q, s) = int8_per_channel(&[0.5, -1.0, 0.25, 2.0, 0.0, 0.0], 3);
        assert_eq!(s, vec![1.0 / 127.0, 2.0 / 127.0, 1.0]);
        assert_eq!(q, vec![64, -127, 16, 127, 0, 0]);
    }
}
