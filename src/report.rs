//! A validation report a person opens (`validate --report DIR`): the confusion-matrix heatmap,
//! per-class IoU bars, the k images the model gets most wrong as image | truth | prediction,
//! and an `index.html` that shows them with the scores.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::data;
use crate::error::Result;
use crate::plots;

/// The `k` images with the lowest mIoU seen so far, each with its picture.
pub struct Worst {
    k: usize,
    /// `(mIoU, id, image | truth | prediction)`, best last.
    items: Vec<(f64, String, RgbImage)>,
}

impl Worst {
    pub fn new(k: usize) -> Self {
        Worst { k, items: Vec::with_capacity(k + 1) }
    }

    /// Offers an image scoring `miou`; `panel` is drawn only if it ranks among the worst `k`.
    pub fn offer(&mut self, miou: f64, id: &str, panel: impl FnOnce() -> RgbImage) {
        if self.k == 0 || (self.items.len() == self.k && self.items.last().is_some_and(|w| w.0 <= miou)) {
            return;
        }
        let at = self.items.partition_point(|w| w.0 <= miou);
        self.items.insert(at, (miou, id.to_string(), panel()));
        self.items.truncate(self.k);
    }
}

/// What the report shows.
pub struct Report<'a> {
    /// One line naming the model, data and split.
    pub title: String,
    /// `(name, value)` rows of the summary table.
    pub summary: Vec<(String, String)>,
    pub class_names: &'a [String],
    pub per_class_iou: &'a [Option<f64>],
    /// `counts[truth][prediction]`.
    pub confusion: Vec<Vec<u64>>,
    pub worst: Worst,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Writes `dir/confusion.png`, `dir/iou.png`, `dir/worst/NN_ID.png` and `dir/index.html`
/// (each atomically); returns the index's path.
pub fn write(dir: &Path, report: Report<'_>) -> Result<PathBuf> {
    plots::write_png(&dir.join("confusion.png"), &plots::confusion_heatmap(&report.confusion, report.class_names)?)?;
    plots::write_png(&dir.join("iou.png"), &plots::iou_bars(report.per_class_iou, report.class_names)?)?;
    let mut worst = String::new();
    let mut written = vec![];
    for (i, (miou, id, panel)) in report.worst.items.iter().enumerate() {
        let safe: String =
            id.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
        let file = format!("worst/{i:02}_{safe}.png");
        plots::write_png(&dir.join(&file), panel)?;
        written.push(dir.join(&file));
        let _ = writeln!(
            worst,
            "<figure><img src=\"{file}\" alt=\"{id}\"><figcaption>{id}: mIoU {miou:.4}</figcaption></figure>",
            id = escape(id)
        );
    }
    let mut rows = String::new();
    for (k, v) in &report.summary {
        let _ = writeln!(rows, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v));
    }
    let mut classes = String::new();
    for (i, (name, iou)) in report.class_names.iter().zip(report.per_class_iou).enumerate() {
        let iou = iou.map_or("absent".to_string(), |v| format!("{v:.4}"));
        let _ = writeln!(classes, "<tr><td>{i}</td><td>{}</td><td>{iou}</td></tr>", escape(name));
    }
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>\n<style>body{{font-family:sans-serif;\
         margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}} \
         figure{{display:inline-block;margin:8px}} img{{max-width:100%;image-rendering:pixelated}}</style></head>\n<body>\n\
         <h1>{title}</h1>\n<table>\n{rows}</table>\n<h2>Per class</h2>\n<img src=\"iou.png\" alt=\"IoU per class\">\n\
         <table>\n<tr><th>id</th><th>class</th><th>IoU</th></tr>\n{classes}</table>\n<h2>Confusion matrix</h2>\n\
         <img src=\"confusion.png\" alt=\"confusion matrix\">\n<h2>The {n} images with the lowest mIoU \
         (image | ground truth | prediction)</h2>\n{worst}</body></html>\n",
        title = escape(&report.title),
        n = report.worst.items.len(),
    );
    let index = dir.join("index.html");
    data::write_atomic(&index, |f| std::io::Write::write_all(f, html.as_bytes()))?;
    remove_stale(&dir.join("worst"), &written);
    Ok(index)
}

/// Removes the pictures an earlier report wrote into `worst/` (`NN_ID.png`) that this one did not.
fn remove_stale(worst: &Path, written: &[PathBuf]) {
    let Ok(entries) = std::fs::read_dir(worst) else { return };
    for path in entries.flatten().map(|e| e.path()) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ours = name.len() > 3 && name.as_bytes()[..2].iter().all(u8::is_ascii_digit) && name.as_bytes()[2] == b'_';
        if ours && name.ends_with(".png") && !written.contains(&path) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_keeps_the_k_lowest_and_draws_only_those() {
        let mut w = Worst::new(2);
        let drawn = std::cell::Cell::new(0);
        let panel = || {
            drawn.set(drawn.get() + 1);
            RgbImage::new(1, 1)
        };
        for (m, id) in [(0.9, "a"), (0.2, "b"), (0.5, "c"), (0.95, "d"), (0.1, "e")] {
            w.offer(m, id, panel);
        }
        let ids: Vec<&str> = w.items.iter().map(|i| i.1.as_str()).collect();
        assert_eq!(ids, ["e", "b"]);
        assert_eq!(drawn.get(), 4, "d (0.95) was never drawn");
    }
}
