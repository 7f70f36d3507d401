//! Pictures a person reads, drawn with plotters in the bundled DejaVu Sans (no system font
//! needed): the training curves (`curves.png`: losses; mIoU and pixel accuracy, with axes,
//! ticks, labels, legends and titles), validation's confusion-matrix heatmap and per-class IoU
//! bars, and image | ground truth | prediction panels (each epoch's snapshot, the worst images of
//! a validation report).

use std::path::Path;

use image::{GrayImage, Rgb, RgbImage};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::data::{self, Batch};
use crate::error::{Error, Result};
use crate::layout::{Layout, Normalization};
use crate::rundir::EpochMetrics;

/// The font every picture's text is set in (DejaVu Sans, assets/fonts, its licence beside it).
const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            panic!("the bundled font assets/fonts/DejaVuSans.ttf does not parse");
        }
    });
}

/// Draws into a `w × h` white image with `draw`, which gets the drawing area.
fn draw(
    (w, h): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> std::result::Result<(), String>,
) -> Result<RgbImage> {
    register_font();
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root).map_err(|e| Error::Runtime(format!("drawing a plot: {e}")))?;
        root.present().map_err(|e| Error::Runtime(format!("drawing a plot: {e}")))?;
    }
    Ok(RgbImage::from_raw(w, h, buf).expect("the buffer holds w × h RGB pixels"))
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// One panel of curves over the epochs: `series` as `(label, colour, values)`, the y axis from
/// 0 to `y_max`.
fn curves_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    y_label: &str,
    y_max: f64,
    series: &[(&str, RGBColor, Vec<f64>)],
) -> std::result::Result<(), String> {
    let epochs = series.first().map_or(1, |s| s.2.len()).max(2);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(1f64..epochs as f64, 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_label)
        .x_labels(epochs.min(10))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    for (label, colour, values) in series {
        let colour = *colour;
        let points: Vec<(f64, f64)> = values.iter().enumerate().map(|(i, &v)| ((i + 1) as f64, v)).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(err)?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)
}

/// `curves.png`: train and val loss per epoch; val mIoU and pixel accuracy per epoch on [0, 1].
pub fn plot_curves(history: &[EpochMetrics]) -> Result<RgbImage> {
    let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
    let max_loss = history.iter().flat_map(|m| [m.train_loss, m.val_loss]).map(finite).fold(1e-6, f64::max) * 1.1;
    let get = |f: fn(&EpochMetrics) -> f64| history.iter().map(|m| finite(f(m))).collect::<Vec<f64>>();
    draw((1000, 400), |root| {
        let (left, right) = root.split_horizontally(500);
        curves_panel(
            &left,
            "loss",
            "loss (the run's --loss)",
            max_loss,
            &[
                ("train", RGBColor(40, 80, 220), get(|m| m.train_loss)),
                ("val", RGBColor(220, 50, 50), get(|m| m.val_loss)),
            ],
        )?;
        curves_panel(
            &right,
            "validation",
            "score",
            1.0,
            &[
                ("mIoU", RGBColor(30, 150, 60), get(|m| m.val_miou)),
                ("pixel accuracy", RGBColor(150, 90, 20), get(|m| m.val_pixel_accuracy)),
            ],
        )
    })
}

/// Room for the longest of `labels` in 12-px text, in pixels (at least `min`).
fn name_room(labels: &[String], min: u32) -> u32 {
    let longest = labels.iter().map(|n| n.chars().count()).max().unwrap_or(0) as u32;
    (12 + 7 * longest).clamp(min, 260)
}

/// Class `i`'s name, or its id where the list has none.
fn label(names: &[String], i: usize) -> String {
    names.get(i).cloned().unwrap_or_else(|| i.to_string())
}

/// A confusion-matrix heatmap: row (ground truth) normalized, each cell's share written in it;
/// class names on the rows, and on the columns too where they fit (else the class ids, which
/// the row names then carry).
pub fn confusion_heatmap(counts: &[Vec<u64>], names: &[String]) -> Result<RgbImage> {
    let k = counts.len().max(1);
    let side = (44 * k as u32).clamp(300, 1300);
    let fits = 12 + 7 * names.iter().map(|n| n.chars().count()).max().unwrap_or(0) as u32 <= side / k as u32;
    let row_names: Vec<String> =
        (0..k).map(|i| if fits { label(names, i) } else { format!("{} ({i})", label(names, i)) }).collect();
    let room = name_room(&row_names, 60);
    draw((side + room + 60, side + 110), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("confusion matrix (rows: ground truth, normalized)", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(50)
            .y_label_area_size(room + 20)
            .build_cartesian_2d((0..k - 1).into_segmented(), (0..k - 1).into_segmented())
            .map_err(err)?;
        // Row t of the matrix is drawn at y = k − 1 − t: the first class on top.
        let column = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) if *i < k => {
                if fits {
                    label(names, *i)
                } else {
                    i.to_string()
                }
            }
            _ => String::new(),
        };
        let row = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) if *i < k => row_names[k - 1 - i].clone(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(k)
            .y_labels(k)
            .x_label_formatter(&column)
            .y_label_formatter(&row)
            .x_desc(if fits { "prediction" } else { "prediction (class id)" })
            .y_desc("ground truth")
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(err)?;
        for (t, row) in counts.iter().enumerate() {
            let total = row.iter().sum::<u64>().max(1) as f64;
            for (p, &c) in row.iter().enumerate() {
                draw_cell(&mut chart, (p, k - 1 - t), c as f64 / total, k)?;
            }
        }
        Ok(())
    })
}

/// The class axis of a chart: one segment per class.
type Classes = plotters::coord::ranged1d::SegmentedCoord<plotters::coord::types::RangedCoordusize>;

/// One heatmap cell at segment `(x, y)`, shaded by `share`, its value written where it fits.
fn draw_cell(
    chart: &mut ChartContext<'_, BitMapBackend<'_>, Cartesian2d<Classes, Classes>>,
    (x, y): (usize, usize),
    share: f64,
    k: usize,
) -> std::result::Result<(), String> {
    let end = |i: usize| if i + 1 >= k { SegmentValue::Last } else { SegmentValue::Exact(i + 1) };
    let cell = [(SegmentValue::Exact(x), SegmentValue::Exact(y)), (end(x), end(y))];
    let shade = (255.0 * (1.0 - share)) as u8;
    chart.draw_series(std::iter::once(Rectangle::new(cell, RGBColor(shade, shade, 255).filled()))).map_err(err)?;
    if k <= 24 {
        let colour = if share > 0.5 { WHITE } else { BLACK };
        let style =
            TextStyle::from(("sans-serif", 11).into_font()).color(&colour).pos(Pos::new(HPos::Center, VPos::Center));
        let at = (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y));
        chart.draw_series(std::iter::once(Text::new(format!("{share:.2}"), at, style))).map_err(err)?;
    }
    Ok(())
}

/// Per-class IoU as horizontal bars, the first class on top, each with its value (a class
/// absent from ground truth and prediction has no bar and says so).
pub fn iou_bars(iou: &[Option<f64>], names: &[String]) -> Result<RgbImage> {
    let k = iou.len().max(1);
    let room = name_room(names, 60);
    draw((room + 520, (26 * k as u32).clamp(200, 1600) + 100), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("IoU per class", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(room + 10)
            .build_cartesian_2d(0f64..1f64, (0..k - 1).into_segmented())
            .map_err(err)?;
        let row = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) if *i < k => label(names, k - 1 - i),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(k)
            .y_label_formatter(&row)
            .x_desc("IoU")
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(err)?;
        let bars = iou.iter().enumerate().filter_map(|(i, v)| v.map(|v| (k - 1 - i, v)));
        chart
            .draw_series(Histogram::horizontal(&chart).style(RGBColor(40, 110, 200).filled()).margin(3).data(bars))
            .map_err(err)?;
        // The value right of a short bar, inside a long one.
        let font = || TextStyle::from(("sans-serif", 11).into_font());
        let values = iou.iter().enumerate().map(|(i, v)| {
            let at = |x: f64| (x, SegmentValue::CenterOf(k - 1 - i));
            match *v {
                Some(v) if v > 0.8 => Text::new(
                    format!("{v:.3}"),
                    at(v - 0.01),
                    font().color(&WHITE).pos(Pos::new(HPos::Right, VPos::Center)),
                ),
                v => {
                    let text = v.map_or("absent".to_string(), |v| format!("{v:.3}"));
                    Text::new(text, at(v.unwrap_or(0.0) + 0.01), font().pos(Pos::new(HPos::Left, VPos::Center)))
                }
            }
        });
        chart.draw_series(values).map_err(err)?;
        Ok(())
    })
}

/// Image | ground truth | prediction side by side (255 = ignore shown white), VOC palette.
pub fn panel(image: &RgbImage, truth: &GrayImage, pred: &GrayImage) -> RgbImage {
    let (w, h) = image.dimensions();
    let palette = data::voc_palette();
    let colour = |v: u8| if v == crate::IGNORE_INDEX { Rgb([255, 255, 255]) } else { Rgb(palette[v as usize]) };
    RgbImage::from_fn(3 * w, h, |x, y| match x / w {
        0 => *image.get_pixel(x, y),
        1 => colour(truth.get_pixel(x - w, y)[0]),
        _ => colour(pred.get_pixel(x - 2 * w, y)[0]),
    })
}

/// The first image of a batch as 8-bit RGB again (its normalization undone).
pub fn batch_image(batch: &Batch, norm: &Normalization) -> RgbImage {
    let (h, w) = (batch.h, batch.w);
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let (x, y) = (x as usize, y as usize);
        Rgb(std::array::from_fn(|c| {
            let idx = match batch.layout {
                Layout::Nchw => (c * h + y) * w + x,
                Layout::Nhwc => (y * w + x) * 3 + c,
            };
            ((batch.images[idx] * norm.std[c] + norm.mean[c]) * 255.0).clamp(0.0, 255.0).round() as u8
        }))
    })
}

/// Image | ground truth | prediction of the first image of `batch`.
pub fn write_snapshot(path: &Path, batch: &Batch, pred: &[u8], norm: &Normalization) -> Result<()> {
    let (w, h) = (batch.w as u32, batch.h as u32);
    let n = (w * h) as usize;
    let truth = GrayImage::from_raw(w, h, batch.masks[..n].to_vec()).expect("a batch's first mask");
    let pred = GrayImage::from_raw(w, h, pred[..n].to_vec()).expect("a batch's first prediction");
    write_png(path, &panel(&batch_image(batch, norm), &truth, &pred))
}

/// Writes a PNG atomically, creating its folder.
pub fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    data::write_atomic(path, |f| img.write_to(f, image::ImageFormat::Png).map_err(std::io::Error::other))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(epoch: usize, loss: f64, miou: f64) -> EpochMetrics {
        EpochMetrics {
            epoch,
            train_loss: loss,
            val_loss: loss * 1.2,
            val_miou: miou,
            val_pixel_accuracy: miou + 0.1,
            lr: 0.01,
            per_class_iou: vec![Some(miou)],
            images_per_s: 1.0,
            data_wait: 0.0,
            step_ms_median: 1.0,
            seconds: 1.0,
        }
    }

    /// The curves carry text (axis labels, ticks, legends, titles): far more dark pixels than the
    /// four lines alone, in both panels; the lines are in their colours.
    #[test]
    fn curves_have_axes_labels_and_legends() {
        let history: Vec<EpochMetrics> = (1..=5).map(|e| metrics(e, 2.0 / e as f64, 0.15 * e as f64)).collect();
        let img = plot_curves(&history).unwrap();
        assert_eq!(img.dimensions(), (1000, 400));
        let dark = |x0: u32, x1: u32| {
            (x0..x1).flat_map(|x| (0..400).map(move |y| (x, y))).filter(|&(x, y)| img.get_pixel(x, y)[0] < 80).count()
        };
        assert!(dark(0, 500) > 2000 && dark(500, 1000) > 2000, "{} {}", dark(0, 500), dark(500, 1000));
        let has = |c: [u8; 3]| img.pixels().filter(|p| p.0 == c).count() > 50;
        assert!(has([40, 80, 220]) && has([220, 50, 50]) && has([30, 150, 60]) && has([150, 90, 20]));
        // One epoch draws too.
        assert!(plot_curves(&history[..1]).is_ok());
    }

    #[test]
    fn report_pictures_draw() {
        let names: Vec<String> = ["background", "disc", "square"].iter().map(|s| s.to_string()).collect();
        let heat = confusion_heatmap(&[vec![90, 5, 5], vec![10, 80, 10], vec![0, 0, 100]], &names).unwrap();
        assert!(heat.width() >= 360 && heat.pixels().any(|p| p.0 == [25, 25, 255] || p.0[2] == 255 && p.0[0] < 60));
        assert!(heat.pixels().any(|p| p.0 == [0, 0, 255]), "the cell holding all of its row is full blue");
        let bars = iou_bars(&[Some(0.9), None, Some(0.4)], &names).unwrap();
        // Each row's bar-coloured pixels: two bar lengths, in the ratio of their IoUs.
        let mut lengths: Vec<u32> = (0..bars.height())
            .map(|y| (0..bars.width()).filter(|&x| bars.get_pixel(x, y).0 == [40, 110, 200]).count() as u32)
            .filter(|&n| n > 0)
            .collect();
        lengths.sort();
        lengths.dedup();
        let (short, long) = (lengths[0] as f64, *lengths.last().unwrap() as f64);
        assert!((long / short - 0.9 / 0.4).abs() < 0.1, "bars {long} and {short} px");
        let image = RgbImage::from_pixel(4, 2, Rgb([9, 9, 9]));
        let p = panel(
            &image,
            &GrayImage::from_pixel(4, 2, image::Luma([255])),
            &GrayImage::from_pixel(4, 2, image::Luma([1])),
        );
        assert_eq!((p.dimensions(), p.get_pixel(0, 0).0, p.get_pixel(4, 0).0), ((12, 2), [9, 9, 9], [255, 255, 255]));
        assert_eq!(p.get_pixel(8, 0).0, data::voc_palette()[1]);
    }
}
