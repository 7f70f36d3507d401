//! The burn model against onnxruntime: logits at several batches and sizes, and a perturbed
//! checkpoint loaded at run time.

mod common;

use segtune::model::{Checkpoint, SegModel, cpu_device, generated::deeplabv3plus_mobilenetv2::Model};
use segtune::validate::{self, ParityOptions, compare_logits, parity, seeded_input, to_array, to_tensor};

fn check(batch: usize, size: usize) {
    let ckpt = Checkpoint::open(None, None).unwrap();
    let opts = ParityOptions { batch, size, seed: 42, repeat: 0, ..Default::default() };
    let r = parity::<Model>(&ckpt, &opts).unwrap();
    assert_eq!((r.batch, r.size), (batch, size));
    assert!(r.pass && r.max_abs_diff <= 1e-4, "batch {batch} {size}²: max |Δ| {:e}", r.max_abs_diff);
    assert!(r.argmax_agreement >= 0.9999, "argmax agreement {}", r.argmax_agreement);
}

#[test]
fn parity_64_batch_1() {
    check(1, 64);
}

#[test]
fn parity_64_batch_3() {
    check(3, 64);
}

#[test]
fn parity_128_batch_1() {
    check(1, 128);
}

#[test]
fn parity_128_batch_3() {
    check(3, 128);
}

#[test]
fn perturbed_checkpoint_changes_burn_output_and_matches_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("perturbed.onnx");
    let mut proto = common::reference();
    // The classifier's bias (class k gets +k: the pretrained model is confident), and the
    // first BatchNorm's scale.
    common::map_initializer(&mut proto, "segmentation_head.0.bias", |k, v| v + k as f32);
    common::map_initializer(&mut proto, "encoder.features.0.1.weight", |_, v| v * 0.5);
    common::write_model(&proto, &path);

    let base = Checkpoint::open(None, None).unwrap();
    let perturbed = Checkpoint::open(None, Some(&path)).unwrap();
    assert_eq!(perturbed.info.name, "deeplabv3plus_mobilenetv2", "picked by architecture");

    let device = cpu_device();
    let input = seeded_input(1, 64, &base.normalization, 3);
    let logits = |c: &Checkpoint| to_array(c.load::<Model>(&device).unwrap().logits(to_tensor(input.view(), &device)));
    let (max, _, agree) = compare_logits(&logits(&base), &logits(&perturbed));
    assert!(max > 1.0, "perturbed weights must change the burn output (max |Δ| {max:e})");
    assert!(agree < 0.5, "and its predictions (argmax agreement {agree})");

    let opts = ParityOptions { batch: 1, size: 64, seed: 3, repeat: 0, ..Default::default() };
    let r = validate::parity::<Model>(&perturbed, &opts).unwrap();
    assert!(r.pass, "burn on the perturbed file vs onnxruntime on it: max |Δ| {:e}", r.max_abs_diff);
    assert_eq!(r.weights, path.display().to_string());
}

/// A checkpoint whose equal tensors are shared through `Identity` nodes (as torch exports a
/// fresh model) loads into the same architecture, and burn matches onnxruntime on it.
#[test]
fn identity_shared_checkpoint_loads_and_matches_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.onnx");
    common::write_model(&common::identity_shared_reference(), &path);
    let ckpt = Checkpoint::open(None, Some(&path)).unwrap();
    assert_eq!(ckpt.info.name, "deeplabv3plus_mobilenetv2", "picked by architecture");
    let opts = ParityOptions { batch: 2, size: 64, seed: 5, repeat: 0, ..Default::default() };
    let r = validate::parity::<Model>(&ckpt, &opts).unwrap();
    assert!(r.pass, "burn vs onnxruntime on the Identity-shared file: max |Δ| {:e}", r.max_abs_diff);
}

/// Shifts every BatchNorm running statistic, so that each differs from the tensor an `Identity`
/// shares it with in the reference graph (the BN weight and bias, at their initial values).
struct ShiftStatistics(Vec<String>);

impl burn::module::ModuleMapper for ShiftStatistics {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.0.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.0.pop();
    }
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<burn::tensor::Tensor<D>>,
    ) -> burn::module::Param<burn::tensor::Tensor<D>> {
        let t = param.val();
        let t = match self.0.last().map(String::as_str) {
            Some("running_var") => t.mul_scalar(1.5),
            Some("running_mean") => t.add_scalar(0.1),
            _ => return param,
        };
        burn::module::Param::initialized(param.id, t)
    }
}

/// The frozen backbone in onnxruntime (the graph `build.rs` cut at the encoder's outputs, with
/// burn's weights written in) feeding the generated head in burn gives the whole burn model's
/// logits; the head written back into the whole model changes nothing.
#[test]
fn head_on_the_onnxruntime_backbone_gives_the_whole_models_logits() {
    use burn::module::Module;
    use burn::tensor::{Tensor, TensorData};
    use segtune::model::{Trainee, backbone_onnx, generated::deeplabv3plus_mobilenetv2_head::Model as Head, transfer};

    let ckpt = Checkpoint::open(None, None).unwrap();
    let info = ckpt.info;
    let split = info.split.expect("build.rs splits the reference model");
    assert_eq!(
        split.boundary,
        ["/encoder/features.18/features.18.1/BatchNormalization_output_0", "/encoder/features.3/Add_output_0"]
    );
    let device = cpu_device();
    let whole: Model = ckpt.load::<Model>(&device).unwrap().map(&mut ShiftStatistics(vec![]));
    let head: Head = transfer(&whole, info.params, Head::init(&device), split.params, true).unwrap();
    let mut backbone =
        segtune::runtime::OrtModel::from_bytes(&backbone_onnx(&whole, info, &split).unwrap(), "backbone", 1).unwrap();

    for (batch, size) in [(1, 64), (2, 96)] {
        let x = seeded_input(batch, size, &ckpt.normalization, 11);
        let features: Vec<Tensor<4>> = backbone
            .run_outputs(x.view())
            .unwrap()
            .into_iter()
            .map(|(shape, v)| Tensor::from_data(TensorData::new(v, [shape[0], shape[1], shape[2], shape[3]]), &device))
            .collect();
        assert_eq!(features[0].dims(), [batch, 1280, size / 16, size / 16]);
        let split_logits = to_array(head.forward_features(features));
        let whole_logits = to_array(whole.logits(to_tensor(x.view(), &device)));
        let (max_abs, _, _) = compare_logits(&split_logits, &whole_logits);
        assert!(max_abs <= 1e-4, "batch {batch} {size}²: max |Δ| {max_abs:e}");

        let rejoined: Model = transfer(&head, split.params, whole.clone(), info.params, false).unwrap();
        let rejoined_logits = to_array(rejoined.logits(to_tensor(x.view(), &device)));
        assert_eq!(rejoined_logits, whole_logits);
    }
    // Without the shift, the backbone would differ from the burn model only where the graph
    // shares tensors: check that the shift reached the backbone.
    let unshifted: Model = ckpt.load(&device).unwrap();
    let mut plain =
        segtune::runtime::OrtModel::from_bytes(&backbone_onnx(&unshifted, info, &split).unwrap(), "backbone", 1)
            .unwrap();
    let x = seeded_input(1, 64, &ckpt.normalization, 11);
    let (a, b) = (backbone.run_outputs(x.view()).unwrap(), plain.run_outputs(x.view()).unwrap());
    assert!(a[0].1.iter().zip(&b[0].1).any(|(p, q)| (p - q).abs() > 1e-3));
}
