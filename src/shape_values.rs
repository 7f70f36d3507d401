//! The values of the small integer tensors an ONNX graph computes from its tensors' shapes
//! (Shape, Slice, Gather, Concat, Cast, Unsqueeze …), for shapes given: enough to tell that a
//! Resize's `sizes` is its graph input's height and width, as torchvision's and tf2onnx's
//! exports compute it, whatever size the input has.

use std::collections::HashMap;

use crate::onnx::{self, GraphProto, NodeProto, TensorProto};

/// Chains longer than this are not followed (a `sizes` is a handful of nodes).
const DEPTH: usize = 24;

/// An evaluator of shape arithmetic over `graph`, with the shapes of some of its values known.
pub struct ShapeValues<'a> {
    graph: &'a GraphProto,
    producers: HashMap<&'a str, &'a NodeProto>,
    shapes: HashMap<String, Vec<i64>>,
    opset: i64,
}

impl<'a> ShapeValues<'a> {
    /// An evaluator over `graph` (of a model at `opset`) where `shapes` gives the shapes that
    /// Shape nodes may read; any other Shape makes a value unknown.
    pub fn new(graph: &'a GraphProto, opset: i64, shapes: HashMap<String, Vec<i64>>) -> Self {
        let producers = graph.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n))).collect();
        ShapeValues { graph, producers, shapes, opset }
    }

    /// The flattened integer values of `name`, or `None` where they do not follow from the
    /// given shapes and constants through the ops this knows.
    pub fn value(&self, name: &str) -> Option<Vec<i64>> {
        self.eval(name, 0)
    }

    fn eval(&self, name: &str, depth: usize) -> Option<Vec<i64>> {
        if depth > DEPTH || name.is_empty() {
            return None;
        }
        let Some(node) = self.producers.get(name) else {
            return self.graph.initializer.iter().find(|t| t.name() == name).and_then(integers);
        };
        let input = |i: usize| node.input.get(i).and_then(|n| self.eval(n, depth + 1));
        match node.op_type() {
            "Constant" => onnx::attr(node, "value").and_then(|a| a.t.as_ref()).and_then(integers),
            "Shape" => self.shape(node),
            "Identity" | "Cast" | "Unsqueeze" | "Squeeze" | "Reshape" | "Flatten" => input(0),
            "Concat" => {
                node.input.iter().map(|n| self.eval(n, depth + 1)).collect::<Option<Vec<_>>>().map(|v| v.concat())
            }
            "Gather" => gather(&input(0)?, &input(1)?, onnx::attr(node, "axis").and_then(|a| a.i).unwrap_or(0)),
            "Slice" => {
                let attr = |n: &str| onnx::attr(node, n).map(|a| a.ints.clone());
                let (starts, ends, axes, steps) = if self.opset < 10 {
                    (attr("starts")?, attr("ends")?, attr("axes"), None)
                } else {
                    (input(1)?, input(2)?, node.input.get(3).filter(|n| !n.is_empty()).and_then(|_| input(3)), input(4))
                };
                slice(&input(0)?, &starts, &ends, axes.as_deref(), steps.as_deref())
            }
            _ => None,
        }
    }

    /// A Shape node's output: the known shape of its input, `start`..`end` (opset 15).
    fn shape(&self, node: &NodeProto) -> Option<Vec<i64>> {
        let dims = self.shapes.get(node.input.first()?)?;
        let rank = dims.len() as i64;
        let at = |name: &str, default: i64| {
            let v = onnx::attr(node, name).and_then(|a| a.i).unwrap_or(default);
            (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize
        };
        let (start, end) = (at("start", 0), at("end", rank));
        Some(dims.get(start..end.max(start))?.to_vec())
    }
}

/// The values of an integer (or integral float) tensor of at most 16 elements.
fn integers(t: &TensorProto) -> Option<Vec<i64>> {
    const INT32: i32 = 6;
    const INT64: i32 = 7;
    let raw = t.raw_data.as_deref().unwrap_or_default();
    let values: Vec<i64> = match t.data_type() {
        INT64 if !raw.is_empty() => {
            raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
        }
        INT64 => t.int64_data.clone(),
        INT32 if !raw.is_empty() => {
            raw.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64).collect()
        }
        INT32 => t.int32_data.iter().map(|&v| v as i64).collect(),
        onnx::DATA_TYPE_FLOAT => {
            let v = onnx::tensor_f32(t, None).ok()?;
            v.iter().all(|x| x.fract() == 0.0).then(|| v.iter().map(|&x| x as i64).collect())?
        }
        _ => return None,
    };
    (values.len() <= 16).then_some(values)
}

/// ONNX Gather of a 1-D `data` at `indices` (negative from the end).
fn gather(data: &[i64], indices: &[i64], axis: i64) -> Option<Vec<i64>> {
    if axis != 0 && axis != -1 {
        return None;
    }
    let n = data.len() as i64;
    indices.iter().map(|&i| data.get(if i < 0 { i + n } else { i } as usize).copied()).collect()
}

/// ONNX Slice of a 1-D `data` (axes, where given, must be that axis), positive steps.
fn slice(data: &[i64], starts: &[i64], ends: &[i64], axes: Option<&[i64]>, steps: Option<&[i64]>) -> Option<Vec<i64>> {
    if starts.len() != 1 || ends.len() != 1 || axes.is_some_and(|a| a != [0] && a != [-1]) {
        return None;
    }
    let step = steps.map_or(Some(1), |s| s.first().copied())?;
    if step < 1 {
        return None;
    }
    let n = data.len() as i64;
    let at = |v: i64| (if v < 0 { v + n } else { v }).clamp(0, n) as usize;
    let (start, end) = (at(starts[0]), at(ends[0]));
    Some(data.get(start..end.max(start))?.iter().step_by(step as usize).copied().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_and_gathers_follow_onnx() {
        let dims = [2, 3, 97, 131];
        assert_eq!(slice(&dims, &[2], &[i64::MAX], None, None), Some(vec![97, 131]));
        assert_eq!(slice(&dims, &[-2], &[4], Some(&[0]), Some(&[1])), Some(vec![97, 131]));
        assert_eq!(slice(&dims, &[0], &[4], None, Some(&[2])), Some(vec![2, 97]));
        assert_eq!(slice(&dims, &[3], &[1], None, None), Some(vec![]));
        assert_eq!(slice(&dims, &[0], &[4], None, Some(&[-1])), None, "negative steps are not followed");
        assert_eq!(gather(&dims, &[-1, 2], 0), Some(vec![131, 97]));
        assert_eq!(gather(&dims, &[4], 0), None);
    }
}
