//! segtune's logits-to-mask step (`upsample::upsample_argmax`: bilinear upsampling fused with
//! the argmax, as infer and validate use it) on logits written by
//! bench/upsample_argmax_torch.py, timed per image at THREADS threads, and its masks against
//! PyTorch's. Used by bench/upsample_argmax.sh.
//!
//! Usage: upsample_argmax LOGITS.f32 MASKS.u8 N CLASSES THREADS. Prints the median ms per image
//! and the number of pixels whose class differs from PyTorch's.

use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    anyhow::ensure!(a.len() == 6, "usage: upsample_argmax LOGITS.f32 MASKS.u8 N CLASSES THREADS");
    let (n, c, threads): (usize, usize, usize) = (a[3].parse()?, a[4].parse()?, a[5].parse()?);
    let (lh, lw, h, w) = (384, 512, 375, 500);
    let values = segtune::tensors::read_f32(std::path::Path::new(&a[1]), Some(n * c * lh * lw))?;
    let logits = ndarray::Array4::from_shape_vec((n, c, lh, lw), values)?;
    let torch = std::fs::read(&a[2])?;
    anyhow::ensure!(torch.len() == n * h * w, "{}: expected {} bytes", a[2], n * h * w);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let (mut times, mut same) = (vec![], 0usize);
    pool.install(|| {
        for round in 0..5 {
            for i in 0..n {
                let t = Instant::now();
                let mask = segtune::upsample::upsample_argmax(logits.slice(ndarray::s![i, .., .., ..]), (lw, lh), w, h);
                times.push(t.elapsed().as_secs_f64());
                if round == 0 {
                    same += mask.as_raw().iter().zip(&torch[i * h * w..][..h * w]).filter(|(a, b)| a == b).count();
                }
            }
        }
    });
    times.sort_by(f64::total_cmp);
    println!("{:.2} {}", times[times.len() / 2] * 1000.0, n * h * w - same);
    Ok(())
}
