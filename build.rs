//! Build script: compiles `proto/onnx.proto` with prost (through protox, no system `protoc`),
//! imports every `models/*.onnx` into burn code with burn-onnx's `ModelGen`, and emits, per model,
//! the table that maps each burn parameter path to the ONNX initializer it came from. Where a
//! graph can be cut after its backbone (`split_head`), the downstream part (decoder and head) is
//! imported too, as a model of its own with its own table.
//!
//! Generated files (all under `$OUT_DIR`):
//! - `onnx.rs`: prost types of the ONNX protobuf schema;
//! - `model/<stem>.rs` and `model/<stem>.bpk`: burn-onnx's code and its own weight pack;
//! - `model/<stem>_params.rs`: the burn-path ↔ ONNX-initializer table;
//! - `heads/<stem>_head.onnx`, `model/<stem>_head.rs`, `model/<stem>_head_params.rs`: the same
//!   for the graph after the backbone, when it splits;
//! - `models.rs`: one module per model (and head), the registry `MODELS`, `dispatch` (name → model
//!   type) and `dispatch_split` (name → model and head types).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use burn_onnx::ext::OpOverride;
use burn_onnx::ext::proc_macro2::{Ident, Span, TokenStream};
use burn_onnx::ext::quote::quote;
use burn_onnx::ext::{Argument, CodegenContext, Field, Node, NodeType, ProcessError, arg_to_ident};
use burn_onnx::{LoadStrategy, ModelGen};
use onnx_ir::Message as _;

#[path = "src/backbone_names.rs"]
mod backbone_names;
use backbone_names::is_backbone_param;

/// Models up to this size are embedded in the binary (the original graph is needed to export);
/// larger ones are read from their path in `models/` at run time.
const EMBED_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    println!("cargo:rerun-if-changed=src/backbone_names.rs");
    println!("cargo:rerun-if-changed=models");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));

    compile_proto(&manifest, &out_dir);

    let mut models: Vec<PathBuf> = std::fs::read_dir(manifest.join("models"))
        .expect("models/ must exist")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    models.sort();

    let stems: Vec<String> = models.iter().filter_map(|p| p.file_stem()).map(|s| s.to_string_lossy().into()).collect();
    for stem in &stems {
        assert!(
            !stems.contains(&format!("{stem}_head")),
            "models/{stem}_head.onnx: the name is taken by the generated head of models/{stem}.onnx; rename the file"
        );
    }
    let mut registry = String::new();
    let mut entries = Vec::new();
    for path in &models {
        println!("cargo:rerun-if-changed={}", path.display());
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        assert!(
            stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && stem.chars().next().is_some_and(|c| c.is_ascii_alphabetic()),
            "model file name {stem:?} must be a Rust identifier (letters, digits, _)"
        );
        import(path);
        let gen_dir = out_dir.join("model");
        let bpk = gen_dir.join(format!("{stem}.bpk"));
        let bytes = std::fs::read(path).unwrap();
        let model = onnx_ir::ModelProto::parse_from_bytes(&bytes)
            .unwrap_or_else(|e| panic!("{}: not an ONNX model: {e}", path.display()));
        let params = param_table(path, &model, &bpk);
        // Models whose metadata says NHWC (tf2onnx exports of Keras) give NHWC logits: the trait
        // returns NCHW, what the losses and metrics use.
        let nhwc = model.metadata_props.iter().any(|p| p.key == "segtune.layout" && p.value == "NHWC");
        let logits = if nhwc { "self.forward(input).permute([0, 3, 1, 2])" } else { "self.forward(input)" };
        std::fs::write(gen_dir.join(format!("{stem}_params.rs")), params).unwrap();

        // The decoder and head alone, for training behind a frozen backbone run elsewhere.
        let head = split_head(&model).map(|(head, boundary, reads_image)| {
            let dir = out_dir.join("heads");
            std::fs::create_dir_all(&dir).unwrap();
            let head_path = dir.join(format!("{stem}_head.onnx"));
            std::fs::write(&head_path, head.write_to_bytes().expect("head graph encodes")).unwrap();
            import(&head_path);
            let head_params = param_table(&head_path, &head, &gen_dir.join(format!("{stem}_head.bpk")));
            std::fs::write(gen_dir.join(format!("{stem}_head_params.rs")), head_params).unwrap();
            (boundary, reads_image)
        });

        let size = std::fs::metadata(path).unwrap().len();
        let source = if size <= EMBED_LIMIT_BYTES {
            format!("crate::model::OnnxSource::Embedded(include_bytes!({:?}))", path)
        } else {
            format!("crate::model::OnnxSource::Path({:?})", path)
        };
        writeln!(
            registry,
            "/// Generated by burn-onnx from `models/{stem}.onnx`.\n\
             #[allow(clippy::all, unused, non_snake_case, non_camel_case_types)]\n\
             pub mod {stem} {{\n\
                 include!(concat!(env!(\"OUT_DIR\"), \"/model/{stem}.rs\"));\n\
                 include!(concat!(env!(\"OUT_DIR\"), \"/model/{stem}_params.rs\"));\n\
                 /// burn-onnx's own weight pack, used to cross-check the parameter map.\n\
                 pub const BURNPACK_PATH: &str = {bpk:?};\n\
             }}"
        )
        .unwrap();
        writeln!(
            registry,
            "impl crate::model::SegModel for {stem}::Model {{\n\
                 fn logits(&self, input: burn::tensor::Tensor<4>) -> burn::tensor::Tensor<4> {{ {logits} }}\n\
             }}"
        )
        .unwrap();
        writeln!(
            registry,
            "impl crate::model::Trainee for {stem}::Model {{\n\
                 fn init(device: &burn::tensor::Device) -> Self {{ Self::new(device) }}\n\
                 fn forward_features(&self, mut features: Vec<burn::tensor::Tensor<4>>) -> burn::tensor::Tensor<4> {{\n\
                     let input = features.pop().expect(\"one input\");\n\
                     <Self as crate::model::SegModel>::logits(self, input)\n\
                 }}\n\
             }}"
        )
        .unwrap();
        let split = match &head {
            Some((boundary, reads_image)) => {
                let inputs = boundary.len() + usize::from(*reads_image);
                let args: Vec<String> = (0..inputs).map(|i| format!("f{i}")).collect();
                writeln!(
                    registry,
                    "/// The decoder and head of `models/{stem}.onnx`: the graph after its backbone's outputs {boundary:?}{image_note}.\n\
                     #[allow(clippy::all, unused, non_snake_case, non_camel_case_types)]\n\
                     pub mod {stem}_head {{\n\
                         include!(concat!(env!(\"OUT_DIR\"), \"/model/{stem}_head.rs\"));\n\
                         include!(concat!(env!(\"OUT_DIR\"), \"/model/{stem}_head_params.rs\"));\n\
                         /// The backbone's output values the head reads, in its input order.\n\
                         pub const BOUNDARY: &[&str] = &{boundary:?};\n\
                         /// Whether the head's last input is the image itself (it reads only its shape).\n\
                         pub const READS_IMAGE: bool = {reads_image};\n\
                     }}\n\
                     impl crate::model::Trainee for {stem}_head::Model {{\n\
                         fn init(device: &burn::tensor::Device) -> Self {{ Self::new(device) }}\n\
                         fn forward_features(&self, features: Vec<burn::tensor::Tensor<4>>) -> burn::tensor::Tensor<4> {{\n\
                             let Ok([{a}]) = <[burn::tensor::Tensor<4>; {n}]>::try_from(features) else {{ panic!(\"expected {n} feature maps\") }};\n\
                             self.forward({a}){permute}\n\
                         }}\n\
                     }}",
                    a = args.join(", "),
                    n = inputs,
                    image_note = if *reads_image { " and the image (for its shape)" } else { "" },
                    permute = if nhwc { ".permute([0, 3, 1, 2])" } else { "" },
                )
                .unwrap();
                Some(format!(
                    "Some(crate::model::Split {{ boundary: {stem}_head::BOUNDARY, reads_image: {stem}_head::READS_IMAGE, params: {stem}_head::PARAMS }})"
                ))
            }
            None => None,
        };
        entries.push((stem, source, split));
    }

    writeln!(registry, "/// Every compiled-in model, in file-name order.").unwrap();
    writeln!(registry, "pub static MODELS: &[crate::model::ModelInfo] = &[").unwrap();
    for (stem, source, split) in &entries {
        writeln!(
            registry,
            "    crate::model::ModelInfo {{ name: {stem:?}, onnx: {source}, params: {stem}::PARAMS, split: {} }},",
            split.as_deref().unwrap_or("None")
        )
        .unwrap();
    }
    writeln!(registry, "];").unwrap();

    // `dispatch(name, f)`: runs `f` with the generated model type of `name`.
    writeln!(
        registry,
        "/// Calls `f` with the generated model type named `name`.\n\
         pub fn dispatch<F: crate::model::ModelFn>(name: &str, f: F) -> Option<F::Output> {{\n    match name {{"
    )
    .unwrap();
    for (stem, _, _) in &entries {
        writeln!(registry, "        {stem:?} => Some(f.call::<{stem}::Model>()),").unwrap();
    }
    writeln!(registry, "        _ => None,\n    }}\n}}").unwrap();

    // `dispatch_split(name, f)`: the same with the model's head type, for models with a split.
    writeln!(
        registry,
        "/// Calls `f` with the generated model type named `name` and the type of its head, if it has one.\n\
         #[allow(unused_variables)]\n\
         pub fn dispatch_split<F: crate::model::SplitFn>(name: &str, f: F) -> Option<F::Output> {{\n    match name {{"
    )
    .unwrap();
    for (stem, _, split) in &entries {
        if split.is_some() {
            writeln!(registry, "        {stem:?} => Some(f.call::<{stem}::Model, {stem}_head::Model>()),").unwrap();
        }
    }
    writeln!(registry, "        _ => None,\n    }}\n}}").unwrap();
    std::fs::write(out_dir.join("models.rs"), registry).unwrap();
}

/// burn-onnx's import of one ONNX file into `$OUT_DIR/model/<stem>.rs` and `<stem>.bpk`, with
/// segtune's BatchNorm and linear Resize.
fn import(path: &Path) {
    ModelGen::new()
        .input(path.to_str().expect("utf-8 path"))
        .out_dir("model/")
        .load_strategy(LoadStrategy::Bytes)
        .register_op_override(BatchNormMomentum)
        .register_op_override(LinearResize)
        .run_from_script();
}

/// prost types for `onnx.proto`, parsed in pure Rust by protox.
fn compile_proto(manifest: &Path, out_dir: &Path) {
    let proto_dir = manifest.join("proto");
    let fds = protox::compile([proto_dir.join("onnx.proto")], [&proto_dir])
        .unwrap_or_else(|e| panic!("parsing proto/onnx.proto: {e}"));
    prost_build::Config::new()
        .out_dir(out_dir)
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("generating prost code for onnx.proto: {e}"));
}

/// The burn-path ↔ ONNX table of one model, as Rust source.
///
/// burn-onnx names the K-th Conv / BatchNormalization node of the ONNX graph (in graph order,
/// counted per node type before simplification) `conv2dK` / `batchnormalizationK`; its weight
/// slots are ONNX inputs 1.. of that node. Inputs reached through `Identity` nodes (torch shares
/// identical tensors that way) are followed back to the initializer. burn-onnx's own weight pack
/// lists every parameter path with its `submoduleN.` prefix, so the prefix is taken from there,
/// and every pack path must be mapped.
fn param_table(onnx_path: &Path, model: &onnx_ir::ModelProto, bpk: &Path) -> String {
    let graph = &model.graph;
    let initializers: HashMap<&str, Vec<i64>> =
        graph.initializer.iter().map(|t| (t.name.as_str(), t.dims.clone())).collect();
    let identity: HashMap<&str, &str> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "Identity")
        .map(|n| (n.output[0].as_str(), n.input[0].as_str()))
        .collect();
    let resolve = |name: &str| -> String { follow_identity(&identity, name).to_string() };

    let pack = burn_pack::Reader::from_file(bpk)
        .unwrap_or_else(|e| panic!("reading burn-onnx's pack {}: {e:?}", bpk.display()));
    // field name (e.g. `conv2d7`) → full module path (e.g. `submodule1.conv2d7`)
    let mut module_paths: HashMap<String, String> = HashMap::new();
    for name in pack.tensor_names() {
        let module = name.rsplit_once('.').map(|(m, _)| m).unwrap_or(name);
        let field = module.rsplit('.').next().unwrap();
        module_paths.insert(field.to_string(), module.to_string());
    }

    let mut counters: HashMap<String, usize> = HashMap::new();
    let mut rows = BTreeMap::new();
    for (node_index, node) in graph.node.iter().enumerate() {
        let (kind, slots): (String, &[&str]) = match node.op_type.as_str() {
            "Conv" => {
                let w = resolve(&node.input[1]);
                let Some(dims) = initializers.get(w.as_str()) else { continue };
                (format!("conv{}d", dims.len() - 2), &["weight", "bias"])
            }
            "BatchNormalization" => {
                ("batchnormalization".to_string(), &["gamma", "beta", "running_mean", "running_var"])
            }
            _ => continue,
        };
        let k = counters.entry(kind.clone()).or_insert(0);
        *k += 1;
        let field = format!("{kind}{k}");
        let Some(module) = module_paths.get(&field) else { continue };
        for (i, slot) in slots.iter().enumerate() {
            let Some(input) = node.input.get(i + 1).filter(|s| !s.is_empty()) else { continue };
            let onnx = resolve(input);
            if !initializers.contains_key(onnx.as_str()) {
                continue;
            }
            rows.insert(format!("{module}.{slot}"), (onnx, input.clone(), node_index, i + 1));
        }
    }
    for name in pack.tensor_names() {
        assert!(
            rows.contains_key(name),
            "{}: burn parameter {name} has no ONNX initializer in the map",
            onnx_path.display()
        );
    }

    let mut src = String::from(
        "/// Every burn parameter path of this model with the ONNX initializer it came from.\n\
         pub static PARAMS: &[crate::model::ParamEntry] = &[\n",
    );
    for (burn, (onnx, value, node, input)) in &rows {
        writeln!(
            src,
            "    crate::model::ParamEntry {{ burn: {burn:?}, onnx: {onnx:?}, value: {value:?}, node: {node}, input: {input} }},"
        )
        .unwrap();
    }
    src.push_str("];\n");
    src
}

/// The value `name` copies through a chain of `Identity` nodes (at most one step per node).
fn follow_identity<'a>(identity: &HashMap<&'a str, &'a str>, name: &'a str) -> &'a str {
    let mut name = name;
    for _ in 0..=identity.len() {
        match identity.get(name) {
            Some(src) => name = src,
            None => break,
        }
    }
    name
}

/// BatchNorm codegen: segtune's own `crate::model::BatchNorm` in place of burn's, with the
/// momentum convention converted.
///
/// ONNX's `momentum` weights the old running statistic
/// (`running = running * momentum + batch * (1 - momentum)`), burn's weights the new batch
/// (`running = running * (1 - momentum) + batch * momentum`). burn-onnx copies the number
/// unchanged, which makes the running statistics chase every batch; here the layer gets `1 - m`.
/// The module itself updates the running variance with the unbiased batch variance, as PyTorch
/// (where these checkpoints come from) does, and can be frozen per layer (see `model::BatchNorm`).
struct BatchNormMomentum;

impl BatchNormMomentum {
    fn node(node: &Node) -> Result<&onnx_ir::node::batch_norm::BatchNormalizationNode, ProcessError> {
        match node {
            Node::BatchNormalization(bn) => Ok(bn),
            _ => Err(ProcessError::Custom("expected a BatchNormalization node".into())),
        }
    }
}

impl OpOverride for BatchNormMomentum {
    fn target(&self) -> NodeType {
        NodeType::BatchNormalization
    }

    fn forward(&self, node: &Node, ctx: &mut CodegenContext<'_, '_>) -> Result<TokenStream, ProcessError> {
        use onnx_ir::node::batch_norm::BatchNormConfig;
        let bn = Self::node(node)?;
        let output = arg_to_ident(&bn.outputs[0]);
        let input = ctx.arg(&bn.inputs[0]);
        Ok(match &bn.config {
            BatchNormConfig::Static(_) => {
                let field = Ident::new(&bn.name, Span::call_site());
                quote! { let #output = self.#field.forward(#input); }
            }
            BatchNormConfig::Runtime(config) => {
                let scale = ctx.arg(&bn.inputs[1]);
                let bias = ctx.arg(&bn.inputs[2]);
                let mean = ctx.arg(&bn.inputs[3]);
                let var = ctx.arg(&bn.inputs[4]);
                let epsilon = config.epsilon;
                quote! {
                    let #output = burn::tensor::module::batch_norm(#input, #scale, #bias, #mean, #var, #epsilon);
                }
            }
        })
    }

    fn field(&self, node: &Node) -> Result<Option<Field>, ProcessError> {
        use onnx_ir::node::batch_norm::BatchNormConfig;
        let bn = Self::node(node)?;
        let BatchNormConfig::Static(config) = &bn.config else { return Ok(None) };
        let name = Ident::new(&bn.name, Span::call_site());
        let features = static_dim0(&bn.inputs[1])?;
        let epsilon = config.epsilon;
        let momentum = 1.0 - config.momentum;
        Ok(Some(Field::new(
            bn.name.clone(),
            quote! { crate::model::BatchNorm },
            quote! {
                let #name = crate::model::BatchNorm::new(#features, #epsilon, #momentum, device);
            },
        )))
    }

    fn collect_tensors(&self, node: &Node, field_name: &str) -> Result<Vec<burn_onnx::ext::PackTensor>, ProcessError> {
        use onnx_ir::node::batch_norm::BatchNormConfig;
        let bn = Self::node(node)?;
        if !matches!(bn.config, BatchNormConfig::Static(_)) {
            return Ok(vec![]);
        }
        let slots = ["gamma", "beta", "running_mean", "running_var"];
        Ok(slots
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| {
                let arg = bn.inputs.get(i + 1)?;
                burn_onnx::ext::create_deferred_tensor(arg, &format!("{field_name}.{slot}"))
            })
            .collect())
    }
}

fn static_dim0(arg: &Argument) -> Result<usize, ProcessError> {
    arg.ty
        .static_shape_known()
        .and_then(|s| s.first().copied())
        .ok_or_else(|| ProcessError::Custom("BatchNorm scale shape must be static".into()))
}

/// Linear `Resize` as two matrix products (`crate::model::resize_linear`), in place of burn's
/// `interpolate`: burn's GPU backends (cubecl) have no bilinear interpolate *backward*, so a model
/// with a bilinear Resize could not train on `wgpu`/`cuda`. A matrix product differentiates on
/// every backend, and each ONNX coordinate transform (half_pixel, pytorch_half_pixel,
/// align_corners, asymmetric) is reproduced exactly. Other modes (nearest, cubic) keep burn's op.
struct LinearResize;

impl OpOverride for LinearResize {
    fn target(&self) -> NodeType {
        NodeType::Resize
    }

    fn forward(&self, node: &Node, ctx: &mut CodegenContext<'_, '_>) -> Result<TokenStream, ProcessError> {
        use burn_onnx::ext::ArgType;
        use onnx_ir::node::resize::{CoordinateTransformMode as M, ResizeMode, ResizeScales, ResizeSizes};
        let Node::Resize(r) = node else {
            return Err(ProcessError::Custom("expected a Resize node".into()));
        };
        let input_arg = &r.inputs[0];
        if !matches!(&input_arg.ty, ArgType::Tensor(t) if t.rank == 4) {
            return Err(ProcessError::Custom(format!("Resize {}: segtune supports 4-D inputs only", r.name)));
        }
        let output = arg_to_ident(&r.outputs[0]);
        let input = ctx.arg(input_arg);
        // Target [height, width], computed in the generated code from `dims` (the input's).
        let size = match (&r.config.sizes, &r.config.scales) {
            (Some(ResizeSizes::Static(s)), _) if s.len() >= 2 => {
                let (h, w) = (s[s.len() - 2], s[s.len() - 1]);
                quote! { [#h, #w] }
            }
            (Some(ResizeSizes::Runtime(re)), _) => match &r.inputs[re.input_index].ty {
                ArgType::Shape(_) => {
                    let sizes = arg_to_ident(&r.inputs[re.input_index]);
                    quote! { [#sizes[2] as usize, #sizes[3] as usize] }
                }
                _ => {
                    let sizes = ctx.arg(&r.inputs[re.input_index]);
                    quote! {{
                        let v = #sizes.to_data().convert::<i64>();
                        let v = v.as_slice::<i64>().expect("i64 after convert");
                        [v[2] as usize, v[3] as usize]
                    }}
                }
            },
            (_, Some(ResizeScales::Static(s))) if s.len() >= 2 => {
                let (sh, sw) = (s[s.len() - 2] as f64, s[s.len() - 1] as f64);
                quote! { [(dims[2] as f64 * #sh) as usize, (dims[3] as f64 * #sw) as usize] }
            }
            (_, Some(ResizeScales::Runtime(re))) => match &r.inputs[re.input_index].ty {
                ArgType::Shape(_) => {
                    let scales = arg_to_ident(&r.inputs[re.input_index]);
                    quote! { [(dims[2] as f64 * #scales[2] as f64) as usize, (dims[3] as f64 * #scales[3] as f64) as usize] }
                }
                _ => {
                    let scales = ctx.arg(&r.inputs[re.input_index]);
                    quote! {{
                        let v = #scales.to_data().convert::<f32>();
                        let v = v.as_slice::<f32>().expect("f32 after convert");
                        [(dims[2] as f64 * v[2] as f64) as usize, (dims[3] as f64 * v[3] as f64) as usize]
                    }}
                }
            },
            _ => return Err(ProcessError::Custom(format!("Resize {}: neither sizes nor scales", r.name))),
        };
        let transform = match r.config.coordinate_transformation_mode {
            M::HalfPixel => Some(quote! { crate::model::ResizeCoordinates::HalfPixel }),
            M::PytorchHalfPixel => Some(quote! { crate::model::ResizeCoordinates::PytorchHalfPixel }),
            M::AlignCorners => Some(quote! { crate::model::ResizeCoordinates::AlignCorners }),
            M::Asymmetric => Some(quote! { crate::model::ResizeCoordinates::Asymmetric }),
            _ => None,
        };
        Ok(match (&r.config.mode, transform) {
            (ResizeMode::Linear, Some(transform)) => quote! {
                let #output = {
                    let x = #input;
                    #[allow(unused_variables)]
                    let dims = x.dims();
                    crate::model::resize_linear(x, #size, #transform)
                };
            },
            (mode, _) => {
                // What burn-onnx generates for the other modes.
                let mode = match mode {
                    ResizeMode::Nearest => quote! { burn::tensor::ops::InterpolateMode::Nearest },
                    ResizeMode::Linear => quote! { burn::tensor::ops::InterpolateMode::Bilinear },
                    ResizeMode::Cubic => quote! { burn::tensor::ops::InterpolateMode::Bicubic },
                };
                let align_corners = r.config.coordinate_transformation_mode == M::AlignCorners;
                quote! {
                    let #output = {
                        let x = #input;
                        #[allow(unused_variables)]
                        let dims = x.dims();
                        burn::tensor::module::interpolate(
                            x,
                            burn::tensor::ops::InterpolateOptions::new(#mode)
                                .with_output_size(#size)
                                .with_align_corners(#align_corners),
                        )
                    };
                }
            }
        })
    }
}

/// Splits a model after its backbone: returns the graph of everything downstream (decoder and
/// head) with the backbone's outputs as its inputs, those outputs' names in input order, and
/// whether the head also reads the image (through `Shape`/`Size` only: the size to upsample the
/// logits to); then the image is the head graph's last input.
///
/// Backbone parameters are the values named `encoder.*` or `backbone.*` (as `--freeze backbone`
/// picks them). Walking the graph in order, a node belongs to the head when it reads another
/// parameter (a Conv/BatchNormalization/Gemm weight slot) or a head value, or is a `Shape`/`Size`
/// (shape arithmetic stays with its consumer); else to the backbone when it reads the image or a
/// backbone value; else it is a constant, copied into the head where the head needs it. The
/// boundary is every backbone value a head node reads. `None` (no split, training runs the whole
/// graph in burn) when either side is empty, a head node other than `Shape`/`Size` reads the
/// image, or a boundary value is not the output of an op known to keep its 4-D float input's rank.
fn split_head(model: &onnx_ir::ModelProto) -> Option<(onnx_ir::ModelProto, Vec<String>, bool)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Const,
        Backbone,
        Head,
    }
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
    let graph = &model.graph;
    let image = graph.input.first()?.name.clone();
    let mut kind: HashMap<&str, Kind> = HashMap::new();
    kind.insert(image.as_str(), Kind::Backbone);
    let mut node_kind = Vec::with_capacity(graph.node.len());
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        let weighted = matches!(node.op_type.as_str(), "Conv" | "BatchNormalization" | "Gemm" | "MatMul");
        let inputs = || node.input.iter().filter(|v| !v.is_empty());
        let reads_head_param = weighted && node.input.iter().skip(1).any(|v| !v.is_empty() && !is_backbone_param(v));
        let k = if matches!(node.op_type.as_str(), "Shape" | "Size")
            || reads_head_param
            || inputs().any(|v| kind.get(v.as_str()) == Some(&Kind::Head))
        {
            Kind::Head
        } else if inputs().any(|v| kind.get(v.as_str()) == Some(&Kind::Backbone)) {
            Kind::Backbone
        } else {
            Kind::Const
        };
        node_kind.push(k);
        for o in &node.output {
            kind.insert(o.as_str(), k);
            producer.insert(o.as_str(), i);
        }
    }
    // A parameter-free backbone node whose every consumer is in the head joins the head (the
    // pooling of the ASPP's image branch, a trailing activation): the boundary moves up to the
    // last value the backbone's parameters produce.
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        for v in &node.input {
            consumers.entry(v.as_str()).or_default().push(i);
        }
    }
    for i in (0..graph.node.len()).rev() {
        let node = &graph.node[i];
        let users: Vec<usize> =
            node.output.iter().flat_map(|o| consumers.get(o.as_str()).into_iter().flatten()).copied().collect();
        if node_kind[i] == Kind::Backbone
            && !node.input.iter().any(|v| is_backbone_param(v))
            && !users.is_empty()
            && users.iter().all(|&u| node_kind[u] == Kind::Head)
        {
            node_kind[i] = Kind::Head;
            for o in &node.output {
                kind.insert(o.as_str(), Kind::Head);
            }
        }
    }
    let head_nodes: Vec<usize> = (0..graph.node.len()).filter(|&i| node_kind[i] == Kind::Head).collect();
    if head_nodes.is_empty() || !node_kind.contains(&Kind::Backbone) {
        return None;
    }
    let mut boundary: Vec<String> = vec![];
    let mut reads_image = false;
    for &i in &head_nodes {
        let node = &graph.node[i];
        for v in node.input.iter().filter(|v| !v.is_empty()) {
            if *v == image {
                if !matches!(node.op_type.as_str(), "Shape" | "Size") {
                    return None;
                }
                reads_image = true;
            } else if kind.get(v.as_str()) == Some(&Kind::Backbone) && !boundary.contains(v) {
                let op = &graph.node[producer[v.as_str()]].op_type;
                if !RANK_KEEPING.contains(&op.as_str()) {
                    return None;
                }
                boundary.push(v.clone());
            }
        }
    }
    if boundary.is_empty() {
        return None; // a head that reads nothing of the backbone's: nothing to cut
    }
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
