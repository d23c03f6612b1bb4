//! Writes `bundles/demo-shapes.bin`: the exact denoiser of a mixture of eight 16x16
//! grayscale shapes (ring, disc, cross, ...), sampled by Euler on EDM's T = 8 levels.
//! A stand-in with no training behind it, so a fresh clone can make an image at once;
//! `cargo run -p sampler-core --example make_demo_bundle` regenerates it bit for bit.

use sampler_core::bundle::{Bundle, ImageShape, ModelSpec, Provenance, SolverKind};
use sampler_core::gmm::Mixture;
use sampler_core::precond::Precond;
use sampler_core::schedule::Schedule;

const N: usize = 16;

fn shape(k: usize, x: f64, y: f64) -> bool {
    // Pixel centres in [-1, 1].
    let r = (x * x + y * y).sqrt();
    match k {
        0 => (0.45..0.75).contains(&r),                                // ring
        1 => r < 0.55,                                                 // disc
        2 => x.abs() < 0.2 || y.abs() < 0.2,                           // cross
        3 => x.abs().max(y.abs()) > 0.5 && x.abs().max(y.abs()) < 0.8, // square outline
        4 => (x - y).abs() < 0.3,                                      // diagonal
        5 => ((y + 1.0) * 2.0).floor() as i64 % 2 == 0,                // bars
        6 => y > -0.6 && x.abs() < (y + 0.6) * 0.55,                   // triangle
        _ => {
            (x + 0.4).powi(2) + (y + 0.4).powi(2) < 0.12
                || (x - 0.4).powi(2) + (y - 0.4).powi(2) < 0.12
        } // two dots
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let k = 8;
    let mut means = Vec::with_capacity(k * N * N);
    for c in 0..k {
        for i in 0..N {
            for j in 0..N {
                let (x, y) = (
                    (j as f64 + 0.5) / N as f64 * 2.0 - 1.0,
                    (i as f64 + 0.5) / N as f64 * 2.0 - 1.0,
                );
                means.push(if shape(c, x, y) { 0.9 } else { -0.9 });
            }
        }
    }
    let bundle = Bundle {
        name: "demo-shapes".into(),
        description: "Exact denoiser of a mixture of 8 procedural 16x16 shapes (no training); a stand-in until trained bundles ship".into(),
        image: ImageShape { channels: 1, height: N as u32, width: N as u32 },
        label_count: 0,
        precond: Precond::default(),
        schedule: Schedule::edm(8, 0.002, 80.0)?,
        solver: SolverKind::Euler,
        model: ModelSpec::Mixture(Mixture { dim: N * N, means, stds: vec![0.1; k], weights: vec![1.0; k] }),
        provenance: Provenance {
            dataset: "procedural shapes".into(),
            training_steps: 0,
            schedule_method: "edm-rho7".into(),
            created_unix: 0,
        },
    };
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "bundles/demo-shapes.bin".into());
    std::fs::write(&path, bundle.to_bytes()?)?;
    println!("wrote {path}");
    Ok(())
}
