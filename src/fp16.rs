//! fp16 rewriting of an ONNX graph for GPU deployment: every float initializer and constant in
//! float16, the compute in float16, with the model's fp32 inputs and outputs kept (a Cast after
//! each input and before each output). What must stay fp32 stays: a Resize's `roi` and `scales`.

use std::collections::HashSet;

use crate::onnx::proto::attribute_proto::AttributeType;
use crate::onnx::{self, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};

const FLOAT16: i32 = 10;

/// Values that must stay fp32: what a Resize reads as `roi` or `scales`.
fn kept_fp32(graph: &GraphProto) -> HashSet<String> {
    graph
        .node
        .iter()
        .filter(|n| n.op_type() == "Resize")
        .flat_map(|n| n.input.iter().skip(1).take(2).filter(|s| !s.is_empty()).cloned())
        .collect()
}

fn to_half(t: &mut TensorProto) -> Result<(), String> {
    let values = onnx::tensor_f32(t, None)?;
    t.raw_data = Some(values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect());
    t.float_data.clear();
    t.data_type = Some(FLOAT16);
    Ok(())
}

fn cast(input: &str, output: &str, to: i32) -> NodeProto {
    NodeProto {
        op_type: Some("Cast".into()),
        name: Some(format!("{output}.cast")),
        input: vec![input.into()],
        output: vec![output.into()],
        attribute: vec![AttributeProto {
            name: Some("to".into()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(to as i64),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Rewrites `model` to compute in float16. Returns how many tensors it converted.
pub fn convert(model: &mut ModelProto) -> Result<usize, String> {
    let graph = model.graph.as_mut().ok_or("no graph")?;
    let keep = kept_fp32(graph);
    let mut converted = 0;
    for t in graph.initializer.iter_mut().filter(|t| t.data_type() == onnx::DATA_TYPE_FLOAT && !keep.contains(t.name()))
    {
        to_half(t)?;
        converted += 1;
    }
    for n in graph.node.iter_mut() {
        let kept = n.output.iter().any(|o| keep.contains(o));
        for a in n.attribute.iter_mut() {
            match (n.op_type.as_deref(), a.name()) {
                (Some("Constant" | "ConstantOfShape"), "value") if !kept => {
                    if let Some(t) = a.t.as_mut().filter(|t| t.data_type() == onnx::DATA_TYPE_FLOAT) {
                        to_half(t)?;
                        converted += 1;
                    }
                }
                (Some("Cast"), "to") if !kept && a.i() == onnx::DATA_TYPE_FLOAT as i64 => a.i = Some(FLOAT16 as i64),
                _ => {}
            }
        }
    }
    // fp32 in and out: a Cast after each float input, one before each float output.
    let inits: HashSet<String> = graph.initializer.iter().map(|t| t.name().to_string()).collect();
    let mut head = vec![];
    for input in graph.input.iter().filter(|i| !inits.contains(i.name()) && is_float(i)) {
        let half_name = format!("{}.fp16", input.name());
        for n in graph.node.iter_mut() {
            n.input.iter_mut().filter(|i| *i == input.name()).for_each(|i| *i = half_name.clone());
        }
        head.push(cast(input.name(), &half_name, FLOAT16));
    }
    let mut tail = vec![];
    for output in graph.output.iter().filter(|o| is_float(o)) {
        let half_name = format!("{}.fp16", output.name());
        for n in graph.node.iter_mut() {
            n.output.iter_mut().filter(|o| *o == output.name()).for_each(|o| *o = half_name.clone());
            n.input.iter_mut().filter(|i| *i == output.name()).for_each(|i| *i = half_name.clone());
        }
        tail.push(cast(&half_name, output.name(), onnx::DATA_TYPE_FLOAT));
    }
    graph.node.splice(0..0, head);
    graph.node.extend(tail);
    graph.value_info.clear();
    Ok(converted)
}

fn is_float(v: &onnx::ValueInfoProto) -> bool {
    matches!(
        v.r#type.as_ref().and_then(|t| t.value.as_ref()),
        Some(onnx::proto::type_proto::Value::TensorType(t)) if t.elem_type() == onnx::DATA_TYPE_FLOAT
    )
}
