//! Which ONNX values are backbone parameters: one rule for `build.rs` (where it cuts a graph into
//! backbone and head) and `train` (what `--freeze backbone` freezes), so the two cannot disagree.

/// Name prefixes of backbone parameters: smp's `encoder.*`, torchvision's `backbone.*`.
pub const BACKBONE_PREFIXES: [&str; 2] = ["encoder.", "backbone."];

/// Whether the ONNX value `name` is a backbone parameter.
pub fn is_backbone_param(name: &str) -> bool {
    BACKBONE_PREFIXES.iter().any(|p| name.starts_with(p))
}
