//! Hostile and broken input across every subcommand, as one table: each case must exit
//! non-zero, name the offending file and the problem on stderr, never panic, and leave no
//! partial output behind.

mod common;

use std::path::{Path, PathBuf};

use image::{GrayImage, Luma, Rgb, RgbImage};
use segtune::data;

struct Case {
    name: &'static str,
    args: Vec<String>,
    /// Every string must appear on stderr (the file and the problem).
    expect: Vec<String>,
    /// Paths that must not exist afterwards (no partial output).
    absent: Vec<PathBuf>,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|a| a.to_string()).collect()
}

/// A copy of the good set with one change.
fn variant(good: &Path, root: &Path, name: &str, change: impl FnOnce(&Path)) -> PathBuf {
    let dir = root.join(name);
    copy_dir(good, &dir);
    change(&dir);
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn every_subcommand_refuses_bad_input_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let good = root.join("good");
    common::synth_set(&good, 4, 4, 2, 32, 8);
    let reference = common::reference_path();
    let bytes = std::fs::read(&reference).unwrap();

    // Broken models.
    let truncated = root.join("truncated.onnx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let empty = root.join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    let png_onnx = root.join("picture.onnx");
    RgbImage::new(4, 4).save(root.join("p.png")).unwrap();
    std::fs::rename(root.join("p.png"), &png_onnx).unwrap();
    let foreign = root.join("foreign.onnx");
    common::write_model(&common::two_conv_model(&[1, 3, 8, 8]), &foreign);

    // Broken data sets.
    let first_jpg = |d: &Path| d.join("JPEGImages/train_00001.jpg");
    let first_mask = |d: &Path| d.join("SegmentationClass/train_00001.png");
    let trunc_jpeg = variant(&good, root, "trunc_jpeg", |d| {
        let b = std::fs::read(first_jpg(d)).unwrap();
        std::fs::write(first_jpg(d), &b[..b.len() / 2]).unwrap();
    });
    let jpeg_mask = variant(&good, root, "jpeg_mask", |d| {
        GrayImage::new(32, 32).save(d.join("m.jpg")).unwrap();
        std::fs::rename(d.join("m.jpg"), first_mask(d)).unwrap();
    });
    let wrong_size = variant(&good, root, "wrong_size", |d| {
        data::write_index_png(&first_mask(d), &GrayImage::new(32, 20), &data::voc_palette()).unwrap();
    });
    let value_37 = variant(&good, root, "value_37", |d| {
        let mut m = data::load_mask(&first_mask(d), 4).unwrap();
        m.put_pixel(3, 4, Luma([37]));
        data::write_index_png(&first_mask(d), &m, &data::voc_palette()).unwrap();
    });
    let rgb_mask = variant(&good, root, "rgb_mask", |d| {
        RgbImage::from_pixel(32, 32, Rgb([128, 0, 0])).save(first_mask(d)).unwrap();
    });
    let missing = variant(&good, root, "missing", |d| {
        std::fs::remove_file(first_jpg(d)).unwrap();
    });
    let empty_dir = root.join("empty_dir");
    std::fs::create_dir_all(&empty_dir).unwrap();

    // A good run and export for the commands that need one.
    let run = root.join("run");
    let status = common::command()
        .args(["train", "--data", &s(&good), "--out", &s(&run), "--classes", "4", "--epochs", "1", "--batch", "2"])
        .args(["--crop", "32", "--bn", "train"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let model = root.join("model.onnx");
    assert!(common::command().args(["export", &s(&run), "--out", &s(&model)]).status().unwrap().success());

    let a_file = root.join("a_file");
    std::fs::write(&a_file, b"not a directory").unwrap();
    // A location no one may write, root included (CI runs as root, which ignores chmod).
    let read_only = PathBuf::from("/sys/segtune-test-output");

    let train = |data: &Path, out: &str| {
        args(&[
            "train",
            "--data",
            &s(data),
            "--out",
            out,
            "--classes",
            "4",
            "--epochs",
            "1",
            "--batch",
            "2",
            "--crop",
            "32",
        ])
    };
    let validate = |data: &Path| args(&["validate", &s(&model), "--data", &s(data), "--split", "train"]);
    let doctor = |data: &Path| {
        args(&["doctor", "--data", &s(data), "--classes", "4", "--batch", "2", "--crop", "32", "--bn", "train"])
    };
    let new_run = |n: &str| root.join(format!("new_run_{n}"));

    let mut cases = vec![
        Case {
            name: "import truncated",
            args: args(&["import", &s(&truncated)]),
            expect: vec![s(&truncated), "truncated or corrupt".into()],
            absent: vec![],
        },
        Case {
            name: "import zero bytes",
            args: args(&["import", &s(&empty)]),
            expect: vec![s(&empty), "empty file (0 bytes)".into()],
            absent: vec![],
        },
        Case {
            name: "import png",
            args: args(&["import", &s(&png_onnx)]),
            expect: vec![s(&png_onnx), "found a PNG image".into()],
            absent: vec![],
        },
        Case {
            name: "import foreign graph",
            args: args(&["import", &s(&foreign)]),
            expect: vec![s(&foreign), "expected the architecture".into()],
            absent: vec![],
        },
        Case {
            name: "inspect truncated",
            args: args(&["inspect", &s(&truncated)]),
            expect: vec![s(&truncated), "truncated".into()],
            absent: vec![],
        },
        Case {
            name: "inspect png",
            args: args(&["inspect", &s(&png_onnx)]),
            expect: vec![s(&png_onnx), "PNG".into()],
            absent: vec![],
        },
        Case {
            name: "parity foreign weights",
            args: args(&["parity", "--weights", &s(&foreign), "--size", "32"]),
            expect: vec![s(&foreign), "expected the architecture".into()],
            absent: vec![],
        },
        Case {
            name: "parity size",
            args: args(&["parity", "--size", "250"]),
            expect: vec!["--size 250".into(), "multiple of 16".into()],
            absent: vec![],
        },
        Case {
            name: "train truncated jpeg",
            args: train(&trunc_jpeg, &s(&new_run("a"))),
            expect: vec![s(&first_jpg(&trunc_jpeg)), "expected a readable image".into()],
            absent: vec![new_run("a")],
        },
        Case {
            name: "train jpeg renamed png mask",
            args: train(&jpeg_mask, &s(&new_run("b"))),
            expect: vec![s(&first_mask(&jpeg_mask)), "found a JPEG".into()],
            absent: vec![new_run("b")],
        },
        Case {
            name: "train mask of the wrong size",
            args: train(&wrong_size, &s(&new_run("c"))),
            expect: vec![s(&first_mask(&wrong_size)), "mask is 32x20 but its image".into()],
            absent: vec![new_run("c")],
        },
        Case {
            name: "train mask value 37 at 21 classes",
            args: {
                let mut a = train(&value_37, &s(&new_run("d")));
                a[6] = "21".into();
                a
            },
            expect: vec![s(&first_mask(&value_37)), "mask value 37".into(), "outside [0, 21)".into()],
            absent: vec![new_run("d")],
        },
        Case {
            name: "train rgb mask",
            args: train(&rgb_mask, &s(&new_run("e"))),
            expect: vec![s(&first_mask(&rgb_mask)), "found RGB colours".into()],
            absent: vec![new_run("e")],
        },
        Case {
            name: "train split names a missing file",
            args: train(&missing, &s(&new_run("f"))),
            expect: vec!["train.txt".into(), "train_00001.jpg does not exist".into()],
            absent: vec![new_run("f")],
        },
        Case {
            name: "train empty data dir",
            args: train(&empty_dir, &s(&new_run("g"))),
            expect: vec![s(&empty_dir), "expected a dataset layout".into(), "found none of them".into()],
            absent: vec![new_run("g")],
        },
        Case {
            name: "train output is a file",
            args: train(&good, &s(&a_file)),
            expect: vec![s(&a_file), "expected a run directory, found a file".into()],
            absent: vec![],
        },
        Case {
            name: "train read-only output",
            args: train(&good, &s(&read_only)),
            expect: vec![s(&read_only)],
            absent: vec![read_only.clone()],
        },
        Case {
            name: "export into a missing directory",
            args: args(&["export", &s(&run), "--out", &s(&root.join("nowhere/m.onnx"))]),
            expect: vec![s(&root.join("nowhere/m.onnx")), "expected an existing directory".into()],
            absent: vec![root.join("nowhere")],
        },
        Case {
            name: "export into a read-only directory",
            args: args(&["export", &s(&run), "--out", &s(&read_only.join("m.onnx"))]),
            expect: vec!["/sys/segtune-test-output".into()],
            absent: vec![],
        },
        Case {
            name: "export a directory that is no run",
            args: args(&["export", &s(&empty_dir), "--out", &s(&root.join("x.onnx"))]),
            expect: vec![s(&empty_dir), "expected a segtune run directory".into()],
            absent: vec![root.join("x.onnx")],
        },
        Case {
            name: "validate truncated model",
            args: args(&["validate", &s(&truncated), "--data", &s(&good)]),
            expect: vec![s(&truncated), "truncated".into()],
            absent: vec![],
        },
        Case {
            name: "validate truncated jpeg",
            args: validate(&trunc_jpeg),
            expect: vec!["expected a readable image".into()],
            absent: vec![],
        },
        Case {
            name: "validate rgb mask",
            args: validate(&rgb_mask),
            expect: vec!["found RGB colours".into()],
            absent: vec![],
        },
        Case {
            name: "validate empty dir",
            args: validate(&empty_dir),
            expect: vec![s(&empty_dir), "expected a dataset layout".into(), "found none of them".into()],
            absent: vec![],
        },
        Case {
            name: "infer png as model",
            args: args(&["infer", &s(&png_onnx), &s(&good.join("JPEGImages")), "--out", &s(&root.join("pred_a"))]),
            expect: vec![s(&png_onnx), "PNG".into()],
            absent: vec![root.join("pred_a")],
        },
        Case {
            name: "infer missing input",
            args: args(&["infer", &s(&model), &s(&root.join("nope.jpg")), "--out", &s(&root.join("pred_b"))]),
            expect: vec![s(&root.join("nope.jpg")), "no such file".into()],
            absent: vec![root.join("pred_b")],
        },
        Case {
            name: "infer output is a file",
            args: args(&["infer", &s(&model), &s(&good.join("JPEGImages")), "--out", &s(&a_file)]),
            expect: vec![s(&a_file), "found a file".into()],
            absent: vec![],
        },
        Case {
            name: "infer only a corrupt image",
            args: args(&["infer", &s(&model), &s(&first_jpg(&trunc_jpeg)), "--out", &s(&root.join("pred_c"))]),
            expect: vec![s(&first_jpg(&trunc_jpeg)), "skipped".into()],
            absent: vec![root.join("pred_c/train_00001.png")],
        },
        Case {
            name: "doctor empty dir",
            args: doctor(&empty_dir),
            expect: vec![s(&empty_dir), "expected a dataset layout".into(), "found none of them".into()],
            absent: vec![],
        },
        Case {
            name: "doctor truncated weights",
            args: {
                let mut a = doctor(&good);
                a.extend(args(&["--weights", &s(&truncated)]));
                a
            },
            expect: vec![s(&truncated), "truncated".into()],
            absent: vec![],
        },
        Case {
            name: "synth into a file",
            args: args(&["synth", &s(&a_file), "--classes", "3", "--train", "1", "--val", "1"]),
            expect: vec![s(&a_file), "found a file".into()],
            absent: vec![],
        },
        Case {
            name: "synth one class",
            args: args(&["synth", &s(&root.join("one")), "--classes", "1"]),
            expect: vec!["--classes 1".into()],
            absent: vec![root.join("one")],
        },
    ];
    // The doctor reports bad labels as FAIL lines (exit 1) rather than refusing them.
    cases.push(Case { name: "doctor rgb mask", args: doctor(&rgb_mask), expect: vec![], absent: vec![] });

    let mut failures = vec![];
    for case in &cases {
        let out = common::command().args(&case.args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut problems = vec![];
        if out.status.success() {
            problems.push("exited 0".to_string());
        }
        if err.contains("panicked") || err.contains("RUST_BACKTRACE") {
            problems.push("panicked".into());
        }
        for want in &case.expect {
            if !err.contains(want.as_str()) {
                problems.push(format!("stderr lacks {want:?}"));
            }
        }
        for p in &case.absent {
            if p.exists() {
                problems.push(format!("left {} behind", p.display()));
            }
        }
        if case.name == "doctor rgb mask" && !stdout.contains("FAIL  labels.format") {
            problems.push("no FAIL labels.format line".into());
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {} -- stderr: {}", case.name, problems.join("; "), err.trim()));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
