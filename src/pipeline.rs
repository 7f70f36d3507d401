//! The test-time pipeline `validate` and `infer` share: how an image becomes model input (the
//! resize policy, the padding multiple, normalization and layout). `export` records it in the
//! model's metadata (`segtune.resize` beside `segtune.mean`, `segtune.std`, `segtune.layout`,
//! `segtune.size_multiple`); both commands read it back, flags override it, and what was used is
//! reported.

use std::collections::BTreeMap;
use std::fmt;

use image::RgbImage;

use crate::imaging::letterbox;
use crate::layout::Normalization;

/// The metadata key of the resize policy.
pub const RESIZE_KEY: &str = "segtune.resize";

/// How an image is sized before it enters the model. Every policy keeps the aspect ratio, pads
/// with the mean, and scores or writes the prediction at the image's own size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// The image as it is, padded to the size multiple: DeepLab's evaluation, and what `train`
    /// evaluates each epoch with.
    Native,
    /// Scaled so its longer side is this many pixels, then padded to the size multiple.
    Longer(usize),
    /// Scaled to fit this square, then padded to all of it (every input the same shape).
    Square(usize),
    /// Scaled to fit the `height × width` a graph is fixed at, then padded to all of it.
    Fixed(usize, usize),
}

impl fmt::Display for Resize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resize::Native => write!(f, "native"),
            Resize::Longer(n) => write!(f, "longer:{n}"),
            Resize::Square(n) => write!(f, "square:{n}"),
            Resize::Fixed(h, w) => write!(f, "fixed:{h}x{w}"),
        }
    }
}

impl std::str::FromStr for Resize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected native, longer:N, square:N or fixed:HxW, found {s:?}");
        let positive = |v: &str| v.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(bad);
        match s.split_once(':') {
            None if s == "native" => Ok(Resize::Native),
            Some(("longer", n)) => Ok(Resize::Longer(positive(n)?)),
            Some(("square", n)) => Ok(Resize::Square(positive(n)?)),
            Some(("fixed", hw)) => {
                let (h, w) = hw.split_once('x').ok_or_else(bad)?;
                Ok(Resize::Fixed(positive(h)?, positive(w)?))
            }
            _ => Err(bad()),
        }
    }
}

/// The flags that override a model's recorded pipeline (`validate` and `infer`).
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct PipelineArgs {
    /// Scale each image so its longer side is SIZE (rounded up to the model's size multiple),
    /// keeping its aspect ratio, padded with the mean to that multiple [default: the pipeline the
    /// model records: an export's is native resolution, as train evaluates; a graph fixed at one
    /// size gets that size].
    #[arg(long)]
    pub size: Option<usize>,
    /// Letterbox every image into a SIZE × SIZE square instead (every input the same shape).
    #[arg(long, requires = "size")]
    pub square: bool,
}

/// Where the pipeline's resize policy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The model's `segtune.resize`.
    Metadata,
    /// None recorded: native, as `train` evaluates.
    Default,
    /// `--size` / `--square`.
    Flags,
    /// The size the model's graph is fixed at.
    Graph,
}

/// One test-time pipeline.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Pipeline {
    #[serde(serialize_with = "display")]
    pub resize: Resize,
    pub source: Source,
    pub normalization: Normalization,
}

fn display<S: serde::Serializer>(v: &Resize, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl Pipeline {
    /// The pipeline a model's metadata records (native where it records none).
    pub fn recorded(meta: &BTreeMap<String, String>, normalization: Normalization) -> Result<Self, String> {
        let (resize, source) = match meta.get(RESIZE_KEY) {
            Some(v) => (v.parse().map_err(|e| format!("metadata {RESIZE_KEY}: {e}"))?, Source::Metadata),
            None => (Resize::Native, Source::Default),
        };
        Ok(Pipeline { resize, source, normalization })
    }

    /// `--size N` (the longer side, rounded up to the size multiple) and `--square` override it.
    pub fn overridden(self, size: Option<usize>, square: bool) -> Result<Self, String> {
        let m = self.normalization.size_multiple;
        let resize = match (size, square) {
            (None, false) => return Ok(self),
            (None, true) => return Err("--square needs --size N, the side of the square".into()),
            (Some(0), _) => return Err("--size 0: expected a positive number of pixels".into()),
            (Some(n), false) => Resize::Longer(n.div_ceil(m) * m),
            (Some(n), true) => Resize::Square(n.div_ceil(m) * m),
        };
        Ok(Pipeline { resize, source: Source::Flags, ..self })
    }

    /// The pipeline for a graph fixed at `fixed` (height, width): letterboxed into that size. A
    /// flag asking for another size is refused; a recorded policy gives way.
    pub fn fitted(self, fixed: Option<(usize, usize)>) -> Result<Self, String> {
        let Some((h, w)) = fixed else { return Ok(self) };
        match self.resize {
            Resize::Square(n) | Resize::Longer(n) if self.source == Source::Flags && (n, n) != (h, w) => {
                Err(format!("its graph runs at {h}×{w} only, not --size {n}; use --size {h} or leave --size out"))
            }
            _ => Ok(Pipeline { resize: Resize::Fixed(h, w), source: Source::Graph, ..self }),
        }
    }

    /// `image` as model input (8-bit, padded with the mean) and the size of the scaled image
    /// inside it, from which the logits are upsampled back to the image's own size.
    pub fn prepare(&self, image: &RgbImage) -> (RgbImage, (usize, usize)) {
        let (w, h) = (image.width() as usize, image.height() as usize);
        match self.resize {
            Resize::Native => letterbox(image, (w, h), false, &self.normalization),
            Resize::Longer(n) => letterbox(image, (n, n), false, &self.normalization),
            Resize::Square(n) => letterbox(image, (n, n), true, &self.normalization),
            Resize::Fixed(fh, fw) => letterbox(image, (fw, fh), true, &self.normalization),
        }
    }

    /// One line for people: "native resolution, padded to multiples of 16 (recorded in the model)".
    pub fn describe(&self) -> String {
        let m = self.normalization.size_multiple;
        let what = match self.resize {
            Resize::Native => format!("native resolution, padded to multiples of {m}"),
            Resize::Longer(n) => format!("longer side scaled to {n}, padded to multiples of {m}"),
            Resize::Square(n) => format!("letterboxed into {n}×{n}"),
            Resize::Fixed(h, w) => format!("letterboxed into {h}×{w}, the size its graph is fixed at"),
        };
        let source = match self.source {
            Source::Metadata => "as the model's metadata records",
            Source::Default => "the default: the model records none",
            Source::Flags => "as the flags ask",
            Source::Graph => "its graph allows no other",
        };
        format!("{what} ({source}); predictions at each image's own size")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(resize: Option<&str>) -> Result<Pipeline, String> {
        let meta: BTreeMap<String, String> =
            resize.map(|v| (RESIZE_KEY.to_string(), v.to_string())).into_iter().collect();
        Pipeline::recorded(&meta, Normalization::IMAGENET)
    }

    #[test]
    fn resize_round_trips_and_refuses_the_rest() {
        for s in ["native", "longer:512", "square:320", "fixed:96x128"] {
            assert_eq!(s.parse::<Resize>().unwrap().to_string(), s);
        }
        for s in ["", "longer", "longer:0", "square:-1", "fixed:96", "wide:3"] {
            assert!(s.parse::<Resize>().is_err(), "{s}");
        }
        assert!(recorded(Some("bogus")).unwrap_err().contains("metadata segtune.resize"));
    }

    #[test]
    fn flags_override_the_record_and_the_graph_overrides_both() {
        let native = recorded(None).unwrap();
        assert_eq!((native.resize, native.source), (Resize::Native, Source::Default));
        let longer = recorded(Some("longer:256")).unwrap();
        assert_eq!((longer.resize, longer.source), (Resize::Longer(256), Source::Metadata));
        let flagged = longer.overridden(Some(100), false).unwrap();
        assert_eq!((flagged.resize, flagged.source), (Resize::Longer(112), Source::Flags), "rounded up to 16");
        assert_eq!(longer.overridden(Some(64), true).unwrap().resize, Resize::Square(64));
        assert!(longer.overridden(None, true).is_err());
        assert_eq!(longer.fitted(Some((96, 128))).unwrap().resize, Resize::Fixed(96, 128));
        let err = flagged.fitted(Some((96, 96))).unwrap_err();
        assert!(err.contains("96×96 only, not --size 112"), "{err}");
        assert_eq!(native.overridden(Some(96), false).unwrap().fitted(Some((96, 96))).unwrap().source, Source::Graph);
    }

    #[test]
    fn prepare_scales_and_pads_as_each_policy_says() {
        let image = RgbImage::new(100, 60);
        let size = |p: &str| {
            let pipeline =
                Pipeline { resize: p.parse().unwrap(), source: Source::Flags, normalization: Normalization::IMAGENET };
            let (input, inner) = pipeline.prepare(&image);
            (input.dimensions(), inner)
        };
        assert_eq!(size("native"), ((112, 64), (100, 60)));
        assert_eq!(size("longer:200"), ((208, 128), (200, 120)));
        assert_eq!(size("square:64"), ((64, 64), (64, 38)));
        assert_eq!(size("fixed:64x96"), ((96, 64), (96, 58)));
    }
}
