//! A small, fast, splittable RNG (splitmix64), identical on every platform: synthetic data,
//! shuffles, augmentation, a new classifier's initialization and seeded test inputs all draw
//! from it.

/// A small, fast, splittable RNG (splitmix64): identical on every platform, so a seed fixes
/// the synthetic data, the shuffles and the augmentations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rng(pub u64);

impl Rng {
    /// An independent stream for `(seed, a, b)`, e.g. (run seed, epoch, sample index).
    pub fn derive(seed: u64, a: u64, b: u64) -> Rng {
        let mut r = Rng(seed ^ 0x5851_F42D_4C95_7F2D);
        r.0 ^= r.next_u64().wrapping_add(a.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.0 ^= r.next_u64().wrapping_add(b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F));
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.f32()
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * n as f64) as usize % n.max(1)
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}
