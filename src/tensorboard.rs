//! TensorBoard event files (`train --tensorboard`): each epoch's scalars and snapshot written as
//! TFRecord-framed `tensorflow.Event` protobufs into `RUN_DIR/tensorboard/`, which
//! `tensorboard --logdir RUN_DIR/tensorboard` reads, and a reader for them (CRCs checked).
//!
//! A record is the data's length (u64, little-endian), the masked CRC-32C of those 8 bytes, the
//! data, and the data's masked CRC-32C; the first event of a file carries its version,
//! `brain.Event:2`.

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::error::{Error, Result};

/// `tensorflow.Event` (the fields segtune writes).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "event::What", tags = "3, 5")]
    pub what: Option<event::What>,
}

pub mod event {
    /// `Event.what`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum What {
        #[prost(string, tag = "3")]
        FileVersion(String),
        #[prost(message, tag = "5")]
        Summary(super::Summary),
    }
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(oneof = "summary_value::Value", tags = "2, 4")]
    pub value: Option<summary_value::Value>,
}

pub mod summary_value {
    /// `Summary.Value.value`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(float, tag = "2")]
        SimpleValue(f32),
        #[prost(message, tag = "4")]
        Image(super::Image),
    }
}

/// `tensorflow.Summary.Image`: an encoded (PNG) image.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Image {
    #[prost(int32, tag = "1")]
    pub height: i32,
    #[prost(int32, tag = "2")]
    pub width: i32,
    #[prost(int32, tag = "3")]
    pub colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

/// CRC-32C (Castagnoli), bitwise-reflected, as TFRecord uses it.
fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        std::array::from_fn(|i| (0..8).fold(i as u32, |c, _| if c & 1 == 1 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 }))
    });
    !data.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

/// TFRecord's masked CRC.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// An event file being appended to.
pub struct EventWriter {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl EventWriter {
    /// A new event file in `dir` (created), `events.out.tfevents.SECONDS.segtune`, its version
    /// event written. Each run and each resume gets a file of its own; TensorBoard reads them all.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let (secs, pid) = (now() as u64, std::process::id());
        let path = dir.join(format!("events.out.tfevents.{secs}.segtune.{pid}"));
        let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = EventWriter { path, file: std::io::BufWriter::new(file) };
        w.write(&Event { wall_time: now(), step: 0, what: Some(event::What::FileVersion("brain.Event:2".into())) })?;
        Ok(w)
    }

    fn write(&mut self, event: &Event) -> Result<()> {
        let data = event.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        let io = |e| Error::io(&self.path, e);
        self.file.write_all(&len).map_err(io)?;
        self.file.write_all(&masked_crc(&len).to_le_bytes()).map_err(io)?;
        self.file.write_all(&data).map_err(io)?;
        self.file.write_all(&masked_crc(&data).to_le_bytes()).map_err(io)?;
        self.file.flush().map_err(io)
    }

    fn summary(&mut self, step: i64, value: Vec<SummaryValue>) -> Result<()> {
        self.write(&Event { wall_time: now(), step, what: Some(event::What::Summary(Summary { value })) })
    }

    /// Scalars `(tag, value)` at `step`.
    pub fn scalars(&mut self, step: i64, scalars: &[(&str, f64)]) -> Result<()> {
        let value = scalars
            .iter()
            .map(|(tag, v)| SummaryValue {
                tag: tag.to_string(),
                value: Some(summary_value::Value::SimpleValue(*v as f32)),
            })
            .collect();
        self.summary(step, value)
    }

    /// A PNG of `width × height` RGB pixels as image `tag` at `step`.
    pub fn png(&mut self, step: i64, tag: &str, png: Vec<u8>, (width, height): (u32, u32)) -> Result<()> {
        let image = Image { height: height as i32, width: width as i32, colorspace: 3, encoded_image_string: png };
        let value = SummaryValue { tag: tag.into(), value: Some(summary_value::Value::Image(image)) };
        self.summary(step, vec![value])
    }
}

/// Every event of an event file, each record's CRCs checked.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |what: String| Error::bad_file(path, format!("expected TensorBoard event records: {what}"));
    let mut events = vec![];
    let mut at = 0usize;
    while at < bytes.len() {
        let header = bytes.get(at..at + 12).ok_or_else(|| bad(format!("a truncated header at byte {at}")))?;
        let len_bytes: [u8; 8] = header[..8].try_into().expect("8 bytes");
        if u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) != masked_crc(&len_bytes) {
            return Err(bad(format!("a length CRC that does not match at byte {at}")));
        }
        let len = usize::try_from(u64::from_le_bytes(len_bytes)).map_err(|_| bad("an absurd length".into()))?;
        let end = at.checked_add(12 + len + 4).filter(|&e| e <= bytes.len());
        let end = end.ok_or_else(|| bad(format!("a record of {len} bytes past the end at byte {at}")))?;
        let data = &bytes[at + 12..at + 12 + len];
        if u32::from_le_bytes(bytes[end - 4..end].try_into().expect("4 bytes")) != masked_crc(data) {
            return Err(bad(format!("a data CRC that does not match at byte {at}")));
        }
        events.push(Event::decode(data).map_err(|e| bad(format!("an event that does not decode: {e}")))?);
        at = end;
    }
    Ok(events)
}

/// The scalar `tag` by step, over the event files of `dir` (in name order).
pub fn read_scalars(dir: &Path, tag: &str) -> Result<Vec<(i64, f32)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("events.out.tfevents.")))
        .collect();
    files.sort();
    let mut out = vec![];
    for f in files {
        for e in read_events(&f)? {
            let Some(event::What::Summary(s)) = e.what else { continue };
            for v in s.value.iter().filter(|v| v.tag == tag) {
                if let Some(summary_value::Value::SimpleValue(x)) = v.value {
                    out.push((e.step, x));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnolis() {
        // The check value of CRC-32C and RFC 3720's test vector of 32 zero bytes.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn records_round_trip_and_a_flipped_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalars(1, &[("val/miou", 0.5), ("train/loss", 1.25)]).unwrap();
        w.scalars(2, &[("val/miou", 0.75)]).unwrap();
        w.png(2, "snapshot", vec![1, 2, 3], (4, 5)).unwrap();
        let path = w.path.clone();
        drop(w);
        let events = read_events(&path).unwrap();
        assert_eq!(events.len(), 4);
        assert_eq!(events[0].what, Some(event::What::FileVersion("brain.Event:2".into())));
        assert_eq!(read_scalars(dir.path(), "val/miou").unwrap(), [(1, 0.5), (2, 0.75)]);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let e = read_events(&path).unwrap_err().to_string();
        assert!(e.contains("CRC that does not match"), "{e}");
    }
}
