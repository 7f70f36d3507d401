//! Fuzz target: the ONNX reader, the inspector and architecture matching on arbitrary bytes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.onnx");
    if let Ok(model) = segtune::onnx::decode_model(data, path) {
        let report = segtune::onnx::inspect(&model, path);
        let _ = report.to_string();
        let _ = segtune::model::check_input_rank(&model, path);
        for t in &segtune::onnx::graph(&model).initializer {
            let _ = segtune::onnx::tensor_f32(t, Some(Path::new("/nonexistent-fuzz-dir")));
        }
        let _ = segtune::model::Normalization::from_metadata(&segtune::onnx::metadata(&model));
    }
});
