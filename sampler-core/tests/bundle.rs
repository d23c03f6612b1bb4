//! Bundle format: round trips, every corruption and truncation, hostile lengths.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use sampler_core::bundle::{Bundle, BundleError, ImageShape, ModelSpec, Provenance, SolverKind};
use sampler_core::burn::tensor::Device;
use sampler_core::gmm::Mixture;
use sampler_core::model::{MlpConfig, NetConfig, UNetConfig, weights_to_bytes};
use sampler_core::precond::Precond;
use sampler_core::schedule::Schedule;
use sampler_core::{Sampler, rng};

/// Counts the largest single allocation, to prove hostile lengths allocate nothing big.
struct Counting;
static LARGEST: AtomicUsize = AtomicUsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
#[global_allocator]
static GLOBAL: Counting = Counting;

fn mixture_bundle() -> Bundle {
    let (k, d) = (3usize, 2 * 2);
    Bundle {
        name: "tiny-mixture".into(),
        description: "3 components, 2x2 grayscale".into(),
        image: ImageShape {
            channels: 1,
            height: 2,
            width: 2,
        },
        label_count: 0,
        precond: Precond::default(),
        schedule: Schedule::edm(4, 0.002, 80.0).unwrap(),
        solver: SolverKind::Euler,
        model: ModelSpec::Mixture(Mixture {
            dim: d,
            means: rng::gaussian_vec(1, k * d)
                .iter()
                .map(|v| v.clamp(-1.0, 1.0))
                .collect(),
            stds: vec![0.1, 0.2, 0.05],
            weights: vec![1.0, 2.0, 1.0],
        }),
        provenance: Provenance {
            dataset: "synthetic".into(),
            training_steps: 0,
            schedule_method: "edm-rho7".into(),
            created_unix: 0,
        },
    }
}

fn unet_config() -> UNetConfig {
    UNetConfig::new(8, 1, 1)
        .with_label_dim(3)
        .with_model_channels(8)
        .with_channel_mult(vec![1, 2])
        .with_num_blocks(1)
        .with_attn_resolutions(vec![4])
}

fn network_bundle(config: NetConfig, image: ImageShape, labels: u32) -> Bundle {
    let device = Device::flex();
    device.seed(3);
    let net = config.init(&device);
    Bundle {
        name: "untrained".into(),
        description: String::new(),
        image,
        label_count: labels,
        precond: Precond::default(),
        schedule: Schedule::edm(3, 0.002, 80.0).unwrap(),
        solver: SolverKind::Euler,
        model: ModelSpec::Network {
            weights: weights_to_bytes(&net).unwrap(),
            config,
        },
        provenance: Provenance::default(),
    }
}

#[test]
fn mixture_bundle_round_trips() {
    let b = mixture_bundle();
    let bytes = b.to_bytes().unwrap();
    assert_eq!(&bytes[..8], b"FEWSTEP\0");
    assert_eq!(Bundle::from_bytes(&bytes).unwrap(), b);
}

#[test]
fn network_bundle_round_trips_and_reloads_the_same_weights() {
    let image = ImageShape {
        channels: 1,
        height: 8,
        width: 8,
    };
    let b = network_bundle(NetConfig::UNet(unet_config()), image, 3);
    let bytes = b.to_bytes().unwrap();
    let back = Bundle::from_bytes(&bytes).unwrap();
    assert_eq!(back, b);
    // The loaded network gives the same images as one loaded from the original bundle.
    let device = Device::flex();
    let a = Sampler::new(b, &device)
        .unwrap()
        .generate(9, 2, Some(1))
        .unwrap();
    let c = Sampler::from_bundle(&bytes, &device)
        .unwrap()
        .generate(9, 2, Some(1))
        .unwrap();
    assert_eq!(a, c);
    assert!(
        a.data
            .iter()
            .all(|v| v.is_finite() && (-1.0..=1.0).contains(v))
    );
    let mlp = network_bundle(
        NetConfig::Mlp(MlpConfig::new(12)),
        ImageShape {
            channels: 3,
            height: 2,
            width: 2,
        },
        0,
    );
    assert_eq!(Bundle::from_bytes(&mlp.to_bytes().unwrap()).unwrap(), mlp);
}

#[test]
fn every_single_byte_corruption_is_an_error() {
    let bytes = mixture_bundle().to_bytes().unwrap();
    for pos in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xFF] {
            let mut bad = bytes.clone();
            bad[pos] ^= flip;
            assert!(
                Bundle::from_bytes(&bad).is_err(),
                "corrupting byte {pos} with {flip:#x} went unnoticed"
            );
        }
    }
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = mixture_bundle().to_bytes().unwrap();
    for len in 0..bytes.len() {
        let err = Bundle::from_bytes(&bytes[..len]).unwrap_err();
        assert!(
            matches!(err, BundleError::Truncated { .. }),
            "length {len}: {err:?}"
        );
    }
    let mut long = bytes.clone();
    long.push(0);
    assert_eq!(
        Bundle::from_bytes(&long),
        Err(BundleError::TrailingBytes(1))
    );
}

#[test]
fn header_errors_say_what_is_wrong() {
    let bytes = mixture_bundle().to_bytes().unwrap();
    assert_eq!(
        Bundle::from_bytes(b"\x89PNG\r\n\x1a\n rest of a png"),
        Err(BundleError::WrongMagic)
    );
    let mut v3 = bytes.clone();
    v3[8] = 3;
    let err = Bundle::from_bytes(&v3).unwrap_err();
    assert_eq!(err, BundleError::UnsupportedVersion { found: 3 });
    assert!(err.to_string().contains("version 3"), "{err}");
    let mut flipped = bytes.clone();
    let mid = bytes.len() / 2;
    flipped[mid] ^= 0x10;
    assert!(matches!(
        Bundle::from_bytes(&flipped),
        Err(BundleError::ChecksumMismatch { .. })
    ));
}

/// Recomputes the CRC so the corruption reaches the body parser.
fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
    let end = bytes.len() - 4;
    let crc = sampler_core::bundle::crc32(&bytes[..end]);
    bytes[end..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

#[test]
fn hostile_lengths_are_rejected_without_allocating_them() {
    let bytes = mixture_bundle().to_bytes().unwrap();
    // 1. The header claims a 4 GiB body.
    let mut huge = bytes.clone();
    huge[12..16].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    LARGEST.store(0, Ordering::Relaxed);
    assert!(matches!(
        Bundle::from_bytes(&huge),
        Err(BundleError::Truncated { .. })
    ));
    // 2. Inside a correctly sealed body, the name's length varint claims ~2^62 bytes.
    let mut body = vec![0xFFu8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F];
    body.extend_from_slice(&[0u8; 32]);
    let mut forged = Vec::new();
    forged.extend_from_slice(b"FEWSTEP\0\x01\x00\x00\x00");
    forged.extend_from_slice(&(body.len() as u32).to_le_bytes());
    forged.extend_from_slice(&body);
    forged.extend_from_slice(&[0; 4]);
    let forged = reseal(forged);
    assert!(matches!(
        Bundle::from_bytes(&forged),
        Err(BundleError::Malformed(_))
    ));
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(largest < 1 << 20, "largest allocation {largest} bytes");
}

#[test]
fn inconsistent_bundles_are_refused() {
    let mut b = mixture_bundle();
    b.image.height = 3;
    let err = b.to_bytes().unwrap_err();
    assert!(matches!(err, BundleError::Inconsistent(_)), "{err:?}");
    let mut b = mixture_bundle();
    b.label_count = 2;
    assert!(matches!(b.to_bytes(), Err(BundleError::Inconsistent(_))));
    // Weights that do not fit the config: a typed error when loading, not a panic.
    let image = ImageShape {
        channels: 1,
        height: 8,
        width: 8,
    };
    let mut b = network_bundle(NetConfig::UNet(unet_config()), image, 3);
    if let ModelSpec::Network {
        config: NetConfig::UNet(c),
        ..
    } = &mut b.model
    {
        c.model_channels = 16;
    }
    assert!(Sampler::new(b.clone(), &Device::flex()).is_err());
    if let ModelSpec::Network { weights, .. } = &mut b.model {
        *weights = vec![7u8; 100];
    }
    assert!(Sampler::new(b, &Device::flex()).is_err());
}

#[test]
fn labels_are_checked() {
    let device = Device::flex();
    let s = Sampler::new(mixture_bundle(), &device).unwrap();
    assert!(
        s.generate(0, 1, Some(0)).is_err(),
        "unconditional bundle accepted a label"
    );
    let image = ImageShape {
        channels: 1,
        height: 8,
        width: 8,
    };
    let s = Sampler::new(
        network_bundle(NetConfig::UNet(unet_config()), image, 3),
        &device,
    )
    .unwrap();
    assert!(s.generate(0, 1, Some(3)).is_err());
    assert!(s.generate(0, 1, Some(2)).is_ok());
}

#[test]
fn bad_levels_and_precond_are_refused_with_their_reason() {
    let b = mixture_bundle();
    let bytes = b.to_bytes().unwrap();
    let levels: Vec<[u8; 4]> = b
        .schedule
        .sigmas()
        .iter()
        .map(|s| s.to_le_bytes())
        .collect();
    let pattern: Vec<u8> = levels.concat();
    let at = bytes
        .windows(pattern.len())
        .position(|w| w == pattern.as_slice())
        .expect("the levels are stored as f32 in order");
    let edit = |i: usize, value: f32| {
        let mut e = bytes.clone();
        e[at + 4 * i..at + 4 * i + 4].copy_from_slice(&value.to_le_bytes());
        reseal(e)
    };
    for (i, value, reason) in [
        (2, 1e3f32, "must strictly decrease"),
        (1, f32::NAN, "finite"),
        (3, f32::INFINITY, "finite"),
        (0, 1e6, "samples levels up to"),
    ] {
        let err = Bundle::from_bytes(&edit(i, value)).unwrap_err().to_string();
        assert!(
            err.contains("noise level") && err.contains(reason),
            "level {i} = {value}: {err}"
        );
    }
    // VP preconditioning with a NaN parameter used to sample a black image and exit 0.
    let mut vp = mixture_bundle();
    vp.precond = Precond::Vp {
        beta_d: f32::NAN,
        beta_min: 0.1,
        m: 1000.0,
    };
    let err = vp.to_bytes().unwrap_err().to_string();
    assert!(err.contains("beta_d NaN"), "{err}");
}

#[test]
fn weights_are_checked_before_the_network_is_allocated() {
    let image = ImageShape {
        channels: 1,
        height: 8,
        width: 8,
    };
    let b = network_bundle(NetConfig::UNet(unet_config()), image, 3);
    // 1. A config that claims a network 1000x larger than the weights present (the bundle
    //    still decodes: the weights are not tied to model_channels by the format).
    let mut big = b.clone();
    if let ModelSpec::Network {
        config: NetConfig::UNet(c),
        ..
    } = &mut big.model
    {
        c.model_channels = 512;
    }
    LARGEST.store(0, Ordering::Relaxed);
    let err = Sampler::new(big, &Device::flex())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("values but the network config describes"),
        "{err}"
    );
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(largest < 8 << 20, "largest allocation {largest} bytes");
    // 2. An integer tensor where a float weight belongs (burn's loader panicked on it).
    let ints = burn_pack::Writer::new(vec![burn_pack::Tensor::new(
        "conv_in.weight".into(),
        burn_pack::DType::I32,
        vec![2usize, 2],
        None,
        burn_pack::Bytes::from_bytes_vec(vec![0u8; 16]),
    )])
    .into_bytes()
    .unwrap();
    let mut bad = b.clone();
    if let ModelSpec::Network { weights, .. } = &mut bad.model {
        *weights = ints.to_vec();
    }
    let err = Sampler::new(bad, &Device::flex())
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("'conv_in.weight' is I32"), "{err}");
    // 3. The untouched bundle still loads.
    assert!(Sampler::new(b, &Device::flex()).is_ok());
}
