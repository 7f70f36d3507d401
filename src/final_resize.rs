//! A graph's final bilinear Resize (and the Transpose to NHWC after it, in tf2onnx's Keras
//! exports) taken out of what onnxruntime runs, for the mask's own upsampling to do
//! ([`crate::upsample::upsample_argmax_through`]): by constant scales (smp's ×4 head) or to the
//! input's size, where the graph computes `sizes` from its input's shape (torchvision, Keras).

use std::collections::HashMap;

use crate::graph::dims_mut;
use crate::layout::Layout;
use crate::onnx::{self, GraphProto, ModelProto, NodeProto, proto};
use crate::shape_values::ShapeValues;
use crate::upsample::{Coordinates, Upsampling};

/// A model without its final Resize: its first output is now that Resize's input (the logits
/// before upsampling, NCHW), and `upsampling` is what the Resize did.
#[derive(Debug, Clone)]
pub struct Folded {
    pub model: ModelProto,
    pub upsampling: Upsampling,
    /// Whether a Transpose to NHWC after the Resize went too: the output is NCHW now, whatever
    /// the input's layout.
    pub transposed: bool,
}

/// `model` (its input laid out as `layout`) without the bilinear Resize that makes its first
/// output, directly or through a Transpose to NHWC. `None` where the first output is not made
/// so: a Resize of mode `linear`, without `axes` or antialiasing, by constant scales
/// `[1, 1, sh, sw]` of at least 1 or to `sizes` that are the input's batch, the logits' classes
/// and the input's height and width for any input size ([`sizes_are_the_inputs`]); whose output
/// nothing else reads and whose input is neither a graph input nor output.
pub fn without_final_resize(model: &ModelProto, layout: Layout) -> Option<Folded> {
    let g = onnx::graph(model);
    let readers = onnx::readers(g);
    let out = g.output.first()?.name();
    let made = |name: &str| g.node.iter().position(|n| n.output.first().is_some_and(|o| o == name));
    let mut last = made(out)?;
    let mut removed = vec![last];
    let transposed = g.node[last].op_type() == "Transpose";
    if transposed {
        let perm = onnx::attr(&g.node[last], "perm").map(|a| a.ints.as_slice());
        let input = g.node[last].input.first()?;
        if perm != Some(&[0, 2, 3, 1]) || readers.get(input.as_str()) != Some(&1) {
            return None;
        }
        last = made(input)?;
        removed.push(last);
    }
    let node = &g.node[last];
    let input = node.input.first()?.as_str();
    let io = g.input.iter().chain(&g.output).any(|v| v.name() == input);
    let plain = node.op_type() == "Resize"
        && onnx::attr_str(node, "mode", "nearest") == "linear"
        && onnx::attr(node, "antialias").and_then(|a| a.i).unwrap_or(0) == 0
        && onnx::attr(node, "axes").is_none()
        && onnx::attr_str(node, "keep_aspect_ratio_policy", "stretch") == "stretch";
    if io || !plain || readers.get(out) != Some(&1) {
        return None;
    }
    let upsampling = upsampling(model, node, layout)?;
    let mut model = model.clone();
    let g = model.graph.as_mut()?;
    removed.sort_unstable();
    for at in removed.into_iter().rev() {
        g.node.remove(at);
    }
    retarget_output(&mut g.output[0], input, transposed);
    drop_dead(g);
    Some(Folded { model, upsampling, transposed })
}

/// What a plain linear Resize `node` does, where it is an upsampling segtune can fold.
fn upsampling(model: &ModelProto, node: &NodeProto, layout: Layout) -> Option<Upsampling> {
    let g = onnx::graph(model);
    // Resize-10 takes (X, scales) and maps coordinates asymmetrically; later ones (X, roi,
    // scales, sizes).
    if onnx::opset(model).is_some_and(|v| v < 11) {
        return scaled(g, node.input.get(1)?, Coordinates::Asymmetric);
    }
    let mode = onnx::attr_str(node, "coordinate_transformation_mode", "half_pixel");
    let coordinates = Coordinates::from_onnx(&mode)?;
    match node.input.get(3).filter(|s| !s.is_empty()) {
        None => scaled(g, node.input.get(2)?, coordinates),
        Some(sizes) => {
            sizes_are_the_inputs(model, &node.input[0], sizes, layout).then(|| Upsampling::to_input(coordinates))
        }
    }
}

/// The upsampling by the constant `scales` `[1, 1, sh, sw]`.
fn scaled(g: &GraphProto, scales: &str, coordinates: Coordinates) -> Option<Upsampling> {
    let values = onnx::tensor_f32(onnx::constant(g, scales)?, None).ok()?;
    let [1.0, 1.0, sh, sw] = values[..] else { return None };
    Upsampling::new(coordinates, (sh, sw))
}

/// Whether `sizes` of a Resize of `x` is `[N, C, H, W]`: the input's batch, `x`'s channels, the
/// input's height and width (in `layout`), whatever the input's size. Evaluated for two input
/// sizes with `x`'s own height and width unknown (values no input has), through the shape
/// arithmetic [`ShapeValues`] follows: a constant `sizes` or one from `x`'s height is refused.
pub fn sizes_are_the_inputs(model: &ModelProto, x: &str, sizes: &str, layout: Layout) -> bool {
    let g = onnx::graph(model);
    let Some(image) = onnx::graph_inputs(g).into_iter().next() else { return false };
    let channels = |dims: &[onnx::Dim], axis: usize| match dims.get(axis) {
        Some(onnx::Dim::Fixed(n)) if *n > 0 => *n,
        _ => -1021,
    };
    let classes = g.output.first().map(|o| onnx::ValueInfo::from_proto(o).dims).unwrap_or_default();
    let c_out = channels(&classes, if layout == Layout::Nhwc { 3 } else { 1 });
    let c_in = channels(&image.dims, if layout == Layout::Nhwc { 3 } else { 1 });
    [(2, 97, 131), (3, 64, 48)].into_iter().all(|(n, h, w)| {
        let dims = match layout {
            Layout::Nchw => vec![n, c_in, h, w],
            Layout::Nhwc => vec![n, h, w, c_in],
        };
        let shapes = HashMap::from([(image.name.clone(), dims), (x.to_string(), vec![n, c_out, -1009, -1013])]);
        let values = ShapeValues::new(g, onnx::opset(model).unwrap_or(11), shapes);
        values.value(sizes) == Some(vec![n, c_out, h, w])
    })
}

/// Removes the nodes none of whose outputs is read (the `scales` or `sizes` arithmetic of a
/// removed Resize, …) and the initializers nothing reads any more (onnxruntime warns of them).
fn drop_dead(g: &mut GraphProto) {
    loop {
        let readers = onnx::readers(g);
        let before = g.node.len();
        g.node.retain(|n| n.output.iter().any(|o| readers.contains_key(o.as_str())));
        if g.node.len() == before {
            break;
        }
    }
    let readers = onnx::readers(g);
    let unread: Vec<String> =
        g.initializer.iter().filter(|t| !readers.contains_key(t.name())).map(|t| t.name().to_string()).collect();
    g.initializer.retain(|t| !unread.iter().any(|u| u == t.name()));
    // An initializer also listed as a graph input (older exports) leaves that list too.
    g.input.retain(|v| !unread.iter().any(|u| u == v.name()));
}

/// The graph output renamed to `input` (the logits before the Resize), its height and width
/// symbolic, NCHW where a Transpose to NHWC went too.
fn retarget_output(output: &mut proto::ValueInfoProto, input: &str, transposed: bool) {
    use proto::tensor_shape_proto::dimension::Value as D;
    output.name = Some(input.to_string());
    let Some(dims) = dims_mut(output) else { return };
    if transposed && dims.len() == 4 {
        dims.swap(1, 3); // [N, H, W, C] → [N, C, W, H]; H and W become symbolic below.
    }
    for (dim, name) in dims.iter_mut().skip(2).zip(["logits_height", "logits_width"]) {
        dim.value = Some(D::DimParam(name.into()));
    }
}
