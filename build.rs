//! Build script: compiles `proto/onnx.proto` with prost (through protox, no system `protoc`),
//! imports every `models/*.onnx` into burn code with burn-onnx's `ModelGen`, and emits, per model,
//! the table that maps each burn parameter path to the ONNX initializer it came from. Where a
//! graph can be cut after its backbone (`graph::split_head`), the downstream part (decoder and
//! head) is imported too, as a model of its own with its own table. The logic lives in `build/`
//! (unit-tested by `tests/build_script.rs`); generated Rust is written through `quote!`.
//!
//! Generated files (all under `$OUT_DIR`):
//! - `onnx.rs`: prost types of the ONNX protobuf schema;
//! - `model/<stem>.rs` and `model/<stem>.bpk`: burn-onnx's code and its own weight pack;
//! - `model/<stem>_params.rs`: the burn-path ↔ ONNX-initializer table (`build/params.rs`);
//! - `heads/<stem>_head.onnx`, `model/<stem>_head.rs`, `model/<stem>_head_params.rs`: the same
//!   for the graph after the backbone, when it splits;
//! - `models.rs`: one module per model (and head), the registry `MODELS`, `dispatch` (name → model
//!   type) and `dispatch_split` (name → model and head types) (`build/registry.rs`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use burn_onnx::{LoadStrategy, ModelGen};
use onnx_ir::Message as _;

#[path = "src/backbone.rs"]
#[allow(dead_code)]
mod backbone;
#[path = "build/graph.rs"]
mod graph;
#[path = "build/ops.rs"]
mod ops;
#[path = "build/params.rs"]
mod params;
#[path = "build/registry.rs"]
mod registry;

/// Models up to this size are embedded in the binary (the original graph is needed to export);
/// larger ones are read from their path in `models/` at run time.
const EMBED_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

fn main() {
    for watched in ["build.rs", "build", "proto/onnx.proto", "src/backbone.rs", "models"] {
        println!("cargo:rerun-if-changed={watched}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    compile_proto(&manifest, &out_dir);
    let models = model_files(&manifest.join("models"));
    let entries: Vec<registry::Entry> = models.iter().map(|p| model_entry(p, &out_dir)).collect();
    std::fs::write(out_dir.join("models.rs"), registry::registry(&entries).to_string()).unwrap();
}

/// `models/*.onnx` in file-name order, each stem checked (a Rust identifier, not another's
/// `_head`); sets `cfg(segtune_model = "STEM")` for each, so that tests of a model made by a
/// script are ignored (and say so) where it is absent.
fn model_files(dir: &Path) -> Vec<PathBuf> {
    let mut models: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("models/ must exist")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    models.sort();
    let stems: Vec<String> = models.iter().map(|p| stem(p)).collect();
    // (Any name: a test names models a script makes, compiled in or not.)
    println!("cargo::rustc-check-cfg=cfg(segtune_model, values(any()))");
    for stem in &stems {
        assert!(
            stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && stem.chars().next().is_some_and(|c| c.is_ascii_alphabetic()),
            "model file name {stem:?} must be a Rust identifier (letters, digits, _)"
        );
        assert!(
            !stems.contains(&registry::head_name(stem)),
            "models/{stem}_head.onnx: the name is taken by the generated head of models/{stem}.onnx; rename the file"
        );
        println!("cargo::rustc-cfg=segtune_model={stem:?}");
    }
    models
}

fn stem(path: &Path) -> String {
    path.file_stem().expect("a file name").to_string_lossy().into_owned()
}

fn path_str(path: &Path) -> String {
    path.to_str().unwrap_or_else(|| panic!("{}: paths must be UTF-8", path.display())).to_string()
}

/// Imports one model (and its head, where it splits), writes their parameter tables, and
/// returns what the registry says of it.
fn model_entry(path: &Path, out_dir: &Path) -> registry::Entry {
    println!("cargo:rerun-if-changed={}", path.display());
    let stem = stem(path);
    let gen_dir = out_dir.join("model");
    let bytes = std::fs::read(path).unwrap();
    let mut model = onnx_ir::ModelProto::parse_from_bytes(&bytes)
        .unwrap_or_else(|e| panic!("{}: not an ONNX model: {e}", path.display()));
    // A model whose tensors live in a side file (`x.onnx.data`: dynamo=True exports, models
    // over 2 GB) is read here with its data inlined (for the parameter table and the head);
    // embedded, its side files are embedded beside it, byte for byte.
    let external_data = model.graph.initializer.iter().any(|t| t.data_location.value() == 1);
    let side_files: Vec<(String, String)> =
        graph::external_files(&model).into_iter().map(|f| (f.clone(), path_str(&path.with_file_name(f)))).collect();
    let data_size: u64 = side_files.iter().map(|(_, p)| std::fs::metadata(p).map_or(0, |m| m.len())).sum();
    let embed = std::fs::metadata(path).unwrap().len() + data_size <= EMBED_LIMIT_BYTES;
    if external_data {
        graph::inline_external_data(path, &mut model);
    }
    import(path);
    let image = model.graph.input.first().map(|i| i.name.clone()).unwrap_or_default();
    let found = backbone::find(&graph::node_view(&model.graph), &image);
    let backbone_params = found.as_ref().map(|b| b.params.clone()).unwrap_or_default();
    write_params(path, &model, &gen_dir, &stem, &backbone_params);
    // The decoder and head alone, for training behind a frozen backbone run elsewhere.
    let head = found.as_ref().ok().and_then(|b| graph::split_head(&model, b)).map(|(head, boundary, reads_image)| {
        let dir = out_dir.join("heads");
        std::fs::create_dir_all(&dir).unwrap();
        let name = registry::head_name(&stem);
        let head_path = dir.join(format!("{name}.onnx"));
        std::fs::write(&head_path, head.write_to_bytes().expect("head graph encodes")).unwrap();
        import(&head_path);
        write_params(&head_path, &head, &gen_dir, &name, &backbone_params);
        registry::Head { boundary, reads_image }
    });
    registry::Entry {
        bpk: path_str(&gen_dir.join(format!("{stem}.bpk"))),
        onnx: path_str(path),
        embed,
        side_files,
        external_data,
        // Models whose metadata says NHWC (tf2onnx exports of Keras) give NHWC logits.
        nhwc: model.metadata_props.iter().any(|p| p.key == "segtune.layout" && p.value == "NHWC"),
        head,
        backbone: found.map(|b| format!("{:?}", b.rule)),
        stem,
    }
}

/// burn-onnx's import of one ONNX file into `$OUT_DIR/model/<stem>.rs` and `<stem>.bpk`, with
/// segtune's BatchNorm and linear Resize.
fn import(path: &Path) {
    ModelGen::new()
        .input(path.to_str().expect("utf-8 path"))
        .out_dir("model/")
        .load_strategy(LoadStrategy::Bytes)
        .register_op_override(ops::BatchNormMomentum)
        .register_op_override(ops::LinearResize)
        .run_from_script();
}

/// `model/<name>_params.rs`: the table of the model imported as `name` (its weight pack beside
/// it); a parameter whose value is in `backbone` is marked so.
fn write_params(onnx_path: &Path, model: &onnx_ir::ModelProto, gen_dir: &Path, name: &str, backbone: &HashSet<String>) {
    let bpk = gen_dir.join(format!("{name}.bpk"));
    let pack = burn_pack::Reader::from_file(&bpk)
        .unwrap_or_else(|e| panic!("reading burn-onnx's pack {}: {e:?}", bpk.display()));
    let ranks: HashMap<&str, usize> = model.graph.initializer.iter().map(|t| (t.name.as_str(), t.dims.len())).collect();
    let rows = params::rows(&graph::node_view(&model.graph), &ranks, &pack.tensor_names())
        .unwrap_or_else(|e| panic!("{}: {e}", onnx_path.display()));
    std::fs::write(gen_dir.join(format!("{name}_params.rs")), params::source(&rows, backbone).to_string()).unwrap();
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
