//! `Bundle::memory_bytes`, the estimate sampler-cli checks against --max-memory before
//! loading anything, against the heap actually used: it must stay above the measured peak
//! (or the limit would let a bundle through that then aborts), without being absurdly loose.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use sampler_core::Sampler;
use sampler_core::bundle::{Bundle, ImageShape, ModelSpec, Provenance, SolverKind};
use sampler_core::burn::tensor::Device;
use sampler_core::model::{NetConfig, UNetConfig, weights_to_bytes};
use sampler_core::precond::Precond;
use sampler_core::schedule::Schedule;

/// Tracks the bytes in use and their peak.
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
            let now = CURRENT.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                - layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        } else {
            CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Peak = Peak;

/// Heap bytes above the starting level at the peak of loading `bundle` and sampling `batch`.
fn measured(bundle: &Bundle, batch: usize) -> u64 {
    let device = Device::flex();
    // Warm up thread pools and burn's one-time state, so only this run is counted.
    let warm = Sampler::new(bundle.clone(), &device).unwrap();
    warm.generate(0, batch, None).unwrap();
    drop(warm);
    let b = bundle.clone();
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let s = Sampler::new(b, &device).unwrap();
    s.generate(1, batch, None).unwrap();
    drop(s);
    (PEAK.load(Ordering::Relaxed) - base) as u64
}

fn unet_bundle(config: UNetConfig) -> Bundle {
    let device = Device::flex();
    device.seed(4);
    let r = config.img_resolution as u32;
    let c = config.in_channels as u32;
    let config = NetConfig::UNet(config);
    let net = config.init(&device);
    Bundle {
        name: "memory".into(),
        description: String::new(),
        image: ImageShape {
            channels: c,
            height: r,
            width: r,
        },
        label_count: 0,
        precond: Precond::default(),
        schedule: Schedule::edm(4, 0.002, 80.0).unwrap(),
        solver: SolverKind::Euler,
        model: ModelSpec::Network {
            weights: weights_to_bytes(&net).unwrap(),
            config,
        },
        provenance: Provenance::default(),
    }
}

#[test]
fn the_estimate_bounds_the_measured_peak() {
    let shipped = |name: &str| {
        let path = format!("{}/../bundles/{name}", env!("CARGO_MANIFEST_DIR"));
        Bundle::from_bytes(&std::fs::read(path).unwrap()).unwrap()
    };
    let cases = [
        ("face8", shipped("face8.bin")),
        ("digits8", shipped("digits8.bin")),
        (
            "attention at 16x16",
            unet_bundle(
                UNetConfig::new(16, 3, 3)
                    .with_model_channels(16)
                    .with_channel_mult(vec![1, 2])
                    .with_num_blocks(1)
                    .with_attn_resolutions(vec![16]),
            ),
        ),
    ];
    for (name, bundle) in cases {
        for batch in [1, 6] {
            let peak = measured(&bundle, batch);
            let estimate = bundle.memory_bytes(batch);
            eprintln!("{name} batch {batch}: peak {peak} estimate {estimate}");
            assert!(
                peak <= estimate,
                "{name} batch {batch}: peak {peak} > estimate {estimate}"
            );
            assert!(
                estimate <= 12 * peak.max(1 << 20),
                "{name} batch {batch}: estimate {estimate} is loose against {peak}"
            );
        }
    }
}

/// The library refuses what sampler-cli refuses: a bundle whose attention would need tens
/// of GiB is an error from `Sampler::new`, not an abort on allocation, and a caller-set limit
/// holds for every batch `generate` is asked for.
#[test]
fn the_library_refuses_what_does_not_fit_instead_of_aborting() {
    // Self-attention at 256x256: a (256*256)^2 f32 score matrix, 16 GiB, for one image.
    let huge = unet_bundle(
        UNetConfig::new(256, 1, 1)
            .with_model_channels(4)
            .with_channel_mult(vec![1])
            .with_num_blocks(1)
            .with_attn_resolutions(vec![256]),
    );
    assert!(huge.memory_bytes(1) > 16 << 30);
    match Sampler::new(huge, &Device::flex()) {
        Err(sampler_core::SamplerError::Memory { need, batch, limit }) => {
            assert_eq!(
                (batch, limit),
                (1, sampler_core::sampler::DEFAULT_MEMORY_LIMIT)
            );
            assert!(need > 16 << 30, "{need}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("accepted a bundle that needs over 16 GiB"),
    }
    // A small bundle under a limit between its batch-2 and batch-3 estimates.
    let small = unet_bundle(
        UNetConfig::new(8, 1, 1)
            .with_model_channels(4)
            .with_channel_mult(vec![1])
            .with_num_blocks(1),
    );
    let limit = (small.memory_bytes(2) + small.memory_bytes(3)) / 2;
    let s = Sampler::with_memory_limit(small, &Device::flex(), limit).unwrap();
    assert_eq!(s.generate(0, 2, None).unwrap().count, 2);
    assert!(matches!(
        s.generate(0, 3, None),
        Err(sampler_core::SamplerError::Memory { batch: 3, .. })
    ));
}
