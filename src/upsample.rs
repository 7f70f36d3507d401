//! Logits back to a mask, as `validate` and `infer` take it: bilinear upsampling to the image's
//! own size (half-pixel taps) fused with the argmax over classes, from the model's output or
//! from the logits before its final bilinear Resize (that Resize folded in: [`Upsampling`]).

use image::GrayImage;
use rayon::prelude::*;

/// The two source taps and the second one's weight of each of `out` positions resampled from
/// `len` with half-pixel centres (`src = (i + 0.5) · len / out − 0.5`, clamped to the edges), as
/// PyTorch's `interpolate(mode="bilinear", align_corners=False)` and onnxruntime's Resize take them.
pub fn bilinear_taps(out: usize, len: usize) -> Vec<(usize, usize, f32)> {
    let scale = len as f32 / out as f32;
    (0..out).map(|i| clamped_taps((i as f32 + 0.5) * scale - 0.5, len)).collect()
}

/// The two taps of source coordinate `x` on `len` positions, clamped to the edges, and the
/// second one's weight.
fn clamped_taps(x: f32, len: usize) -> (usize, usize, f32) {
    let last = len.saturating_sub(1);
    let x = x.clamp(0.0, last as f32);
    let i0 = x.floor() as usize;
    (i0, (i0 + 1).min(last), x - i0 as f32)
}

/// The source positions one output position blends along an axis, and their weights: `w[j]`
/// weighs `start + j`. Two for a bilinear resize, three for a bilinear resize of an upsampling
/// by 1 or more ([`Upsampling`]); taps of weight 0 are left out.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Taps {
    start: usize,
    n: usize,
    w: [f32; 3],
}

impl Taps {
    /// Adds `weight` to source position `at` (never before the first added).
    fn add(&mut self, at: usize, weight: f32) {
        if weight == 0.0 {
            return;
        }
        if self.n == 0 {
            self.start = at;
        }
        let j = at - self.start;
        self.w[j] += weight;
        self.n = self.n.max(j + 1);
    }

    /// One past the last source position.
    fn end(&self) -> usize {
        self.start + self.n
    }
}

/// [`bilinear_taps`] as [`Taps`].
fn half_pixel(out: usize, len: usize) -> Vec<Taps> {
    let taps = bilinear_taps(out, len).into_iter().map(|(i0, i1, f)| {
        let mut t = Taps::default();
        t.add(i0, 1.0 - f);
        t.add(i1, f);
        t
    });
    taps.collect()
}

/// How an ONNX Resize in `linear` mode maps an output coordinate to its input
/// (`coordinate_transformation_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coordinates {
    HalfPixel,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
}

impl Coordinates {
    /// Each mode and its ONNX attribute value.
    const NAMES: [(Coordinates, &'static str); 4] = [
        (Coordinates::HalfPixel, "half_pixel"),
        (Coordinates::PytorchHalfPixel, "pytorch_half_pixel"),
        (Coordinates::AlignCorners, "align_corners"),
        (Coordinates::Asymmetric, "asymmetric"),
    ];

    /// The ONNX attribute value's mode, where it is one of these.
    pub fn from_onnx(mode: &str) -> Option<Self> {
        Self::NAMES.iter().find(|(_, name)| *name == mode).map(|&(c, _)| c)
    }

    /// The ONNX attribute value.
    pub fn onnx_name(self) -> &'static str {
        Self::NAMES.iter().find(|(c, _)| *c == self).map_or("", |&(_, name)| name)
    }
}

/// A bilinear upsampling of `[classes, h, w]` logits, as a graph's final Resize (mode `linear`)
/// does it: by constant factors of at least 1 (output length `floor(len × scale)`) or to the
/// model input's size (a Resize whose `sizes` the graph computes from its input's shape, scale
/// `out / len`), source coordinates by `coordinates`, clamped to the edges.
/// [`upsample_argmax_through`] folds it into the mask's own upsampling, so that the
/// full-resolution logits are never made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Upsampling {
    coordinates: Coordinates,
    target: Target,
}

/// What an [`Upsampling`]'s output size is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    /// Height and width factors.
    Scale(f32, f32),
    /// The model input's height and width.
    Input,
}

impl Upsampling {
    /// `None` unless both factors are finite and at least 1 (a downsampling reaches more than
    /// three source positions per output one).
    pub fn new(coordinates: Coordinates, scale: (f32, f32)) -> Option<Self> {
        let up = |s: f32| s.is_finite() && s >= 1.0;
        (up(scale.0) && up(scale.1)).then_some(Upsampling { coordinates, target: Target::Scale(scale.0, scale.1) })
    }

    /// An upsampling to the model input's size.
    pub fn to_input(coordinates: Coordinates) -> Self {
        Upsampling { coordinates, target: Target::Input }
    }

    /// The upsampled size of `(width, height)` logits of a model input of `input` =
    /// `(width, height)`: each `floor(len × scale)`, or the input's.
    pub fn output_size(&self, (w, h): (usize, usize), input: (usize, usize)) -> (usize, usize) {
        match self.target {
            Target::Scale(sh, sw) => ((w as f32 * sw).floor() as usize, (h as f32 * sh).floor() as usize),
            Target::Input => input,
        }
    }

    /// Whether `(width, height)` logits of an `input`-sized model input upsample (each output
    /// length at least the logits'), which folding needs: always with factors.
    pub fn upsamples(&self, logits: (usize, usize), input: (usize, usize)) -> bool {
        let (w, h) = self.output_size(logits, input);
        w >= logits.0 && h >= logits.1
    }

    /// "bilinear ×4×4 (align_corners)", "bilinear to the input size (half_pixel)".
    pub fn describe(&self) -> String {
        let mode = self.coordinates.onnx_name();
        match self.target {
            Target::Scale(sh, sw) => format!("bilinear ×{sh}×{sw} ({mode})"),
            Target::Input => format!("bilinear to the input size ({mode})"),
        }
    }

    /// The two source taps and the second one's weight of position `i` of an axis of `len`
    /// upsampled to `full` by `scale` (onnxruntime's formulas for linear Resize).
    fn source(&self, i: usize, len: usize, full: usize, scale: f32) -> (usize, usize, f32) {
        let i = i as f32;
        let x = match self.coordinates {
            Coordinates::HalfPixel => (i + 0.5) / scale - 0.5,
            Coordinates::PytorchHalfPixel if full > 1 => (i + 0.5) / scale - 0.5,
            Coordinates::AlignCorners if full > 1 => i * (len - 1) as f32 / (full - 1) as f32,
            Coordinates::Asymmetric => i / scale,
            Coordinates::PytorchHalfPixel | Coordinates::AlignCorners => 0.0,
        };
        clamped_taps(x, len)
    }

    /// The upsampled length and the scale onnxruntime's formulas use along `axis` (0: height,
    /// 1: width) of `len` logits, the model input's being `input`.
    fn axis(&self, axis: usize, len: usize, input: usize) -> (usize, f32) {
        match self.target {
            Target::Scale(sh, sw) => {
                let scale = [sh, sw][axis];
                ((len as f32 * scale).floor() as usize, scale)
            }
            Target::Input => (input, input as f32 / len as f32),
        }
    }

    /// The taps of `out` positions resampled (half-pixel) from the first `inner` of an axis of
    /// `len` logits upsampled to `full` by `scale`, through the upsampling, on the `len` source
    /// positions: the weights of the two resamplings multiplied out.
    fn taps(&self, out: usize, inner: usize, len: usize, (full, scale): (usize, f32)) -> Vec<Taps> {
        let taps = bilinear_taps(out, inner).into_iter().map(|(a0, a1, fa)| {
            let mut t = Taps::default();
            for (a, wa) in [(a0, 1.0 - fa), (a1, fa)] {
                if wa != 0.0 {
                    let (b0, b1, fb) = self.source(a, len, full, scale);
                    t.add(b0, wa * (1.0 - fb));
                    t.add(b1, wa * fb);
                }
            }
            t
        });
        taps.collect()
    }
}

/// A source pixel whose highest class is not strictly above all the others ([`source_labels`]).
const TIED: u8 = u8::MAX;

/// Bilinear (half-pixel) upsampling of `logits[.., :ih, :iw]` of one image to `w × h`, fused
/// with the argmax over classes (ties go to the lower class).
pub fn upsample_argmax(logits: ndarray::ArrayView3<'_, f32>, inner: (usize, usize), w: usize, h: usize) -> GrayImage {
    let (iw, ih) = inner;
    argmax_through_taps(logits, &half_pixel(w, iw), &half_pixel(h, ih))
}

/// [`upsample_argmax`] of `up` applied to `logits`, without making the upsampled logits: `input`
/// is the model input's `(width, height)`, `inner` the image's part of the upsampled size, and
/// each mask pixel blends the source pixels both resamplings reach (up to 3 × 3) with their
/// weights multiplied out. The mask is the one of upsampling first except where rounding puts two
/// classes' blends within an ulp or so. An error where `up` would shrink these logits
/// ([`Upsampling::upsamples`]).
pub fn upsample_argmax_through(
    logits: ndarray::ArrayView3<'_, f32>,
    up: &Upsampling,
    input: (usize, usize),
    inner: (usize, usize),
    (w, h): (usize, usize),
) -> Result<GrayImage, String> {
    let (_, lh, lw) = logits.dim();
    if !up.upsamples((lw, lh), input) {
        return Err(format!(
            "the graph's final Resize ({}) would shrink its {lw}×{lh} logits of a {}×{} input; segtune folds \
             only upsamplings (--tile, --scales or --flip run the whole graph)",
            up.describe(),
            input.0,
            input.1
        ));
    }
    let xs = up.taps(w, inner.0, lw, up.axis(1, lw, input.0));
    let ys = up.taps(h, inner.1, lh, up.axis(0, lh, input.1));
    Ok(argmax_through_taps(logits, &xs, &ys))
}

/// The mask of one image's `logits` at `(w, h)`, from their `inner` part of the `input`-sized
/// model input: through `up` where the graph's final Resize was folded out
/// ([`upsample_argmax_through`]), else straight from the model's output ([`upsample_argmax`]).
pub fn logits_to_mask(
    logits: ndarray::ArrayView3<'_, f32>,
    up: Option<&Upsampling>,
    input: (usize, usize),
    inner: (usize, usize),
    (w, h): (usize, usize),
) -> Result<GrayImage, String> {
    match up {
        Some(up) => upsample_argmax_through(logits, up, input, inner, (w, h)),
        None => Ok(upsample_argmax(logits, inner, w, h)),
    }
}

/// The mask whose pixel `(x, y)` is the argmax over classes of the logits blended by `xs[x]`
/// and `ys[y]`.
///
/// Where the source pixels an output pixel blends all have the same class strictly above the
/// others, so has their blend (the weights are the same for every class and non-negative, and
/// rounded sums and products are monotone), and that class is the answer without blending the
/// scores: only pixels near a class boundary are blended ([`blended_argmax`]). The result is the
/// full blend's argmax except where rounding makes two classes' blends exactly equal.
fn argmax_through_taps(logits: ndarray::ArrayView3<'_, f32>, xs: &[Taps], ys: &[Taps]) -> GrayImage {
    let logits = logits.as_standard_layout();
    let scores = Planes::new(&logits);
    let end = |taps: &[Taps]| taps.iter().map(Taps::end).max().unwrap_or(0);
    let (sw, sh) = (end(xs), end(ys));
    let labels = source_labels(&scores, sw, sh);
    let w = xs.len();
    let mut mask = vec![0u8; w * ys.len()];
    mask.par_chunks_mut(w.max(1)).zip(ys).for_each(|(out, ty)| {
        let rows: Vec<&[u8]> = (ty.start..ty.end()).map(|y| &labels[y * sw..][..sw]).collect();
        for (o, tx) in out.iter_mut().zip(xs) {
            let l = rows.first().map_or(TIED, |r| r[tx.start]);
            let same = l != TIED && rows.iter().all(|r| r[tx.start..tx.end()].iter().all(|&v| v == l));
            *o = if same { l } else { blended_argmax(&scores, ty, tx) };
        }
    });
    GrayImage::from_raw(w as u32, ys.len() as u32, mask).expect("size matches")
}

/// `[classes, H, W]` scores in standard layout, read by class plane.
struct Planes<'a> {
    data: &'a [f32],
    classes: usize,
    plane: usize,
    width: usize,
}

impl<'a> Planes<'a> {
    fn new(logits: &'a ndarray::CowArray<'_, f32, ndarray::Ix3>) -> Self {
        let (classes, lh, width) = logits.dim();
        Planes { data: logits.as_slice().expect("standard layout is contiguous"), classes, plane: lh * width, width }
    }

    /// Row `y`'s first `n` scores of class `k`.
    fn row(&self, k: usize, y: usize, n: usize) -> &[f32] {
        &self.data[k * self.plane + y * self.width..][..n]
    }

    /// The score of class `k` at `(x, y)`.
    fn at(&self, k: usize, y: usize, x: usize) -> f32 {
        self.data[k * self.plane + y * self.width + x]
    }
}

/// Rows of source pixels labelled together by [`source_labels`]: a band's scores (8 rows of
/// 512 pixels of 21 classes: 344 KB) stay in the L2 cache from its first pass to its second.
const BAND: usize = 8;

/// Each source pixel's class in `[:ih, :iw]`, or [`TIED`] where no class is strictly above the
/// others. Band by band: the highest score of each pixel, then the classes that reach it
/// (lowest last, so it stays); loops of selects over contiguous rows, which vectorize.
fn source_labels(scores: &Planes<'_>, iw: usize, ih: usize) -> Vec<u8> {
    let mut labels = vec![0u8; iw * ih];
    labels.par_chunks_mut((iw * BAND).max(1)).enumerate().for_each_init(
        || (vec![0f32; iw * BAND], vec![0u32; iw * BAND], vec![0u32; iw * BAND]),
        |(best, label, reach), (band, out)| {
            let n = out.len();
            let (best, label, reach) = (&mut best[..n], &mut label[..n], &mut reach[..n]);
            let rows = |k: usize| (0..n / iw).map(move |r| scores.row(k, band * BAND + r, iw));
            best.fill(f32::NEG_INFINITY);
            for k in 0..scores.classes {
                for (best, row) in best.chunks_exact_mut(iw).zip(rows(k)) {
                    for (b, &v) in best.iter_mut().zip(row) {
                        *b = if v > *b { v } else { *b };
                    }
                }
            }
            reach.fill(0);
            for k in (0..scores.classes).rev() {
                let bands = best.chunks_exact(iw).zip(reach.chunks_exact_mut(iw)).zip(label.chunks_exact_mut(iw));
                for (((best, reach), label), row) in bands.zip(rows(k)) {
                    for (((&v, &b), r), l) in row.iter().zip(best).zip(reach.iter_mut()).zip(label.iter_mut()) {
                        let at = (v == b) as u32;
                        *r += at;
                        *l = if at != 0 { k as u32 } else { *l };
                    }
                }
            }
            for ((o, &l), &n) in out.iter_mut().zip(label.iter()).zip(reach.iter()) {
                *o = if n != 1 || l >= TIED as u32 { TIED } else { l as u8 };
            }
        },
    );
    labels
}

/// The argmax over classes of the blend of one output pixel's source pixels (`ty`, `tx`):
/// down each column first, then across; ties go to the lower class.
fn blended_argmax(scores: &Planes<'_>, ty: &Taps, tx: &Taps) -> u8 {
    let mut best = (0u8, f32::NEG_INFINITY);
    for k in 0..scores.classes {
        let mut v = 0.0;
        for (c, &wx) in tx.w[..tx.n].iter().enumerate() {
            let mut column = 0.0;
            for (r, &wy) in ty.w[..ty.n].iter().enumerate() {
                column += wy * scores.at(k, ty.start + r, tx.start + c);
            }
            v += wx * column;
        }
        if v > best.1 {
            best = (k as u8, v);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seeded generator of scores in [0, 1) (a linear congruential one).
    fn noise(seed: u32) -> impl FnMut() -> f32 {
        let mut state = seed;
        move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32
        }
    }

    #[test]
    fn upsampling_a_constant_argmax_keeps_it_and_splits_halves() {
        // 2 classes on a 2x2 input: class 1 wins on the right column.
        let logits = ndarray::Array3::from_shape_vec((2, 2, 2), vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]).unwrap();
        let m = upsample_argmax(logits.view(), (2, 2), 8, 4);
        assert_eq!(m.dimensions(), (8, 4));
        assert_eq!(m.get_pixel(0, 0)[0], 0);
        assert_eq!(m.get_pixel(7, 3)[0], 1);
        assert_eq!((0..8).filter(|&x| m.get_pixel(x, 0)[0] == 1).count(), 4);
    }

    #[test]
    fn separable_upsampling_matches_the_direct_bilinear_formula() {
        // 5 classes on a 9×7 crop of an 11×8 logits map, up to 23×17: every output pixel's
        // argmax equals the one of the four-tap formula evaluated directly.
        let (c, lh, lw, iw, ih, w, h) = (5, 8, 11, 9, 7, 23, 17);
        let mut noise = noise(12345);
        let logits = ndarray::Array3::from_shape_fn((c, lh, lw), |_| noise());
        let m = upsample_argmax(logits.view(), (iw, ih), w, h);
        let coords = |i: usize, scale: f32, max: usize| {
            let f = ((i as f32 + 0.5) * scale - 0.5).clamp(0.0, (max - 1) as f32);
            let i0 = f.floor() as usize;
            (i0, (i0 + 1).min(max - 1), f as f64 - i0 as f64)
        };
        for y in 0..h {
            let (y0, y1, fy) = coords(y, ih as f32 / h as f32, ih);
            for x in 0..w {
                let (x0, x1, fx) = coords(x, iw as f32 / w as f32, iw);
                let v = |k: usize| {
                    let l = |yy: usize, xx: usize| logits[[k, yy, xx]] as f64;
                    (1.0 - fy) * ((1.0 - fx) * l(y0, x0) + fx * l(y0, x1))
                        + fy * ((1.0 - fx) * l(y1, x0) + fx * l(y1, x1))
                };
                let best = (0..c).fold(0, |b, k| if v(k) > v(b) { k } else { b });
                assert_eq!(m.get_pixel(x as u32, y as u32)[0] as usize, best, "pixel ({x}, {y})");
            }
        }
    }

    #[test]
    fn the_region_shortcut_gives_the_full_blends_argmax() {
        // 4 classes in blobs (a winner per source pixel, noisy runners-up), two planes tied
        // along a stripe: down, up and to the same size, every pixel equals the blend of all.
        let (c, lh, lw) = (4, 30, 40);
        let mut noise = noise(7);
        let logits = ndarray::Array3::from_shape_fn((c, lh, lw), |(k, y, x)| {
            let winner = ((x / 9 + y / 7) % c == k) as u8 as f32 * 3.0;
            if y == 12 && k < 2 { 5.0 } else { winner + noise() }
        });
        let logits = logits.as_standard_layout();
        let scores = Planes::new(&logits);
        for (iw, ih, w, h) in [(37, 29, 23, 17), (37, 29, 111, 64), (40, 30, 40, 30)] {
            let m = upsample_argmax(logits.view(), (iw, ih), w, h);
            let labels = source_labels(&scores, iw, ih);
            let (xs, ys) = (half_pixel(w, iw), half_pixel(h, ih));
            let mut shortcut = 0;
            for (y, ty) in ys.iter().enumerate() {
                for (x, tx) in xs.iter().enumerate() {
                    assert_eq!(m.get_pixel(x as u32, y as u32)[0], blended_argmax(&scores, ty, tx), "({x}, {y})");
                    let mut taps = (ty.start..ty.end()).flat_map(|y| (tx.start..tx.end()).map(move |x| (y, x)));
                    let first = labels[ty.start * iw + tx.start];
                    shortcut += (first != TIED && taps.all(|(y, x)| labels[y * iw + x] == first)) as usize;
                }
            }
            assert!(shortcut > w * h / 2 && shortcut < w * h, "{shortcut} of {} by the shortcut", w * h);
            assert!(labels[12 * iw..13 * iw].iter().all(|&l| l == TIED), "the tied stripe");
            assert!(labels[..12 * iw].iter().all(|&l| l != TIED), "strict winners above it");
        }
    }

    #[test]
    fn half_pixel_taps_match_pytorchs_bilinear_coordinates() {
        // interpolate(size=5, mode="bilinear", align_corners=False) from 2: src = (i + 0.5) · 0.4 − 0.5.
        let taps = bilinear_taps(5, 2);
        let want = [(0, 1, 0.0), (0, 1, 0.1), (0, 1, 0.5), (0, 1, 0.9), (1, 1, 0.0)];
        for ((a0, a1, af), (b0, b1, bf)) in taps.into_iter().zip(want) {
            assert_eq!((a0, a1), (b0, b1));
            assert!((af - bf).abs() < 1e-6, "{af} vs {bf}");
        }
        assert_eq!(bilinear_taps(3, 3), vec![(0, 1, 0.0), (1, 2, 0.0), (2, 2, 0.0)]);
    }

    /// `logits` upsampled to `(oh, ow)` the plain way, in f64: each output pixel from its four
    /// source pixels by ONNX Resize's linear formulas, at scales `(sh, sw)`.
    fn upsampled_first(
        logits: &ndarray::Array3<f32>,
        coordinates: Coordinates,
        (oh, ow): (usize, usize),
        (sh, sw): (f64, f64),
    ) -> ndarray::Array3<f32> {
        let (c, lh, lw) = logits.dim();
        let src = |i: usize, len: usize, out: usize, scale: f64| {
            let i = i as f64;
            let x = match coordinates {
                Coordinates::HalfPixel | Coordinates::PytorchHalfPixel => (i + 0.5) / scale - 0.5,
                Coordinates::AlignCorners => i * (len - 1) as f64 / (out - 1) as f64,
                Coordinates::Asymmetric => i / scale,
            }
            .clamp(0.0, (len - 1) as f64);
            let i0 = x.floor() as usize;
            (i0, (i0 + 1).min(len - 1), x - i0 as f64)
        };
        ndarray::Array3::from_shape_fn((c, oh, ow), |(k, y, x)| {
            let ((y0, y1, fy), (x0, x1, fx)) = (src(y, lh, oh, sh), src(x, lw, ow, sw));
            let l = |yy: usize, xx: usize| logits[[k, yy, xx]] as f64;
            ((1.0 - fy) * ((1.0 - fx) * l(y0, x0) + fx * l(y0, x1)) + fy * ((1.0 - fx) * l(y1, x0) + fx * l(y1, x1)))
                as f32
        })
    }

    const MODES: [Coordinates; 4] =
        [Coordinates::HalfPixel, Coordinates::PytorchHalfPixel, Coordinates::AlignCorners, Coordinates::Asymmetric];

    /// 6 classes in blobs with noisy scores on `lw × lh`.
    fn blobs(lw: usize, lh: usize, seed: u32) -> ndarray::Array3<f32> {
        let mut noise = noise(seed);
        ndarray::Array3::from_shape_fn((6, lh, lw), |(k, y, x)| ((x / 5 + y / 4) % 6 == k) as u8 as f32 * 2.0 + noise())
    }

    /// Folded in, `up` gives the mask of upsampling `logits` first (to `full`, at `scale`), for
    /// each `(inner, mask size)`; every class shows.
    fn folds_exactly(
        logits: &ndarray::Array3<f32>,
        up: &Upsampling,
        full: (usize, usize),
        scale: (f64, f64),
        cases: &[((usize, usize), usize, usize)],
    ) {
        let (_, lh, lw) = logits.dim();
        let first = upsampled_first(logits, up.coordinates, full, scale);
        let input = (full.1, full.0);
        assert_eq!(up.output_size((lw, lh), input), input);
        for &(inner, w, h) in cases {
            let want = upsample_argmax(first.view(), inner, w, h);
            let got = upsample_argmax_through(logits.view(), up, input, inner, (w, h)).expect("an upsampling");
            let differ = want.pixels().zip(got.pixels()).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 0, "{up:?} {inner:?} → {w}×{h}");
            let classes: std::collections::HashSet<u8> = got.pixels().map(|p| p[0]).collect();
            assert_eq!(classes.len(), 6, "every class shows");
        }
    }

    #[test]
    fn folding_the_upsampling_in_gives_the_mask_of_upsampling_first() {
        // 24×18 upsampled ×4 (every coordinate mode) to 96×72, then to masks of 93×70 (down),
        // 200×150 (up) and 96×72 (same), from the image part 90×68 or the whole.
        let logits = blobs(24, 18, 99);
        for coordinates in MODES {
            let up = Upsampling::new(coordinates, (4.0, 4.0)).unwrap();
            let cases = [((90, 68), 93, 70), ((96, 72), 200, 150), ((96, 72), 96, 72)];
            folds_exactly(&logits, &up, (72, 96), (4.0, 4.0), &cases);
        }
    }

    #[test]
    fn folding_an_upsampling_to_the_input_size_gives_the_mask_of_upsampling_first() {
        // 17×13 logits of a 61×50 input (no whole factor: a stride-4 net's ceil), to masks of
        // 59×48 (down), 150×120 (up) and 61×50 (same), from the image part 58×47 or the whole.
        let logits = blobs(17, 13, 7);
        for coordinates in MODES {
            let up = Upsampling::to_input(coordinates);
            let cases = [((58, 47), 59, 48), ((61, 50), 150, 120), ((61, 50), 61, 50)];
            folds_exactly(&logits, &up, (50, 61), (50.0 / 13.0, 61.0 / 17.0), &cases);
            let small = upsample_argmax_through(logits.view(), &up, (16, 50), (16, 50), (16, 50));
            assert!(small.unwrap_err().contains("would shrink its 17×13 logits of a 16×50 input"));
        }
        assert_eq!(Upsampling::to_input(Coordinates::HalfPixel).describe(), "bilinear to the input size (half_pixel)");
    }

    #[test]
    fn folded_taps_weigh_up_to_three_source_pixels_summing_to_one() {
        let up = Upsampling::new(Coordinates::AlignCorners, (4.0, 4.0)).unwrap();
        for (out, inner, len) in [(500, 512, 128), (375, 384, 96), (700, 512, 128), (7, 8, 2)] {
            for t in up.taps(out, inner, len, up.axis(0, len, 0)) {
                assert!(t.n >= 1 && t.n <= 3 && t.end() <= len, "{t:?}");
                assert!((t.w[..t.n].iter().sum::<f32>() - 1.0).abs() < 1e-5, "{t:?}");
                assert!(t.w[..t.n].iter().all(|&w| w > 0.0), "{t:?}");
            }
        }
        assert_eq!(up.taps(1, 8, 2, (8, 4.0))[0].n, 2, "the middle of 8 upsampled from 2 blends both");
        assert!(Upsampling::new(Coordinates::HalfPixel, (0.5, 2.0)).is_none(), "a downsampling is refused");
        assert!(Upsampling::new(Coordinates::HalfPixel, (f32::NAN, 2.0)).is_none());
        assert_eq!(Upsampling::new(Coordinates::HalfPixel, (2.5, 2.0)).unwrap().output_size((3, 3), (0, 0)), (6, 7));
        assert_eq!(up.describe(), "bilinear ×4×4 (align_corners)");
    }
}
