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

/// The frozen backbone in onnxruntime (the graph `build.rs` cut at the encoder's outputs, with
/// burn's weights written in) feeding the generated head in burn gives the whole burn model's
/// logits; the head written back into the whole model changes nothing.
#[test]
fn head_on_the_onnxruntime_backbone_gives_the_whole_models_logits() {
    common::assert_split(
        "deeplabv3plus_mobilenetv2",
        &["/encoder/features.18/features.18.1/BatchNormalization_output_0", "/encoder/features.3/Add_output_0"],
        false,
        &[[1, 1280, 4, 4], [1, 24, 16, 16]],
    );
}

/// The same for the Keras model (tf2onnx, NHWC): its head also reads the image, for the size to
/// upsample the logits to, and gives NHWC logits.
#[test]
fn keras_head_on_the_onnxruntime_backbone_gives_the_whole_models_logits() {
    common::assert_split(
        "keras_deeplabv3plus_mobilenetv2",
        &[
            "deeplabv3plus_mobilenetv2/backbone_block2_add/add:0",
            "deeplabv3plus_mobilenetv2/backbone_block16_project_bn/FusedBatchNormV3:0",
        ],
        true,
        &[[1, 24, 16, 16], [1, 320, 4, 4], [1, 64, 64, 3]],
    );
}
