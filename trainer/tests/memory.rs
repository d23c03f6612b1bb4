//! The trainer's memory estimates (`trainer::memory`, what `--max-memory` is checked
//! against) against the heap actually used by short real runs: pre-training, and stage 1
//! with the exact gradient and with the cached paper gradient, on a small U-Net with
//! attention. An estimate below the measured peak would let a run through that then aborts.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::Device;
use sampler_core::bundle::ImageShape;
use sampler_core::model::{NetConfig, UNetConfig};
use sampler_core::precond::Precond;
use trainer::pretrain::PretrainConfig;
use trainer::run::RunDir;
use trainer::two_stage::{DiscGrad, FinetuneConfig, Mode};

struct Peak;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let grow = new_size - layout.size();
            let now = CURRENT.fetch_add(grow, Ordering::Relaxed) + grow;
            PEAK.fetch_max(now, Ordering::Relaxed);
        } else {
            CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Peak = Peak;

/// Heap above the level at the start of `f`, at its peak.
fn peak_of(f: impl FnOnce()) -> u64 {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    f();
    (PEAK.load(Ordering::Relaxed) - base) as u64
}

fn unet() -> NetConfig {
    NetConfig::UNet(
        UNetConfig::new(8, 1, 1)
            .with_model_channels(16)
            .with_channel_mult(vec![1, 2])
            .with_num_blocks(1)
            .with_attn_resolutions(vec![8]),
    )
}

#[test]
fn estimates_bound_the_measured_peaks() {
    let dir = tempfile::tempdir().unwrap();
    let shape = ImageShape {
        channels: 1,
        height: 8,
        width: 8,
    };
    let (base, data) = common::network_base(dir.path(), unet(), shape);
    let device = Device::flex().autodiff();
    // Warm up thread pools and burn's one-time state outside the measurement.
    let warm = dir.path().join("warm");
    let pre = PretrainConfig {
        net: unet(),
        precond: Precond::default(),
        steps: 3,
        batch: 24,
        lr: 1e-3,
        ema_decay: 0.99,
        seed: 0,
        checkpoint_every: 1,
        dataset: "mixture".into(),
        image: shape,
        label_count: 0,
        dropout: 0.0,
    };
    let run = |name: &str, c: PretrainConfig| {
        let dir = RunDir::create(&dir.path().join(name)).unwrap();
        trainer::pretrain::run(&dir, c, &data, std::slice::from_ref(&device), None, true).unwrap();
    };
    run("warm", pre.clone());
    let _ = warm;
    let peak = peak_of(|| run("pre", pre.clone()));
    let estimate = trainer::memory::pretrain_bytes(&pre);
    eprintln!("pretrain: peak {peak} estimate {estimate}");
    assert!(
        peak <= estimate,
        "pretrain: peak {peak} > estimate {estimate}"
    );
    assert!(
        estimate <= 20 * peak,
        "pretrain: estimate {estimate} loose against {peak}"
    );

    for (name, grad, refresh) in [
        ("exact", DiscGrad::Exact, 0),
        ("paper-cached", DiscGrad::Paper, 4),
    ] {
        let mut c = FinetuneConfig::new(base.clone(), 6);
        c.mode = Mode::TwoStage;
        c.rounds = 1;
        c.stage1_steps = 3;
        c.stage2_steps = 2;
        c.batch = 16;
        c.disc_batch = 12;
        c.teacher_pool = 24;
        c.teacher_steps = 8;
        c.disc_grad = grad;
        c.traj_refresh = refresh;
        c.checkpoint_every = 1;
        let run_dir = RunDir::create(&dir.path().join(name)).unwrap();
        let peak = peak_of(|| {
            trainer::two_stage::run(
                &run_dir,
                c.clone(),
                Some(data.clone()),
                std::slice::from_ref(&device),
                None,
                true,
            )
            .unwrap();
        });
        let estimate = trainer::memory::finetune_bytes(&c, Some(&unet()), 64);
        eprintln!("{name}: peak {peak} estimate {estimate}");
        assert!(
            peak <= estimate,
            "{name}: peak {peak} > estimate {estimate}"
        );
        assert!(
            estimate <= 20 * peak,
            "{name}: estimate {estimate} loose against {peak}"
        );
    }
}
