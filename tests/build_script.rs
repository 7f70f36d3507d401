//! Unit tests of the build script's logic (`build/`): the parameter table and the generated
//! registry, on small hand-made inputs. The build itself runs the rest on every model in
//! `models/` (and the library's tests check what it generated).

#[path = "../src/backbone.rs"]
#[allow(dead_code)]
mod backbone;
#[path = "../build/params.rs"]
mod params;
#[path = "../build/registry.rs"]
mod registry;

use std::collections::{HashMap, HashSet};

use backbone::Node;

fn node<'a>(op: &'a str, inputs: &[&'a str], outputs: &[&'a str]) -> Node<'a> {
    Node { op, inputs: inputs.to_vec(), outputs: outputs.to_vec() }
}

/// conv (weight shared through an Identity, with bias), BN, Relu, a bias-free conv; the pack as
/// burn-onnx writes it, under a `submodule` prefix.
fn graph() -> (Vec<Node<'static>>, HashMap<&'static str, usize>) {
    let nodes = vec![
        node("Identity", &["w0"], &["w0_shared"]),
        node("Conv", &["x", "w0_shared", "b0"], &["c0"]),
        node("BatchNormalization", &["c0", "g", "be", "m", "v"], &["n0"]),
        node("Relu", &["n0"], &["r0"]),
        node("Conv", &["r0", "w1"], &["c1"]),
    ];
    let ranks = HashMap::from([("w0", 4), ("b0", 1), ("g", 1), ("be", 1), ("m", 1), ("v", 1), ("w1", 4)]);
    (nodes, ranks)
}

#[test]
fn every_pack_parameter_maps_to_its_initializer_through_identities() {
    let (nodes, ranks) = graph();
    let pack = [
        "submodule1.conv2d1.weight",
        "submodule1.conv2d1.bias",
        "submodule1.batchnormalization1.gamma",
        "submodule1.batchnormalization1.beta",
        "submodule1.batchnormalization1.running_mean",
        "submodule1.batchnormalization1.running_var",
        "submodule2.conv2d2.weight",
    ];
    let rows = params::rows(&nodes, &ranks, &pack).expect("every parameter maps");
    let found: Vec<(&str, &str, &str, usize, usize)> =
        rows.iter().map(|r| (r.burn.as_str(), r.onnx.as_str(), r.value.as_str(), r.node, r.input)).collect();
    assert_eq!(
        found,
        [
            ("submodule1.batchnormalization1.beta", "be", "be", 2, 2),
            ("submodule1.batchnormalization1.gamma", "g", "g", 2, 1),
            ("submodule1.batchnormalization1.running_mean", "m", "m", 2, 3),
            ("submodule1.batchnormalization1.running_var", "v", "v", 2, 4),
            ("submodule1.conv2d1.bias", "b0", "b0", 1, 2),
            // The initializer behind the Identity, and the value the node reads.
            ("submodule1.conv2d1.weight", "w0", "w0_shared", 1, 1),
            ("submodule2.conv2d2.weight", "w1", "w1", 4, 1),
        ]
    );
}

#[test]
fn a_pack_parameter_without_an_initializer_is_named() {
    let (nodes, ranks) = graph();
    let err = params::rows(&nodes, &ranks, &["submodule1.conv2d1.weight", "submodule9.conv2d3.weight"]).unwrap_err();
    assert_eq!(err, "burn parameter submodule9.conv2d3.weight has no ONNX initializer in the map");
}

#[test]
fn conv_names_count_per_rank_and_skip_convs_without_an_initializer() {
    // A Conv whose weight is computed (not an initializer) gets no burn field; a rank-3 weight
    // is a conv1d, counted apart from the conv2ds.
    let nodes = vec![
        node("Conv", &["x", "computed"], &["a"]),
        node("Conv", &["a", "k"], &["b"]),
        node("Conv", &["b", "w"], &["c"]),
    ];
    let ranks = HashMap::from([("k", 3), ("w", 4)]);
    let rows = params::rows(&nodes, &ranks, &["conv1d1.weight", "conv2d1.weight"]).expect("maps");
    let names: Vec<(&str, &str)> = rows.iter().map(|r| (r.burn.as_str(), r.onnx.as_str())).collect();
    assert_eq!(names, [("conv1d1.weight", "k"), ("conv2d1.weight", "w")]);
}

#[test]
fn identity_chains_are_followed_and_cycles_end() {
    let chain = HashMap::from([("c", "b"), ("b", "a")]);
    assert_eq!(params::follow_identity(&chain, "c"), "a");
    assert_eq!(params::follow_identity(&chain, "z"), "z");
    let cycle = HashMap::from([("a", "b"), ("b", "a")]);
    let end = params::follow_identity(&cycle, "a");
    assert!(end == "a" || end == "b");
}

#[test]
fn the_table_marks_backbone_values() {
    let (nodes, ranks) = graph();
    let rows = params::rows(&nodes, &ranks, &["conv2d1.weight", "conv2d2.weight"]).expect("maps");
    let src = params::source(&rows, &HashSet::from(["w0_shared".to_string()])).to_string();
    let file = syn::parse_file(&src).expect("the table is Rust");
    assert_eq!(file.items.len(), 1);
    let compact: String = src.split_whitespace().collect();
    assert!(
        compact.contains(r#"burn:"conv2d1.weight",onnx:"w0",value:"w0_shared",node:1usize,input:1usize,backbone:true"#),
        "{src}"
    );
    assert!(
        compact.contains(r#"burn:"conv2d2.weight",onnx:"w1",value:"w1",node:4usize,input:1usize,backbone:false"#),
        "{src}"
    );
}

fn entry(
    stem: &str,
    head: Option<registry::Head>,
    embed: bool,
    nhwc: bool,
    backbone: Result<&str, &str>,
) -> registry::Entry {
    registry::Entry {
        stem: stem.into(),
        bpk: format!("/out/model/{stem}.bpk"),
        onnx: format!("/m/{stem}.onnx"),
        embed,
        side_files: vec![(format!("{stem}.onnx.data"), format!("/m/{stem}.onnx.data"))],
        external_data: true,
        nhwc,
        head,
        backbone: backbone.map(String::from).map_err(String::from),
    }
}

#[test]
fn the_registry_is_rust_with_one_module_per_model_and_head() {
    let head = registry::Head { boundary: vec!["f_low".into(), "f_high".into()], reads_image: true };
    let entries = [
        entry("split", Some(head), true, true, Ok("Names")),
        entry("whole", None, false, false, Err("no ASPP was found")),
    ];
    let src = registry::registry(&entries).to_string();
    let file = syn::parse_file(&src).expect("models.rs is Rust");
    let modules: Vec<String> = file
        .items
        .iter()
        .filter_map(|i| if let syn::Item::Mod(m) = i { Some(m.ident.to_string()) } else { None })
        .collect();
    assert_eq!(modules, ["split", "split_head", "whole"]);
    let compact: String = src.split_whitespace().collect();
    // The head takes the two boundary maps and the image; NHWC logits are permuted to NCHW.
    assert!(compact.contains("letOk([f0,f1,f2])=<[burn::tensor::Tensor<4>;3usize]>::try_from(features)"), "{src}");
    assert!(compact.contains("self.forward(f0,f1,f2).permute([0,3,1,2])"), "{src}");
    assert!(compact.contains(r#"pubconstBOUNDARY:&[&str]=&["f_low","f_high"];"#), "{src}");
    // Only the split model is in dispatch_split; both are in dispatch.
    assert!(compact.contains(r#""split"=>Some(f.call::<split::Model,split_head::Model>()),_=>None"#), "{src}");
    assert!(compact.contains(r#""whole"=>Some(f.call::<whole::Model>()),_=>None"#), "{src}");
    // Embedded with its side file, or read from its path (and then no side file is embedded).
    assert!(compact.contains(r#"onnx:crate::model::OnnxSource::Embedded(include_bytes!("/m/split.onnx")),data:&[("split.onnx.data",include_bytes!("/m/split.onnx.data"))]"#), "{src}");
    assert!(compact.contains(r#"onnx:crate::model::OnnxSource::Path("/m/whole.onnx"),data:&[],"#), "{src}");
    assert!(compact.contains("backbone:Ok(crate::backbone::Rule::Names)"), "{src}");
    assert!(compact.contains(r#"split:None,backbone:Err("noASPPwasfound")"#), "{src}");
}
