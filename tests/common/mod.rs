//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use segtune::onnx::{self, ModelProto};

/// The `segtune` binary as a command, for a test that sets its environment or how it runs.
pub fn command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_segtune"))
}

/// Runs the `segtune` binary with `args`.
pub fn segtune(args: &[&str]) -> Output {
    command().args(args).output().expect("segtune runs")
}

/// A command's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a bad-input failure: exit 2, stderr one line that names `file` and says `problem`, no
/// panic.
pub fn assert_bad_input(out: &Output, file: &Path, problem: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains(&file.display().to_string()), "stderr must name {}: {err}", file.display());
    assert!(err.contains(problem), "stderr must say {problem:?}: {err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "no panic: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

/// A synthetic VOC-layout set (`segtune synth`'s shapes) at `dir`: `classes` classes, `train` and
/// `val` images of `size`² pixels, from `seed`; returns `dir`.
pub fn synth_set(dir: &Path, classes: usize, train: usize, val: usize, size: u32, seed: u64) -> PathBuf {
    let options = segtune::data::SynthOptions { classes, train, val, size, seed, ..Default::default() };
    segtune::data::synth(dir, &options).expect("synth writes the set");
    dir.to_path_buf()
}

/// The reference model shipped in `models/`.
pub fn reference_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/deeplabv3plus_mobilenetv2.onnx")
}

pub fn reference() -> ModelProto {
    onnx::read_model(&reference_path()).expect("reference model decodes")
}

/// Raw little-endian f32 bytes of an initializer.
pub fn init_bytes(t: &onnx::TensorProto) -> Vec<u8> {
    onnx::tensor_f32(t, None).expect("float initializer").iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A JSON file (a report, summary.json, a fixture) as `T`.
pub fn read_json<T: serde::de::DeserializeOwned>(path: impl AsRef<Path>) -> T {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Reads a little-endian f32 file.
pub fn read_f32(path: &Path) -> Vec<f32> {
    segtune::tensors::read_f32(path, None).expect("a raw f32 fixture")
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Writes `model` to `path` (prost encoding).
pub fn write_model(model: &ModelProto, path: &Path) {
    use prost::Message;
    std::fs::write(path, model.encode_to_vec()).expect("write model");
}

/// Replaces every value `v` at flat index `i` of initializer `name` by `f(i, v)`.
pub fn map_initializer(model: &mut ModelProto, name: &str, f: impl Fn(usize, f32) -> f32) {
    let g = model.graph.as_mut().unwrap();
    let t = g.initializer.iter_mut().find(|t| t.name() == name).unwrap_or_else(|| panic!("no initializer {name}"));
    let vals: Vec<f32> = onnx::tensor_f32(t, None).unwrap().iter().enumerate().map(|(i, &v)| f(i, v)).collect();
    t.float_data.clear();
    t.raw_data = Some(vals.iter().flat_map(|v| v.to_le_bytes()).collect());
}

/// The shipped model as torch exported it, with equal tensors shared through `Identity` nodes:
/// `segtune export` gave each formerly shared value its own initializer `NAME.segtune` and left
/// the `Identity` nodes and the tensors they copy in place; this points every consumer back to
/// the `Identity` output and drops the `.segtune` initializers. The shared tensors hold their
/// initial values (BN weight 1, bias 0, mean 0, variance 1).
pub fn identity_shared_reference() -> ModelProto {
    let mut model = reference();
    let g = model.graph.as_mut().unwrap();
    let mut repointed = 0;
    for node in g.node.iter_mut() {
        for input in node.input.iter_mut() {
            if let Some(name) = input.strip_suffix(".segtune") {
                *input = name.to_string();
                repointed += 1;
            }
        }
    }
    g.initializer.retain(|t| !t.name().ends_with(".segtune"));
    assert_eq!(repointed, 214, "the shipped model's un-shared aliases");
    model
}

/// Replaces every BatchNorm's running means `m` by `mean(m)` and running variances `v` by `var(v)`.
pub fn map_bn_statistics(model: &mut ModelProto, mean: impl Fn(f32) -> f32, var: impl Fn(f32) -> f32) {
    let bn: Vec<(String, String)> = onnx::graph(model)
        .node
        .iter()
        .filter(|n| n.op_type() == "BatchNormalization")
        .map(|n| (n.input[3].clone(), n.input[4].clone()))
        .collect();
    for (m, v) in bn {
        map_initializer(model, &m, |_, x| mean(x));
        map_initializer(model, &v, |_, x| var(x));
    }
}

/// Sets every BatchNorm's running mean to 0 and running variance to 1 (never trained).
pub fn reset_bn_statistics(model: &mut ModelProto) {
    map_bn_statistics(model, |_| 0.0, |_| 1.0);
}

fn value_info(name: &str, dims: &[i64]) -> onnx::ValueInfoProto {
    use onnx::proto::{
        TensorShapeProto, TypeProto,
        tensor_shape_proto::{Dimension, dimension::Value as D},
        type_proto,
    };
    onnx::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension { value: Some(D::DimValue(d)), ..Default::default() })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A small foreign graph: `input_dims` → Conv → Conv, no BatchNorm, nothing like a DeepLab.
pub fn two_conv_model(input_dims: &[i64]) -> ModelProto {
    use onnx::proto::{OperatorSetIdProto, TensorProto};
    let weight = |name: &str, dims: Vec<i64>| TensorProto {
        name: Some(name.into()),
        data_type: Some(1),
        raw_data: Some(vec![0u8; 4 * dims.iter().product::<i64>() as usize]),
        dims,
        ..Default::default()
    };
    let conv = |i: &str, w: &str, o: &str| onnx::NodeProto {
        op_type: Some("Conv".into()),
        name: Some(format!("conv_{o}")),
        input: vec![i.into(), w.into()],
        output: vec![o.into()],
        ..Default::default()
    };
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
        graph: Some(onnx::GraphProto {
            name: Some("two_conv".into()),
            node: vec![conv("input", "w1", "h"), conv("h", "w2", "output")],
            initializer: vec![weight("w1", vec![4, 3, 3, 3]), weight("w2", vec![2, 4, 1, 1])],
            input: vec![value_info("input", input_dims)],
            output: vec![value_info("output", &[])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A Softmax node over axis 1 (the classes of NCHW logits).
fn softmax_node(name: &str, input: &str, output: &str) -> onnx::NodeProto {
    onnx::NodeProto {
        op_type: Some("Softmax".into()),
        name: Some(name.into()),
        input: vec![input.into()],
        output: vec![output.into()],
        attribute: vec![onnx::AttributeProto {
            name: Some("axis".into()),
            i: Some(1),
            r#type: Some(2),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Appends a Softmax (axis 1) on the model's output, as the seed's model had: the graph output
/// becomes `probabilities`, produced by node `probs`.
pub fn append_softmax(model: &mut ModelProto) {
    let g = model.graph.as_mut().unwrap();
    g.node.push(softmax_node("probs", "output", "probabilities"));
    g.output[0].name = Some("probabilities".into());
}

/// Inserts a Softmax over the channels before the model's final NCHW → NHWC Transpose: what
/// tf2onnx makes of a Keras model ending in `Softmax(axis=-1)` (checked against
/// `scripts/export_keras_deeplabv3plus.py --softmax`).
pub fn insert_softmax_before_output_transpose(model: &mut ModelProto) {
    let g = model.graph.as_mut().unwrap();
    let out = g.output[0].name().to_string();
    let last = g.node.iter().position(|n| n.output.contains(&out)).unwrap();
    assert_eq!(g.node[last].op_type(), "Transpose", "tf2onnx graphs end in a Transpose to NHWC");
    let logits = g.node[last].input[0].clone();
    g.node[last].input[0] = "probabilities_nchw".into();
    g.node.insert(last, softmax_node("deeplabv3plus_mobilenetv2/probabilities/Softmax", &logits, "probabilities_nchw"));
}

/// Shifts every BatchNorm running statistic, so that each differs from the tensor an `Identity`
/// shares it with in the reference graph (the BN weight and bias, at their initial values).
pub struct ShiftStatistics(pub Vec<String>);

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

/// Checks the split of the compiled-in model `name`: `build.rs` cut it after `boundary` (the head
/// also taking the image where `reads_image`), and its frozen backbone in onnxruntime (the graph
/// `build.rs` cut, with the burn model's weights and shifted BN statistics written in) feeding
/// the generated head in burn gives the whole burn model's logits (max |Δ| ≤ 1e-4 at batch 1,
/// 64² and batch 2, 96²); the head moved back into the whole model changes none of them; the
/// shift reached the backbone; the head's inputs at 64² have the dims `dims`.
pub fn assert_split(name: &str, boundary: &[&str], reads_image: bool, dims: &[[usize; 4]]) {
    let info = segtune::model::find(name).unwrap();
    let split = info.split.unwrap_or_else(|| panic!("build.rs did not split {name}"));
    assert_eq!(split.boundary, boundary, "{name}");
    assert_eq!(split.reads_image, reads_image, "{name}");
    let found = segtune::model::with_split(info, HeadCheck(info)).expect("the model has a split");
    assert_eq!(found, dims, "{name}");
}

struct HeadCheck(&'static segtune::model::ModelInfo);

impl segtune::model::SplitFn for HeadCheck {
    type Output = Vec<[usize; 4]>;
    fn call<M: segtune::model::SegModel, H: segtune::model::Trainee>(self) -> Vec<[usize; 4]> {
        use burn::tensor::{Tensor, TensorData};
        use segtune::graph::backbone_onnx;
        use segtune::model::{Checkpoint, cpu_device, transfer};
        use segtune::validate::{compare_logits, seeded_input, to_array, to_tensor};

        let info = self.0;
        let ckpt = Checkpoint::open(Some(info.name), None).unwrap();
        let split = info.split.unwrap();
        let device = cpu_device();
        let whole: M = ckpt.load::<M>(&device).unwrap().map(&mut ShiftStatistics(vec![]));
        let head: H = transfer(&whole, info.params, H::init(&device), split.params, true).unwrap();
        let mut backbone =
            segtune::runtime::OrtModel::from_bytes(&backbone_onnx(&whole, info, &split).unwrap(), "backbone", 1)
                .unwrap();
        let mut first_dims = vec![];
        for (batch, size) in [(1, 64), (2, 96)] {
            let x = seeded_input(batch, size, &ckpt.normalization, 11);
            let mut features: Vec<Tensor<4>> = backbone
                .run_outputs(x.view())
                .unwrap()
                .into_iter()
                .map(|(s, v)| Tensor::from_data(TensorData::new(v, [s[0], s[1], s[2], s[3]]), &device))
                .collect();
            if split.reads_image {
                features.push(to_tensor(x.view(), &device));
            }
            if first_dims.is_empty() {
                first_dims = features.iter().map(|f| f.dims()).collect();
            }
            let split_logits = to_array(head.forward_features(features));
            let whole_logits = to_array(whole.logits(to_tensor(x.view(), &device)));
            assert_eq!(split_logits.shape(), whole_logits.shape());
            let (max_abs, _, _) = compare_logits(&split_logits, &whole_logits);
            assert!(max_abs <= 1e-4, "{}: batch {batch} {size}²: max |Δ| {max_abs:e}", info.name);

            let rejoined: M = transfer(&head, split.params, whole.clone(), info.params, false).unwrap();
            let rejoined_logits = to_array(rejoined.logits(to_tensor(x.view(), &device)));
            assert_eq!(rejoined_logits, whole_logits);
        }
        // Without the shift, the backbone would differ from the burn model only where the graph
        // shares tensors: check that the shift reached the backbone.
        let unshifted: M = ckpt.load(&device).unwrap();
        let mut plain =
            segtune::runtime::OrtModel::from_bytes(&backbone_onnx(&unshifted, info, &split).unwrap(), "backbone", 1)
                .unwrap();
        let x = seeded_input(1, 64, &ckpt.normalization, 11);
        let (a, b) = (backbone.run_outputs(x.view()).unwrap(), plain.run_outputs(x.view()).unwrap());
        assert!(
            a[0].1.iter().zip(&b[0].1).any(|(p, q)| (p - q).abs() > 1e-3),
            "{}: the shift did not reach the backbone",
            info.name
        );
        first_dims
    }
}
