//! Datasets as they come: Cityscapes (labelIds and trainIds), ADE20K (reduce_zero_label), binary
//! 0/255 masks and label maps, each built small with its real folder tree and id scheme from a
//! synthetic set; train, validate and doctor on each, and doctor FAILing each mistake with the
//! flag that fixes it.

mod common;

use std::path::{Path, PathBuf};

use image::GrayImage;
use segtune::data::{self, Dataset, DatasetLayout};
use segtune::doctor::{self, DoctorOptions, Status};
use segtune::labels::LabelMap;
use segtune::train::{self, BnMode, Freeze, TrainConfig};
use segtune::{export, onnx, validate};

/// A synthetic VOC-layout set of `classes` classes (background 0, objects 1.., 255 bands), 64²,
/// at `dir/synth`.
fn synth(dir: &Path, classes: usize, train: usize, val: usize) -> PathBuf {
    common::synth_set(&dir.join("synth"), classes, train, val, 64, 9)
}

/// The ids of a VOC-layout split.
fn ids(voc: &Path, split: &str) -> Vec<String> {
    std::fs::read_to_string(voc.join(format!("ImageSets/Segmentation/{split}.txt")))
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// Writes `mask` with every value `v` replaced by `f(v)`, as an 8-bit grayscale PNG.
fn write_mapped(mask: &GrayImage, f: impl Fn(u8) -> u8, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut m = mask.clone();
    for p in m.pixels_mut() {
        p[0] = f(p[0]);
    }
    m.save(path).unwrap();
}

/// A VOC-layout mask's class indices (synth writes palette PNGs).
fn mask_of(voc: &Path, id: &str) -> GrayImage {
    data::load_mask(&voc.join(format!("SegmentationClass/{id}.png")), 256).unwrap()
}

/// synth's classes 0..3 as Cityscapes labelIds: road, car, person, building; 255 unlabeled (0).
fn label_id(v: u8) -> u8 {
    match v {
        0 => 7,
        1 => 26,
        2 => 24,
        3 => 11,
        _ => 0,
    }
}

/// The same classes as Cityscapes trainIds (road 0, car 13, person 11, building 2).
fn train_id(v: u8) -> u8 {
    match v {
        0 => 0,
        1 => 13,
        2 => 11,
        3 => 2,
        _ => 255,
    }
}

/// A Cityscapes tree: `leftImg8bit/SPLIT/CITY/CITY_000000_NNNNNN_leftImg8bit.png` with
/// `gtFine/…_gtFine_labelIds.png`; the val split also has `_gtFine_labelTrainIds.png` (the
/// output of cityscapesScripts' createTrainIdLabelImgs), which wins over its labelIds.
fn cityscapes(dir: &Path) -> PathBuf {
    let voc = synth(dir, 4, 8, 2);
    let root = dir.join("cityscapes");
    for split in ["train", "val"] {
        for (i, id) in ids(&voc, split).iter().enumerate() {
            let city = ["aachen", "bremen"][i % 2];
            let name = format!("{city}_000000_{i:06}");
            let img = root.join(format!("leftImg8bit/{split}/{city}/{name}_leftImg8bit.png"));
            std::fs::create_dir_all(img.parent().unwrap()).unwrap();
            image::open(voc.join(format!("JPEGImages/{id}.jpg"))).unwrap().to_rgb8().save(&img).unwrap();
            let gt = root.join(format!("gtFine/{split}/{city}/{name}"));
            let mask = mask_of(&voc, id);
            // The val masks' labelIds are deliberately wrong: the trainIds file must be read.
            let ids: fn(u8) -> u8 = if split == "val" { |_| 33 } else { label_id };
            write_mapped(&mask, ids, &gt.with_file_name(format!("{name}_gtFine_labelIds.png")));
            if split == "val" {
                write_mapped(&mask, train_id, &gt.with_file_name(format!("{name}_gtFine_labelTrainIds.png")));
            }
        }
    }
    root
}

/// An ADE20K tree (ADEChallengeData2016): `images/{training,validation}/ADE_*.jpg` and
/// `annotations/…/ADE_*.png` whose 0 is "other" and k the k-th class: synth's class c is c + 1,
/// its 255 bands 0.
fn ade20k(dir: &Path) -> PathBuf {
    let voc = synth(dir, 4, 8, 2);
    let root = dir.join("ADEChallengeData2016");
    for (split, folder, prefix) in [("train", "training", "ADE_train"), ("val", "validation", "ADE_val")] {
        for (i, id) in ids(&voc, split).iter().enumerate() {
            let name = format!("{prefix}_{:08}", i + 1);
            let img = root.join(format!("images/{folder}/{name}.jpg"));
            std::fs::create_dir_all(img.parent().unwrap()).unwrap();
            std::fs::copy(voc.join(format!("JPEGImages/{id}.jpg")), &img).unwrap();
            let to_ade = |v: u8| if v == 255 { 0 } else { v + 1 };
            write_mapped(&mask_of(&voc, id), to_ade, &root.join(format!("annotations/{folder}/{name}.png")));
        }
    }
    root
}

/// The VOC set with every object saved as 255 (background 0): binary masks as users save them.
fn binary(dir: &Path) -> PathBuf {
    let voc = synth(dir, 2, 8, 2);
    for split in ["train", "val"] {
        for id in ids(&voc, split) {
            let m = mask_of(&voc, &id);
            write_mapped(&m, |v| if v == 0 { 0 } else { 255 }, &voc.join(format!("SegmentationClass/{id}.png")));
        }
    }
    voc
}

fn config(data: &Path, classes: usize) -> TrainConfig {
    let mut cfg = TrainConfig::new(data.to_path_buf());
    cfg.model = "tiny_deeplabv3plus".into();
    (cfg.classes, cfg.epochs, cfg.batch, cfg.crop, cfg.lr) = (classes, 1, 4, 64, Some(0.01));
    (cfg.freeze, cfg.bn) = (vec![Freeze::Backbone], BnMode::Frozen);
    cfg
}

fn doctor(cfg: &TrainConfig) -> doctor::DoctorReport {
    doctor_steps(cfg, 3)
}

fn doctor_steps(cfg: &TrainConfig, steps: usize) -> doctor::DoctorReport {
    doctor::doctor(cfg, &DoctorOptions { steps, ..Default::default() }).unwrap()
}

fn status(r: &doctor::DoctorReport, name: &str) -> Status {
    r.checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check {name}")).status
}

fn check_text(r: &doctor::DoctorReport, name: &str) -> String {
    let c = r.checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check {name}"));
    format!("{} | {} | {:?}", c.measured, c.fix, c.flags)
}

/// Every mask value of a split as training reads it.
fn classes_read(ds: &Dataset, classes: usize) -> std::collections::BTreeSet<u8> {
    ds.items.iter().flat_map(|i| data::load_item(i, classes).unwrap().1.into_raw()).collect()
}

#[test]
fn cityscapes_label_ids_become_train_ids_and_train_ids_files_win() {
    let dir = tempfile::tempdir().unwrap();
    let root = cityscapes(dir.path());
    let train = Dataset::open(&root, "train").unwrap();
    assert_eq!(train.layout, DatasetLayout::Cityscapes);
    assert_eq!(train.items.len(), 8);
    assert!(train.items[0].mask.display().to_string().ends_with("_gtFine_labelIds.png"));
    assert_eq!(classes_read(&train, 19), [0, 2, 11, 13, 255].into());
    let val = Dataset::open(&root, "val").unwrap();
    assert!(val.items.iter().all(|i| i.mask.display().to_string().ends_with("_gtFine_labelTrainIds.png")));
    assert!(classes_read(&val, 19).is_subset(&[0, 2, 11, 13, 255].into()), "the trainIds, not labelId 33 → 18");
    assert_eq!(data::class_names(&root, val.layout, 19, None).unwrap()[13], "car");

    // train, export (label map and layout in the metadata), validate with the layout's names.
    let run = dir.path().join("run");
    let mut cfg = config(&root, 19);
    cfg.dataset.label_map = "13:13".parse().unwrap();
    let summary = train::train(cfg.clone(), &run).unwrap();
    assert_eq!(summary.history.len(), 1);
    let saved: serde_json::Value = common::read_json(run.join("config.json"));
    assert_eq!((saved["layout"].as_str(), saved["label_map"].as_str()), (Some("auto"), Some("identity")));
    let out = dir.path().join("export.onnx");
    export::export(&run, &out).unwrap();
    let meta = onnx::metadata(&onnx::read_model(&out).unwrap());
    assert_eq!(meta["segtune.dataset_layout"], "cityscapes");
    assert!(meta["segtune.class_names"].starts_with("road,sidewalk,building"), "{}", meta["segtune.class_names"]);
    let v = validate::validate_onnx(&out, &root, "val", None, 1).unwrap();
    assert_eq!(v.class_names[13], "car");
    assert!((v.miou - summary.history[0].val_miou).abs() < 1e-3, "{} vs {}", v.miou, summary.history[0].val_miou);

    assert_eq!(status(&doctor(&cfg), "labels.range"), Status::Pass);
}

#[test]
fn doctor_names_the_map_for_cityscapes_label_ids_outside_their_layout() {
    let dir = tempfile::tempdir().unwrap();
    let root = cityscapes(dir.path());
    // The same labelIds as folder pairs: segtune cannot know they are labelIds.
    let pairs = dir.path().join("pairs");
    for split in ["train", "val"] {
        for item in Dataset::open(&root, split).unwrap().items {
            let img = pairs.join(format!("{split}/images/{}.png", item.id));
            std::fs::create_dir_all(img.parent().unwrap()).unwrap();
            std::fs::copy(&item.image, &img).unwrap();
            let labels = item.mask.display().to_string().replace("labelTrainIds", "labelIds");
            let masks = pairs.join(format!("{split}/masks/{}.png", item.id));
            std::fs::create_dir_all(masks.parent().unwrap()).unwrap();
            std::fs::copy(labels, masks).unwrap();
        }
    }
    let cfg = config(&pairs, 19);
    let r = doctor(&cfg);
    assert_eq!(status(&r, "labels.encoding"), Status::Fail, "{}", check_text(&r, "labels.encoding"));
    assert!(check_text(&r, "labels.encoding").contains("Cityscapes labelIds"));
    let cmd = r.suggested_command.clone().unwrap();
    assert!(cmd.contains("--label-map cityscapes") && !cmd.contains("--classes 34"), "{cmd}");
    // With the map it names, the labels pass.
    let mut fixed = cfg.clone();
    fixed.dataset.label_map = LabelMap::cityscapes();
    let r = doctor(&fixed);
    assert_eq!(status(&r, "labels.range"), Status::Pass, "{}", check_text(&r, "labels.range"));
    assert!(r.checks.iter().all(|c| c.name != "labels.encoding"));
}

#[test]
fn ade20k_reduces_the_zero_label_and_doctor_catches_it_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let root = ade20k(dir.path());
    let train = Dataset::open(&root, "train").unwrap();
    assert_eq!((train.layout, train.items.len()), (DatasetLayout::Ade20k, 8));
    assert!(train.items[0].image.display().to_string().contains("images/training/ADE_train_00000001.jpg"));
    // 0 ("other") → 255, k → k − 1: synth's own classes again.
    assert_eq!(classes_read(&train, 4), [0, 1, 2, 3, 255].into());
    assert_eq!(data::class_names(&root, train.layout, 150, None).unwrap()[..3], ["wall", "building", "sky"]);
    let run = dir.path().join("run");
    let summary = train::train(config(&root, 4), &run).unwrap();
    assert_eq!(summary.history.len(), 1);
    let out = dir.path().join("export.onnx");
    export::export(&run, &out).unwrap();
    let v = validate::validate_onnx(&out, &root, "val", None, 1).unwrap();
    assert!((v.miou - summary.history[0].val_miou).abs() < 1e-3);

    // Read as plain folder pairs (--layout folders), the same annotations are off by one.
    let mut cfg = config(&root, 4);
    cfg.dataset.layout = DatasetLayout::Folders;
    let pairs = dir.path().join("ade_pairs");
    for (split, folder) in [("train", "training"), ("val", "validation")] {
        for sub in ["images", "annotations"] {
            let to = pairs.join(split).join(if sub == "images" { "images" } else { "masks" });
            std::fs::create_dir_all(&to).unwrap();
            for f in std::fs::read_dir(root.join(sub).join(folder)).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
            }
        }
    }
    cfg.data = pairs;
    let r = doctor(&cfg);
    assert_eq!(status(&r, "labels.zero_label"), Status::Fail, "{}", check_text(&r, "labels.zero_label"));
    assert!(r.suggested_command.clone().unwrap().contains("--label-map reduce_zero_label"));
    cfg.dataset.label_map = LabelMap::reduce_zero_label();
    let r = doctor(&cfg);
    assert!(r.checks.iter().all(|c| c.name != "labels.zero_label"));
    assert_eq!(status(&r, "labels.range"), Status::Pass);
}

#[test]
fn binary_masks_saved_as_0_and_255_fail_until_255_is_mapped_to_class_1() {
    let dir = tempfile::tempdir().unwrap();
    let voc = binary(dir.path());
    let cfg = config(&voc, 2);
    let r = doctor(&cfg);
    assert_eq!(status(&r, "labels.binary"), Status::Fail, "{}", check_text(&r, "labels.binary"));
    // The overfit check no longer passes a loss that falls because one class is left.
    assert_eq!(status(&r, "train.overfit"), Status::Fail, "{}", check_text(&r, "train.overfit"));
    assert!(check_text(&r, "train.overfit").contains("hold class [0] only"), "{}", check_text(&r, "train.overfit"));
    assert!(r.summary[0].contains("labels.binary"), "{:?}", r.summary);
    let cmd = r.suggested_command.clone().unwrap();
    assert!(cmd.contains("--label-map 255:1"), "{cmd}");

    let mut fixed = cfg.clone();
    fixed.dataset.label_map = "255:1".parse().unwrap();
    let r = doctor_steps(&fixed, 25);
    for name in ["labels.range", "labels.coverage", "train.overfit"] {
        assert_eq!(status(&r, name), Status::Pass, "{name}: {}", check_text(&r, name));
    }
    assert!(r.checks.iter().all(|c| c.name != "labels.binary"));
    // Training reads the map too, and keeps it in config.json.
    let run = dir.path().join("run");
    let summary = train::train(fixed, &run).unwrap();
    assert!(summary.history[0].per_class_iou[1].is_some(), "class 1 is seen in val");
    let saved = std::fs::read_to_string(run.join("config.json")).unwrap();
    assert!(saved.contains("\"label_map\": \"255:1\""), "{saved}");
}

#[test]
fn one_class_holding_99_percent_of_the_pixels_is_warned_with_class_weights() {
    let dir = tempfile::tempdir().unwrap();
    let voc = synth(dir.path(), 3, 4, 2);
    // Objects shrunk to a 3×3 patch per image: class 0 holds > 99 % of the labelled pixels.
    for split in ["train", "val"] {
        for id in ids(&voc, split) {
            let path = voc.join(format!("SegmentationClass/{id}.png"));
            let mut m = GrayImage::new(64, 64);
            for (x, y) in (0..3).flat_map(|x| (0..3).map(move |y| (x, y))) {
                m.put_pixel(x, y, image::Luma([1 + (x % 2) as u8]));
            }
            m.save(path).unwrap();
        }
    }
    let r = doctor(&config(&voc, 3));
    assert_eq!(status(&r, "labels.balance"), Status::Warn, "{}", check_text(&r, "labels.balance"));
    let text = check_text(&r, "labels.balance");
    assert!(text.contains("class 0 holds 99.") && text.contains("--class-weights"), "{text}");
}

#[test]
fn label_map_flags_reach_train_validate_and_doctor_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let voc = binary(dir.path());
    let run = dir.path().join("run");
    let d = voc.to_str().unwrap();
    let base = ["--data", d, "--model", "tiny_deeplabv3plus", "--classes", "2", "--crop", "64", "--batch", "4"];
    let out = common::segtune(
        &[&["train", "--out", run.to_str().unwrap(), "--epochs", "1", "--label-map", "255:1"][..], &base].concat(),
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let exported = dir.path().join("m.onnx");
    assert!(common::segtune(&["export", run.to_str().unwrap(), "--out", exported.to_str().unwrap()]).status.success());
    assert_eq!(onnx::metadata(&onnx::read_model(&exported).unwrap())["segtune.label_map"], "255:1");
    let with = common::segtune(&[
        "validate",
        exported.to_str().unwrap(),
        "--data",
        d,
        "--label-map",
        "255:1",
        "--json",
        dir.path().join("v.json").to_str().unwrap(),
    ]);
    assert!(with.status.success(), "{}", common::stderr(&with));
    let v: serde_json::Value = common::read_json(dir.path().join("v.json"));
    assert!(v["per_class_iou"][1].is_number(), "class 1 is scored: {v}");
    let out = common::segtune(&[&["doctor", "--steps", "2"][..], &base].concat());
    assert_eq!(out.status.code(), Some(1), "doctor fails without the map");
    assert!(String::from_utf8_lossy(&out.stdout).contains("--label-map 255:1"));
    let bad = common::segtune(&[&["doctor", "--label-map", "255-1:0"][..], &base].concat());
    assert_eq!(bad.status.code(), Some(2), "{}", common::stderr(&bad));
    assert!(common::stderr(&bad).contains("range 255-1 is empty"), "{}", common::stderr(&bad));
}
