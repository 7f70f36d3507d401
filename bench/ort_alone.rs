//! onnxruntime through segtune's own session (`OpenedModel::open`, as infer opens it), alone:
//! the same batch run again and again, timed per run, to tell whether onnxruntime is slower
//! inside `segtune infer` because of how segtune opens and feeds it or because of what runs
//! beside it. Used by bench/infer_contention.sh.
//!
//! Usage: ort_alone MODEL INPUT.f32 N C H W THREADS SPIN(0|1) FEED(view|fresh|held) RUNS FOLD(0|1)
//! INPUT.f32 holds N·C·H·W little-endian f32 (NCHW; an NHWC model gets it transposed). `view`
//! runs one input array again and again (as infer's reused buffer), `fresh` allocates and copies
//! a new one for each run (timed with the run), `held` runs fresh inputs and keeps the last two
//! outputs alive, as infer's writer does while the next batch runs. FOLD 1 takes the graph's final bilinear Resize out, as infer
//! does (`final_resize::without_final_resize`). Prints the median ms per image.

use std::time::Instant;

use ndarray::Array4;
use segtune::runtime::{OpenedModel, Provider};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    anyhow::ensure!(a.len() == 12, "usage: ort_alone MODEL INPUT.f32 N C H W THREADS SPIN FEED RUNS FOLD");
    let dim = |i: usize| -> anyhow::Result<usize> { Ok(a[i].parse()?) };
    let (n, c, h, w) = (dim(3)?, dim(4)?, dim(5)?, dim(6)?);
    let (threads, spin, runs) = (dim(7)?, a[8] == "1", dim(10)?);
    let values = segtune::tensors::read_f32(std::path::Path::new(&a[2]), Some(n * c * h * w))?;
    let input = Array4::from_shape_vec((n, c, h, w), values)?;
    let mut opened = OpenedModel::open(std::path::Path::new(&a[1]), threads, spin, Provider::Cpu, a[11] == "1")?;
    // The batch file is NCHW; an NHWC model (Keras) takes it transposed.
    let input = match opened.norm.layout {
        segtune::layout::Layout::Nhwc => input.permuted_axes([0, 2, 3, 1]).as_standard_layout().into_owned(),
        segtune::layout::Layout::Nchw => input,
    };
    let (n, c, h, w) = input.dim();
    let layout = opened.output_layout;
    let (mut times, mut held) = (vec![], std::collections::VecDeque::new());
    for i in 0..runs + 2 {
        let t = Instant::now();
        let out = if a[9] != "view" {
            let mut fresh = Array4::<f32>::zeros((n, c, h, w));
            fresh.assign(&input);
            opened.session.run_output(fresh.view(), layout)?
        } else {
            opened.session.run_output(input.view(), layout)?
        };
        let elapsed = t.elapsed().as_secs_f64();
        if a[9] == "held" {
            // As in infer: the output goes to the writer, which holds it while the next runs.
            held.push_back(out);
            if held.len() > 2 {
                held.pop_front();
            }
        } else {
            drop(out);
        }
        if i >= 2 {
            times.push(elapsed);
        }
    }
    times.sort_by(f64::total_cmp);
    println!("{:.1}", times[times.len() / 2] / n as f64 * 1000.0);
    Ok(())
}
