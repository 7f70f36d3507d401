//! BatchNorm running statistics after one train-mode step equal PyTorch's
//! (fixture: scripts/make_fixtures.py), which needs the momentum converted from the ONNX
//! convention and the running variance updated with the unbiased batch variance.

mod common;

use std::collections::HashMap;

use burn::module::Module;
use burn::store::ModuleSnapshot;
use burn::tensor::{Tensor, TensorData};
use segtune::model::{
    Checkpoint, SegModel, cpu_device, generated::deeplabv3plus_mobilenetv2 as reference_model, pack_f32,
};

#[test]
fn running_statistics_after_one_train_step_match_pytorch() {
    let index: serde_json::Value = common::read_json(common::fixture("bn_step.json"));
    let expected = common::read_f32(&common::fixture("bn_step.bin"));
    let input = common::read_f32(&common::fixture("bn_step_input.bin"));
    let shape: Vec<usize> =
        index["input_shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();

    let device = cpu_device().autodiff();
    let ckpt = Checkpoint::open(None, None).unwrap();
    let model: reference_model::Model = ckpt.load(&device).unwrap();
    let before = stats(&model);
    let logits = model.logits(Tensor::from_data(TensorData::new(input, shape), &device));
    logits.mean().backward();
    // Running statistics are per-thread until synced; `valid()` syncs them.
    let after = stats(&model.valid());

    let by_value: HashMap<(usize, &str), &str> =
        reference_model::PARAMS.iter().map(|e| ((e.node, e.value), e.burn)).collect();
    let (mut worst, mut layers, mut moved) = (0f32, 0, 0);
    for bn in index["bn"].as_array().unwrap() {
        let node = bn["node"].as_u64().unwrap() as usize;
        let channels = bn["channels"].as_u64().unwrap() as usize;
        let offset = bn["offset"].as_u64().unwrap() as usize;
        for (k, slot) in ["running_mean", "running_var"].iter().enumerate() {
            let burn_path = by_value[&(node, bn[slot].as_str().unwrap())];
            let got = &after[burn_path];
            let want = &expected[offset + k * channels..offset + (k + 1) * channels];
            for (g, w) in got.iter().zip(want) {
                worst = worst.max((g - w).abs());
            }
            moved += (got != &before[burn_path]) as usize;
        }
        layers += 1;
    }
    assert_eq!(layers, 61);
    assert_eq!(moved, 122, "every running statistic changed in the step");
    assert!(worst <= 1e-5, "max |burn - PyTorch| over running statistics: {worst:e}");
}

fn stats(model: &reference_model::Model) -> HashMap<String, Vec<f32>> {
    model
        .collect(None, None, false)
        .into_iter()
        .filter(|t| t.name.ends_with(".running_mean") || t.name.ends_with(".running_var"))
        .map(|t| {
            let name = t.name.clone();
            (name, pack_f32(&t))
        })
        .collect()
}
