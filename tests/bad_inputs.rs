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

/// The good set, its broken variants, broken models, and a trained run and its export.
struct Fixture {
    root: PathBuf,
    good: PathBuf,
    truncated: PathBuf,
    empty: PathBuf,
    png_onnx: PathBuf,
    foreign: PathBuf,
    trunc_jpeg: PathBuf,
    jpeg_mask: PathBuf,
    wrong_size: PathBuf,
    value_37: PathBuf,
    rgb_mask: PathBuf,
    missing: PathBuf,
    empty_dir: PathBuf,
    run: PathBuf,
    model: PathBuf,
    a_file: PathBuf,
    /// A location no one may write, root included (CI runs as root, which ignores chmod).
    read_only: PathBuf,
}

fn first_jpg(d: &Path) -> PathBuf {
    d.join("JPEGImages/train_00001.jpg")
}

fn first_mask(d: &Path) -> PathBuf {
    d.join("SegmentationClass/train_00001.png")
}

/// Broken models: truncated, empty, a PNG named .onnx, a foreign graph.
fn broken_models(root: &Path) -> [PathBuf; 4] {
    let bytes = std::fs::read(common::reference_path()).unwrap();
    let truncated = root.join("truncated.onnx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let empty = root.join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    let png_onnx = root.join("picture.onnx");
    RgbImage::new(4, 4).save(root.join("p.png")).unwrap();
    std::fs::rename(root.join("p.png"), &png_onnx).unwrap();
    let foreign = root.join("foreign.onnx");
    common::write_model(&common::two_conv_model(&[1, 3, 8, 8]), &foreign);
    [truncated, empty, png_onnx, foreign]
}

/// A good run (1 epoch) and its export.
fn trained(root: &Path, good: &Path) -> (PathBuf, PathBuf) {
    let run = root.join("run");
    let status = common::command()
        .args(["train", "--data", &s(good), "--out", &s(&run), "--classes", "4", "--epochs", "1", "--batch", "2"])
        .args(["--crop", "32", "--bn", "train"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let model = root.join("model.onnx");
    assert!(common::command().args(["export", &s(&run), "--out", &s(&model)]).status().unwrap().success());
    (run, model)
}

fn fixture(root: &Path) -> Fixture {
    let good = root.join("good");
    common::synth_set(&good, 4, 4, 2, 32, 8);
    let [truncated, empty, png_onnx, foreign] = broken_models(root);
    let copy_with = |name, change: &dyn Fn(&Path)| variant(&good, root, name, change);
    let trunc_jpeg = copy_with("trunc_jpeg", &|d| {
        let b = std::fs::read(first_jpg(d)).unwrap();
        std::fs::write(first_jpg(d), &b[..b.len() / 2]).unwrap();
    });
    let jpeg_mask = copy_with("jpeg_mask", &|d| {
        GrayImage::new(32, 32).save(d.join("m.jpg")).unwrap();
        std::fs::rename(d.join("m.jpg"), first_mask(d)).unwrap();
    });
    let wrong_size = copy_with("wrong_size", &|d| {
        data::write_index_png(&first_mask(d), &GrayImage::new(32, 20), &data::voc_palette()).unwrap();
    });
    let value_37 = copy_with("value_37", &|d| {
        let mut m = data::load_mask(&first_mask(d), 4).unwrap();
        m.put_pixel(3, 4, Luma([37]));
        data::write_index_png(&first_mask(d), &m, &data::voc_palette()).unwrap();
    });
    let rgb_mask = copy_with("rgb_mask", &|d| {
        RgbImage::from_pixel(32, 32, Rgb([128, 0, 0])).save(first_mask(d)).unwrap();
    });
    let missing = copy_with("missing", &|d| std::fs::remove_file(first_jpg(d)).unwrap());
    let empty_dir = root.join("empty_dir");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let (run, model) = trained(root, &good);
    let a_file = root.join("a_file");
    std::fs::write(&a_file, b"not a directory").unwrap();
    let read_only = PathBuf::from("/sys/segtune-test-output");
    Fixture {
        root: root.to_path_buf(),
        good,
        truncated,
        empty,
        png_onnx,
        foreign,
        trunc_jpeg,
        jpeg_mask,
        wrong_size,
        value_37,
        rgb_mask,
        missing,
        empty_dir,
        run,
        model,
        a_file,
        read_only,
    }
}

impl Fixture {
    fn train(&self, data: &Path, out: &str) -> Vec<String> {
        let data = s(data);
        args(&[
            "train",
            "--data",
            &data,
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
    }

    fn validate(&self, data: &Path) -> Vec<String> {
        args(&["validate", &s(&self.model), "--data", &s(data), "--split", "train"])
    }

    fn doctor(&self, data: &Path) -> Vec<String> {
        args(&["doctor", "--data", &s(data), "--classes", "4", "--batch", "2", "--crop", "32", "--bn", "train"])
    }

    fn new_run(&self, n: &str) -> PathBuf {
        self.root.join(format!("new_run_{n}"))
    }
}

/// Broken models given to import, inspect and parity.
fn model_cases(f: &Fixture) -> Vec<Case> {
    vec![
        Case {
            name: "import truncated",
            args: args(&["import", &s(&f.truncated)]),
            expect: vec![s(&f.truncated), "truncated or corrupt".into()],
            absent: vec![],
        },
        Case {
            name: "import zero bytes",
            args: args(&["import", &s(&f.empty)]),
            expect: vec![s(&f.empty), "empty file (0 bytes)".into()],
            absent: vec![],
        },
        Case {
            name: "import png",
            args: args(&["import", &s(&f.png_onnx)]),
            expect: vec![s(&f.png_onnx), "found a PNG image".into()],
            absent: vec![],
        },
        Case {
            name: "import foreign graph",
            args: args(&["import", &s(&f.foreign)]),
            expect: vec![s(&f.foreign), "expected the architecture".into()],
            absent: vec![],
        },
        Case {
            name: "inspect truncated",
            args: args(&["inspect", &s(&f.truncated)]),
            expect: vec![s(&f.truncated), "truncated".into()],
            absent: vec![],
        },
        Case {
            name: "inspect png",
            args: args(&["inspect", &s(&f.png_onnx)]),
            expect: vec![s(&f.png_onnx), "PNG".into()],
            absent: vec![],
        },
        Case {
            name: "parity foreign weights",
            args: args(&["parity", "--weights", &s(&f.foreign), "--size", "32"]),
            expect: vec![s(&f.foreign), "expected the architecture".into()],
            absent: vec![],
        },
        Case {
            name: "parity size",
            args: args(&["parity", "--size", "250"]),
            expect: vec!["--size 250".into(), "multiple of 16".into()],
            absent: vec![],
        },
    ]
}

/// Broken data sets and outputs given to train.
fn train_cases(f: &Fixture) -> Vec<Case> {
    vec![
        Case {
            name: "train truncated jpeg",
            args: f.train(&f.trunc_jpeg, &s(&f.new_run("a"))),
            expect: vec![s(&first_jpg(&f.trunc_jpeg)), "expected a readable image".into()],
            absent: vec![f.new_run("a")],
        },
        Case {
            name: "train jpeg renamed png mask",
            args: f.train(&f.jpeg_mask, &s(&f.new_run("b"))),
            expect: vec![s(&first_mask(&f.jpeg_mask)), "found a JPEG".into()],
            absent: vec![f.new_run("b")],
        },
        Case {
            name: "train mask of the wrong size",
            args: f.train(&f.wrong_size, &s(&f.new_run("c"))),
            expect: vec![s(&first_mask(&f.wrong_size)), "mask is 32x20 but its image".into()],
            absent: vec![f.new_run("c")],
        },
        Case {
            name: "train mask value 37 at 21 classes",
            args: {
                let mut a = f.train(&f.value_37, &s(&f.new_run("d")));
                a[6] = "21".into();
                a
            },
            expect: vec![s(&first_mask(&f.value_37)), "mask value 37".into(), "outside [0, 21)".into()],
            absent: vec![f.new_run("d")],
        },
        Case {
            name: "train rgb mask",
            args: f.train(&f.rgb_mask, &s(&f.new_run("e"))),
            expect: vec![s(&first_mask(&f.rgb_mask)), "found RGB colours".into()],
            absent: vec![f.new_run("e")],
        },
        Case {
            name: "train split names a missing file",
            args: f.train(&f.missing, &s(&f.new_run("f"))),
            expect: vec!["train.txt".into(), "train_00001.jpg does not exist".into()],
            absent: vec![f.new_run("f")],
        },
        Case {
            name: "train empty data dir",
            args: f.train(&f.empty_dir, &s(&f.new_run("g"))),
            expect: vec![s(&f.empty_dir), "expected a dataset layout".into(), "found none of them".into()],
            absent: vec![f.new_run("g")],
        },
        Case {
            name: "train output is a file",
            args: f.train(&f.good, &s(&f.a_file)),
            expect: vec![s(&f.a_file), "expected a run directory, found a file".into()],
            absent: vec![],
        },
        Case {
            name: "train read-only output",
            args: f.train(&f.good, &s(&f.read_only)),
            expect: vec![s(&f.read_only)],
            absent: vec![f.read_only.clone()],
        },
    ]
}

/// Bad runs, outputs, models and data sets given to export and validate.
fn export_validate_cases(f: &Fixture) -> Vec<Case> {
    vec![
        Case {
            name: "export into a missing directory",
            args: args(&["export", &s(&f.run), "--out", &s(&f.root.join("nowhere/m.onnx"))]),
            expect: vec![s(&f.root.join("nowhere/m.onnx")), "expected an existing directory".into()],
            absent: vec![f.root.join("nowhere")],
        },
        Case {
            name: "export into a read-only directory",
            args: args(&["export", &s(&f.run), "--out", &s(&f.read_only.join("m.onnx"))]),
            expect: vec!["/sys/segtune-test-output".into()],
            absent: vec![],
        },
        Case {
            name: "export a directory that is no run",
            args: args(&["export", &s(&f.empty_dir), "--out", &s(&f.root.join("x.onnx"))]),
            expect: vec![s(&f.empty_dir), "expected a segtune run directory".into()],
            absent: vec![f.root.join("x.onnx")],
        },
        Case {
            name: "validate truncated model",
            args: args(&["validate", &s(&f.truncated), "--data", &s(&f.good)]),
            expect: vec![s(&f.truncated), "truncated".into()],
            absent: vec![],
        },
        Case {
            name: "validate truncated jpeg",
            args: f.validate(&f.trunc_jpeg),
            expect: vec!["expected a readable image".into()],
            absent: vec![],
        },
        Case {
            name: "validate rgb mask",
            args: f.validate(&f.rgb_mask),
            expect: vec!["found RGB colours".into()],
            absent: vec![],
        },
        Case {
            name: "validate empty dir",
            args: f.validate(&f.empty_dir),
            expect: vec![s(&f.empty_dir), "expected a dataset layout".into(), "found none of them".into()],
            absent: vec![],
        },
    ]
}

/// Bad models, inputs and outputs given to infer, doctor and synth.
fn infer_doctor_synth_cases(f: &Fixture) -> Vec<Case> {
    vec![
        Case {
            name: "infer png as model",
            args: args(&[
                "infer",
                &s(&f.png_onnx),
                &s(&f.good.join("JPEGImages")),
                "--out",
                &s(&f.root.join("pred_a")),
            ]),
            expect: vec![s(&f.png_onnx), "PNG".into()],
            absent: vec![f.root.join("pred_a")],
        },
        Case {
            name: "infer missing input",
            args: args(&["infer", &s(&f.model), &s(&f.root.join("nope.jpg")), "--out", &s(&f.root.join("pred_b"))]),
            expect: vec![s(&f.root.join("nope.jpg")), "no such file".into()],
            absent: vec![f.root.join("pred_b")],
        },
        Case {
            name: "infer output is a file",
            args: args(&["infer", &s(&f.model), &s(&f.good.join("JPEGImages")), "--out", &s(&f.a_file)]),
            expect: vec![s(&f.a_file), "found a file".into()],
            absent: vec![],
        },
        Case {
            name: "infer only a corrupt image",
            args: args(&["infer", &s(&f.model), &s(&first_jpg(&f.trunc_jpeg)), "--out", &s(&f.root.join("pred_c"))]),
            expect: vec![s(&first_jpg(&f.trunc_jpeg)), "skipped".into()],
            absent: vec![f.root.join("pred_c/train_00001.png")],
        },
        Case {
            name: "doctor empty dir",
            args: f.doctor(&f.empty_dir),
            expect: vec![s(&f.empty_dir), "expected a dataset layout".into(), "found none of them".into()],
            absent: vec![],
        },
        Case {
            name: "doctor truncated weights",
            args: {
                let mut a = f.doctor(&f.good);
                a.extend(args(&["--weights", &s(&f.truncated)]));
                a
            },
            expect: vec![s(&f.truncated), "truncated".into()],
            absent: vec![],
        },
        Case {
            name: "synth into a file",
            args: args(&["synth", &s(&f.a_file), "--classes", "3", "--train", "1", "--val", "1"]),
            expect: vec![s(&f.a_file), "found a file".into()],
            absent: vec![],
        },
        Case {
            name: "synth one class",
            args: args(&["synth", &s(&f.root.join("one")), "--classes", "1"]),
            expect: vec!["--classes 1".into()],
            absent: vec![f.root.join("one")],
        },
    ]
}

#[test]
fn every_subcommand_refuses_bad_input_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(tmp.path());
    let mut cases: Vec<Case> =
        [model_cases(&f), train_cases(&f), export_validate_cases(&f), infer_doctor_synth_cases(&f)]
            .into_iter()
            .flatten()
            .collect();
    // The doctor reports bad labels as FAIL lines (exit 1) rather than refusing them.
    cases.push(Case { name: "doctor rgb mask", args: f.doctor(&f.rgb_mask), expect: vec![], absent: vec![] });

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
