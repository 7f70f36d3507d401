//! Build-time import: the parameter map against burn-onnx's own weight pack, byte for byte, and
//! the momentum conversion in the generated code.

mod common;

use std::collections::{HashMap, HashSet};

use burn::store::burn_pack::Reader;
use segtune::model::{self, generated::deeplabv3plus_mobilenetv2 as reference_model};
use segtune::onnx;

#[test]
fn every_mapped_tensor_equals_its_onnx_initializer_byte_for_byte() {
    let proto = common::reference();
    let inits: HashMap<&str, &onnx::TensorProto> =
        onnx::graph(&proto).initializer.iter().map(|t| (t.name(), t)).collect();
    let pack = Reader::from_file(reference_model::BURNPACK_PATH).expect("burn-onnx wrote its pack");
    let pack_names: HashSet<&str> = pack.tensor_names().into_iter().collect();
    let map_names: HashSet<&str> = reference_model::PARAMS.iter().map(|e| e.burn).collect();
    assert_eq!(pack_names, map_names, "the map covers exactly burn-onnx's parameters");
    // 67 Conv weights, 1 Conv bias (the classifier; the others feed a BN), 61 × 4 BN tensors.
    let convs_with_bias =
        onnx::graph(&proto).node.iter().filter(|n| n.op_type() == "Conv" && n.input.len() == 3).count();
    assert_eq!(convs_with_bias, 1);
    assert_eq!(map_names.len(), 67 + convs_with_bias + 61 * 4);
    assert_eq!(map_names.len(), 312);

    let mut own = 0;
    for e in reference_model::PARAMS {
        let burn_bytes = pack.tensor_data(e.burn).expect("tensor in pack");
        let onnx_bytes = common::init_bytes(inits[e.onnx]);
        assert!(burn_bytes == onnx_bytes, "{} differs from ONNX {}", e.burn, e.onnx);
        own += e.onnx.ends_with(".segtune") as usize;
    }
    // The 214 tensors torch had shared through Identity nodes were trained apart: `segtune
    // export` gave each its own initializer, which the map names.
    assert_eq!(own, 214);
}

#[test]
fn map_names_follow_graph_order_and_submodules() {
    let proto = common::reference();
    let g = onnx::graph(&proto);
    let first_conv = g.node.iter().position(|n| n.op_type() == "Conv").unwrap();
    // burn-onnx splits graphs of over 200 nodes after simplification into `submoduleN`; this one
    // stays flat, and the prefix (when present) comes from burn-onnx's own pack.
    let e = reference_model::PARAMS.iter().find(|e| e.burn.ends_with("conv2d1.weight")).unwrap();
    assert_eq!((e.burn, e.node, e.input), ("conv2d1.weight", first_conv, 1));
    assert_eq!(e.onnx, "encoder.features.0.0.weight");
    let last_bn = g.node.iter().rposition(|n| n.op_type() == "BatchNormalization").unwrap();
    let e = reference_model::PARAMS.iter().find(|e| e.burn == "batchnormalization61.running_var").unwrap();
    assert_eq!((e.node, e.input, e.value), (last_bn, 4, "decoder.block2.1.running_var.segtune"));
    assert_eq!(e.onnx, e.value, "its own initializer since pretraining");
}

#[test]
fn generated_batchnorm_momentum_is_one_minus_onnx_momentum() {
    let proto = common::reference();
    let onnx_momenta: Vec<f64> = onnx::graph(&proto)
        .node
        .iter()
        .filter(|n| n.op_type() == "BatchNormalization")
        .map(|n| onnx::attr_f32(n, "momentum", 0.9) as f64)
        .collect();
    let source = std::fs::read_to_string(reference_model::BURNPACK_PATH.replace(".bpk", ".rs")).unwrap();
    let generated: Vec<f64> = source
        .match_indices("crate::model::BatchNorm::new(")
        .map(|(i, m)| {
            let args = &source[i + m.len()..];
            let args = &args[..args.find(')').unwrap()];
            let momentum = args.split(',').nth(2).unwrap().trim().trim_end_matches("f64");
            momentum.parse().unwrap()
        })
        .collect();
    assert_eq!(generated.len(), onnx_momenta.len());
    for (g, o) in generated.iter().zip(&onnx_momenta) {
        assert!((g - (1.0 - o)).abs() < 1e-12, "generated momentum {g}, ONNX {o}");
    }
    assert!((generated[0] - 0.1).abs() < 1e-6);
}

#[test]
fn default_checkpoint_is_the_reference_model() {
    let ckpt = model::Checkpoint::open(None, None).unwrap();
    assert_eq!(ckpt.info.name, "deeplabv3plus_mobilenetv2");
    assert_eq!(ckpt.normalization, model::Normalization::IMAGENET);
    let embedded = ckpt.onnx_bytes().unwrap();
    assert_eq!(embedded.as_ref(), std::fs::read(common::reference_path()).unwrap().as_slice());
}

/// The shipped model is pretrained (bench/pretrain.sh): every BatchNorm carries statistics
/// learned from data, not the initial mean 0 / variance 1 that `--bn frozen` cannot use.
#[test]
fn shipped_batchnorm_statistics_are_trained() {
    let proto = common::reference();
    let graph = onnx::graph(&proto);
    let inits: HashMap<&str, &onnx::TensorProto> = graph.initializer.iter().map(|t| (t.name(), t)).collect();
    let ids = onnx::IdentityResolver::new(graph);
    let mut layers = 0;
    for node in graph.node.iter().filter(|n| n.op_type() == "BatchNormalization") {
        let mean = onnx::tensor_f32(inits[ids.resolve(&node.input[3])], None).unwrap();
        let var = onnx::tensor_f32(inits[ids.resolve(&node.input[4])], None).unwrap();
        let spread = |v: &[f32], init: f32| v.iter().map(|x| (x - init).abs()).fold(0f32, f32::max);
        // (A BN after a linear bottleneck has a running mean of ~1e-5: zero-mean inputs.)
        assert!(
            spread(&mean, 0.0) > 1e-3 || spread(&var, 1.0) > 1e-3,
            "BatchNorm {} still at its initial statistics",
            node.name()
        );
        assert!(var.iter().all(|v| v.is_finite() && *v > 0.0), "BatchNorm {}: a variance ≤ 0", node.name());
        layers += 1;
    }
    assert_eq!(layers, 61);
}
