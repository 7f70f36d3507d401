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

#[path = "src/backbone.rs"]
#[allow(dead_code)]
mod backbone;

/// Models up to this size are embedded in the binary (the original graph is needed to export);
/// larger ones are read from their path in `models/` at run time.
const EMBED_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    println!("cargo:rerun-if-changed=src/backbone.rs");
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
    // `cfg(segtune_model = "STEM")` for each compiled-in model: tests of a model made by a script
    // are ignored (and say so) where it is absent.
    // (Any name: a test names models a script makes, compiled in or not.)
    println!("cargo::rustc-check-cfg=cfg(segtune_model, values(any()))");
    for stem in &stems {
        println!("cargo::rustc-cfg=segtune_model={stem:?}");
    }
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
        let gen_dir = out_dir.join("model");
        let bpk = gen_dir.join(format!("{stem}.bpk"));
        let bytes = std::fs::read(path).unwrap();
        let mut model = onnx_ir::ModelProto::parse_from_bytes(&bytes)
            .unwrap_or_else(|e| panic!("{}: not an ONNX model: {e}", path.display()));
        // A model whose tensors live in a side file (`x.onnx.data`: dynamo=True exports, models
        // over 2 GB) is read here with its data inlined (for the parameter table and the head);
        // embedded, its side files are embedded beside it, byte for byte.
        let external_data = model.graph.initializer.iter().any(|t| t.data_location.value() == 1);
        let side_files = external_files(&model);
        let data_size: u64 =
            side_files.iter().map(|f| std::fs::metadata(path.with_file_name(f)).map_or(0, |m| m.len())).sum();
        let embed = std::fs::metadata(path).unwrap().len() + data_size <= EMBED_LIMIT_BYTES;
        if external_data {
            inline_external_data(path, &mut model);
        }
        let imported = path.clone();
        import(&imported);
        let image = model.graph.input.first().map(|i| i.name.clone()).unwrap_or_default();
        let found = backbone::find(&node_view(&model.graph), &image);
        let backbone_params = found.as_ref().map(|b| b.params.clone()).unwrap_or_default();
        let params = param_table(path, &model, &bpk, &backbone_params);
        // Models whose metadata says NHWC (tf2onnx exports of Keras) give NHWC logits: the trait
        // returns NCHW, what the losses and metrics use.
        let nhwc = model.metadata_props.iter().any(|p| p.key == "segtune.layout" && p.value == "NHWC");
        let logits = if nhwc { "self.forward(input).permute([0, 3, 1, 2])" } else { "self.forward(input)" };
        std::fs::write(gen_dir.join(format!("{stem}_params.rs")), params).unwrap();

        // The decoder and head alone, for training behind a frozen backbone run elsewhere.
        let head = found.as_ref().ok().and_then(|b| split_head(&model, b)).map(|(head, boundary, reads_image)| {
            let dir = out_dir.join("heads");
            std::fs::create_dir_all(&dir).unwrap();
            let head_path = dir.join(format!("{stem}_head.onnx"));
            std::fs::write(&head_path, head.write_to_bytes().expect("head graph encodes")).unwrap();
            import(&head_path);
            let head_params =
                param_table(&head_path, &head, &gen_dir.join(format!("{stem}_head.bpk")), &backbone_params);
            std::fs::write(gen_dir.join(format!("{stem}_head_params.rs")), head_params).unwrap();
            (boundary, reads_image)
        });
        let backbone = match &found {
            Ok(b) => format!("Ok(crate::backbone::Rule::{:?})", b.rule),
            Err(why) => format!("Err({why:?})"),
        };

        let data: Vec<String> = side_files
            .iter()
            .filter(|_| embed)
            .map(|f| format!("({f:?}, include_bytes!({:?}))", path.with_file_name(f)))
            .collect();
        let data = format!("&[{}]", data.join(", "));
        let source = if embed {
            format!("crate::model::OnnxSource::Embedded(include_bytes!({:?}))", imported)
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
        entries.push((stem, source, split, backbone, external_data, data));
    }

    writeln!(registry, "/// Every compiled-in model, in file-name order.").unwrap();
    writeln!(registry, "pub static MODELS: &[crate::model::ModelInfo] = &[").unwrap();
    for (stem, source, split, backbone, external_data, data) in &entries {
        writeln!(
            registry,
            "    crate::model::ModelInfo {{ name: {stem:?}, onnx: {source}, data: {data}, params: {stem}::PARAMS, split: {}, backbone: {backbone}, external_data: {external_data} }},",
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
    for (stem, ..) in &entries {
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
    for (stem, _, split, ..) in &entries {
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
/// and every pack path must be mapped. A parameter whose value is in `backbone` is marked so.
fn param_table(
    onnx_path: &Path,
    model: &onnx_ir::ModelProto,
    bpk: &Path,
    backbone: &std::collections::HashSet<String>,
) -> String {
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
        let backbone = backbone.contains(value);
        writeln!(
            src,
            "    crate::model::ParamEntry {{ burn: {burn:?}, onnx: {onnx:?}, value: {value:?}, node: {node}, input: {input}, backbone: {backbone} }},"
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

/// The graph as `backbone`'s rule sees it.
fn node_view(graph: &onnx_ir::GraphProto) -> Vec<backbone::Node<'_>> {
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
fn external_files(model: &onnx_ir::ModelProto) -> std::collections::BTreeSet<String> {
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
fn inline_external_data(path: &Path, model: &mut onnx_ir::ModelProto) {
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
fn split_head(
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
