//! Numbers before speed: one training step of the shipped model at 64² (batch 2, full fine-tune,
//! BatchNorm in train mode, a new 6-class classifier) on `--device cuda` and `--device wgpu`
//! gives the CPU's numbers: the loss to 1e-4 relative, every weight and BatchNorm running
//! statistic after the step to 1e-3 relative (per tensor, against its largest value). Runs where
//! segtune was built with the feature and a device answers; says why it skipped elsewhere.
//! `bench/gpu.sh` carries this test's binary to the GPU host. `SEGTUNE_TEST_GPU_DEVICES`
//! (default `cuda,wgpu`) picks the devices; `cpu` compares the CPU with itself, which runs the
//! test's logic on a machine without a GPU.

mod common;

use std::collections::HashMap;
use std::path::Path;

use burn::store::burn_pack::Reader;

use segtune::device::{self, DeviceKind};
use segtune::train::{self, BnMode, Freeze, TrainConfig};

/// The loss of the one step and every tensor of the checkpoint after it; the run goes to
/// `dir/NAME`.
fn one_step(kind: DeviceKind, dir: &Path, name: &str) -> (f64, HashMap<String, Vec<f32>>) {
    let data = dir.join("data");
    if !data.exists() {
        common::synth_set(&data, 6, 2, 1, 64, 8);
    }
    let mut cfg = TrainConfig::new(data);
    (cfg.classes, cfg.epochs, cfg.batch, cfg.crop, cfg.lr) = (6, 1, 2, 64, Some(0.01));
    (cfg.freeze, cfg.bn, cfg.device) = (vec![Freeze::None], BnMode::Train, kind);
    let run = dir.join(name);
    let summary = train::train(cfg, &run).unwrap();
    let reader = Reader::from_file(run.join("checkpoints/epoch_001/model.bpk")).unwrap();
    let tensors =
        reader.into_tensors().unwrap().into_iter().map(|t| (t.name.clone(), segtune::model::pack_f32(&t))).collect();
    (summary.history[0].train_loss, tensors)
}

/// The largest |a − b| over the largest |a| of two tensors.
fn relative(a: &[f32], b: &[f32]) -> f32 {
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    diff / a.iter().map(|x| x.abs()).fold(1e-6f32, f32::max)
}

#[test]
#[cfg_attr(
    not(any(feature = "cuda", feature = "wgpu")),
    ignore = "built without the cuda and wgpu features (SEGTUNE_TEST_GPU_DEVICES=cpu runs it on the CPU: --ignored)"
)]
fn one_gpu_training_step_matches_the_cpu() {
    let wanted = std::env::var("SEGTUNE_TEST_GPU_DEVICES").unwrap_or_else(|_| "cuda,wgpu".into());
    let kinds: Vec<DeviceKind> = wanted
        .split(',')
        .map(|d| <DeviceKind as clap::ValueEnum>::from_str(d.trim(), true).unwrap_or_else(|e| panic!("{d}: {e}")))
        .collect();
    let available: Vec<DeviceKind> = kinds
        .into_iter()
        .filter(|&kind| match device::check(kind) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("skipped: {e}");
                false
            }
        })
        .collect();
    if available.is_empty() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cpu_loss, cpu) = one_step(DeviceKind::Cpu, dir.path(), "reference");
    for kind in available {
        let (loss, gpu) = one_step(kind, dir.path(), &format!("{kind:?}"));
        let loss_rel = ((loss - cpu_loss) / cpu_loss).abs();
        assert!(loss_rel <= 1e-4, "{kind:?}: loss {loss} vs the CPU's {cpu_loss} ({loss_rel:.2e} relative)");
        assert_eq!(gpu.len(), cpu.len());
        let (mut worst, mut worst_name) = (0f32, String::new());
        for (name, want) in &cpu {
            let r = relative(want, &gpu[name]);
            if r > worst {
                (worst, worst_name) = (r, name.clone());
            }
        }
        assert!(worst <= 1e-3, "{kind:?}: {worst_name} differs from the CPU's by {worst:.2e} relative");
        let stats = cpu.keys().filter(|k| k.ends_with(".running_var")).count();
        println!(
            "{kind:?}: loss {loss:.6} (CPU {cpu_loss:.6}, {loss_rel:.1e} relative); {} tensors ({stats} BN running \
             variances, as many means) within {worst:.1e} relative (worst {worst_name})",
            cpu.len()
        );
    }
}
