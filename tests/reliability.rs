//! Faults survived: SIGKILL mid-epoch and mid-checkpoint then resume (same final weights, every
//! checkpoint readable), and a disk that fills mid-write (clear error, previous file intact).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use burn::store::burn_pack::Reader;
mod common;

fn train_args(data: &Path, out: &Path) -> Vec<String> {
    [
        "train",
        "--data",
        &data.display().to_string(),
        "--out",
        &out.display().to_string(),
        "--classes",
        "4",
        "--epochs",
        "3",
        "--batch",
        "4",
        "--crop",
        "64",
        "--bn",
        "train",
        "--seed",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(mut child: Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// Every checkpoint directory of a run (the temporary ones excluded) must be complete.
fn assert_checkpoints_readable(run: &Path) {
    let root = run.join("checkpoints");
    for e in std::fs::read_dir(&root).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("epoch_") {
            Reader::from_file(p.join("model.bpk"))
                .unwrap_or_else(|e| panic!("{}: {e:?}", p.display()))
                .into_tensors()
                .unwrap();
            assert!(p.join("optimizer.bpk").is_file());
            let _: serde_json::Value = common::read_json(p.join("state.json"));
        }
    }
    if let Ok(latest) = std::fs::read_to_string(root.join("latest")) {
        assert!(root.join(latest.trim()).join("state.json").is_file(), "latest names a complete checkpoint");
    }
}

fn final_weights(run: &Path) -> HashMap<String, Vec<u8>> {
    let dir = segtune::train::RunDir(run.to_path_buf()).latest_checkpoint().unwrap();
    let r = Reader::from_file(dir.join("model.bpk")).unwrap();
    r.tensor_names().into_iter().map(|n| (n.to_string(), r.tensor_data(n).unwrap())).collect()
}

#[test]
fn sigkill_mid_epoch_and_mid_checkpoint_then_resume_gives_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::synth_set(&data, 4, 16, 2, 64, 4);
    let whole = dir.path().join("whole");
    assert!(common::command().args(train_args(&data, &whole)).output().unwrap().status.success());

    let run = dir.path().join("killed");
    // 1. Killed in the middle of epoch 2 (epoch 1's checkpoint is complete).
    let child = common::command().args(train_args(&data, &run)).stdout(std::process::Stdio::null()).spawn().unwrap();
    wait_for("epoch 1's checkpoint", Duration::from_secs(120), || run.join("checkpoints/latest").is_file());
    std::thread::sleep(Duration::from_millis(400));
    kill(child);
    assert_checkpoints_readable(&run);

    // 2. Resumed, and killed while writing a checkpoint.
    let child = common::command()
        .args(["train", "--resume", &run.display().to_string()])
        .env("SEGTUNE_TEST_CHECKPOINT_PAUSE_MS", "5000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let tmp_dir =
        || -> Option<PathBuf> {
            std::fs::read_dir(run.join("checkpoints")).ok()?.flatten().map(|e| e.path()).find(|p| {
                p.file_name().unwrap().to_string_lossy().starts_with(".epoch_") && p.join("model.bpk").is_file()
            })
        };
    wait_for("a checkpoint half written", Duration::from_secs(120), || tmp_dir().is_some());
    kill(child);
    assert!(tmp_dir().is_some(), "the half-written checkpoint is still there");
    assert_checkpoints_readable(&run);

    // 3. Resumed to the end.
    let out = common::command().args(["train", "--resume", &run.display().to_string()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_checkpoints_readable(&run);
    assert!(tmp_dir().is_none(), "the temporary checkpoint was cleaned up");
    let (a, b) = (final_weights(&whole), final_weights(&run));
    assert_eq!(a.len(), b.len());
    for (name, bytes) in &a {
        assert!(bytes == &b[name], "{name} differs from the uninterrupted run");
    }
    let metrics: serde_json::Value = common::read_json(run.join("metrics.json"));
    assert_eq!(metrics.as_array().unwrap().len(), 3);
}

/// Runs segtune with a file-size limit of `kb` KiB (SIGXFSZ ignored, so writes fail with EFBIG).
fn limited(kb: u64, args: &[String]) -> std::process::Output {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    Command::new("bash")
        .arg("-c")
        .arg(format!("trap '' XFSZ; ulimit -f {kb}; exec '{}' {}", env!("CARGO_BIN_EXE_segtune"), quoted.join(" ")))
        .output()
        .unwrap()
}

#[test]
fn a_full_disk_mid_write_keeps_the_previous_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::synth_set(&data, 4, 4, 2, 32, 6);
    let run = dir.path().join("run");
    let mut args = train_args(&data, &run);
    args[8] = "1".into(); // --epochs 1
    args[10] = "2".into(); // --batch 2
    args[12] = "32".into(); // --crop 32
    assert!(common::command().args(&args).output().unwrap().status.success());

    // Export over a previous file, with room for 1 MiB of the 17 MB export.
    let target = dir.path().join("model.onnx");
    std::fs::write(&target, b"the previous export").unwrap();
    let out =
        limited(1024, &["export".into(), run.display().to_string(), "--out".into(), target.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&target.display().to_string()) && err.contains("File too large"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"the previous export");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // A checkpoint that cannot be written: the run stops with the path, the previous
    // checkpoint stays the latest and readable.
    let before = final_weights(&run);
    let cfg_path = run.join("config.json");
    let mut cfg: serde_json::Value = common::read_json(&cfg_path);
    cfg["epochs"] = serde_json::json!(2);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let out = limited(1024, &["train".into(), "--resume".into(), run.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("File too large") && err.contains("checkpoints"), "{err}");
    assert_checkpoints_readable(&run);
    assert_eq!(final_weights(&run), before);
}
