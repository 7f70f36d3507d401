//! Fuzz target: the mask decoder and its validation (21 classes), plus the doctor's raw reading.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.png");
    let _ = segtune::data::decode_mask(data, path, 21);
    if let Ok(raw) = segtune::data::decode_mask_raw(data, path) {
        assert_eq!(raw.values.len(), raw.width as usize * raw.height as usize * raw.channels);
    }
});
