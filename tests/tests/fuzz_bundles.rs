//! Structure-aware fuzzing of the sampler (issue 11): mutations of the shipped bundles (their
//! config fields, image shape, labels, preconditioning, levels, weights bytes, raw body bytes)
//! re-encoded with a valid length and CRC so they reach everything after the envelope (as
//! version-1 or version-2 bundles), then decode -> memory estimate against a limit ->
//! `Sampler::new` -> one image, and the micro runtime's decode -> arena plan -> one image. Every input must
//! either be refused with an error or give finite pixels; a panic is a failure (an abort or a
//! hang would stop the test binary, which is a failure too).
//!
//! A seeded, bounded run (20,000 inputs, spread over every core) is part of the test suite;
//! `FEWSTEP_FUZZ_SECONDS=N` runs for N seconds instead (`FEWSTEP_FUZZ_SEED` picks the
//! stream) and saves every failing input in `tests/fuzz-regressions/` as
//! `{bundle}-{seed}-{input}.bin`, which is replayed first on every run.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sampler_core::bundle::{Bundle, ModelSpec};
use sampler_core::burn::tensor::Device;
use sampler_core::micro::MicroSampler;
use sampler_core::model::NetConfig;
use sampler_core::precond::Precond;
use sampler_core::{Sampler, rng};

/// Memory the fuzzed sampler may use (the CLI's --max-memory check, made small so no single
/// input runs for long).
const LIMIT: u64 = 96 << 20;
/// The micro runtime is single-threaded and simple: it samples mutants up to this arena.
const MICRO_ARENA_WORDS: usize = 1 << 20;
/// Mutants the micro runtime sampled.
static MICRO_SAMPLED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// The envelope of `Bundle::to_bytes` around an arbitrary body, sealed with its CRC:
/// version 1, or version 2 with `pack` appended 16-aligned after the body.
fn seal_with(body: &[u8], pack: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 36 + pack.map_or(0, |p| p.len()));
    out.extend_from_slice(b"FEWSTEP\0");
    out.extend_from_slice(&(if pack.is_some() { 2u16 } else { 1 }).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    if let Some(pack) = pack {
        out.resize(out.len().next_multiple_of(16), 0);
        out.extend_from_slice(pack);
    }
    let crc = sampler_core::bundle::crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn seal(body: &[u8]) -> Vec<u8> {
    seal_with(body, None)
}

/// A deterministic stream of draws.
struct Draws {
    seed: u64,
    n: u64,
}

impl Draws {
    fn next(&mut self) -> u64 {
        self.n += 1;
        rng::random_u64(self.seed, self.n)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Small, boundary and huge values alike.
    fn size(&mut self) -> usize {
        match self.below(6) {
            0 => self.below(4) as usize,
            1 => self.below(40) as usize,
            2 => 1 << self.below(64),
            3 => usize::MAX - self.below(3) as usize,
            4 => self.below(5000) as usize,
            _ => (self.next() as usize) >> self.below(64),
        }
    }
    fn float(&mut self) -> f32 {
        match self.below(7) {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => -1.0,
            3 => 0.0,
            4 => 1e30,
            5 => f32::from_bits(self.next() as u32),
            _ => self.below(1000) as f32 / 10.0,
        }
    }
}

/// One structure-aware mutation of `b`, encoded with a valid envelope.
fn mutate(b: &Bundle, d: &mut Draws) -> Vec<u8> {
    let mut m = b.clone();
    match d.below(9) {
        0 => {
            let s = d.size() as u32;
            match d.below(3) {
                0 => m.image.channels = s,
                1 => m.image.height = s,
                _ => m.image.width = s,
            }
        }
        1 => m.label_count = d.size() as u32,
        2 => {
            m.precond = match d.below(3) {
                0 => Precond::Edm {
                    sigma_data: d.float(),
                },
                1 => Precond::Vp {
                    beta_d: d.float(),
                    beta_min: d.float(),
                    m: d.float(),
                },
                _ => Precond::Ve,
            }
        }
        3 | 4 => match &mut m.model {
            ModelSpec::Network {
                config: NetConfig::UNet(c),
                ..
            } => {
                let v = d.size();
                match d.below(10) {
                    0 => c.img_resolution = v,
                    1 => c.in_channels = v,
                    2 => c.out_channels = v,
                    3 => c.label_dim = v,
                    4 => c.model_channels = v,
                    5 => {
                        let i = d.below(c.channel_mult.len() as u64 + 1) as usize;
                        if i < c.channel_mult.len() {
                            c.channel_mult[i] = v;
                        } else {
                            c.channel_mult.push(v);
                        }
                    }
                    6 => c.channel_mult_emb = v,
                    7 => c.num_blocks = v,
                    8 => c.attn_resolutions.push(v),
                    _ => c.channel_mult_noise = v,
                }
                // Keep the image shape consistent half of the time, to get past validate.
                if d.below(2) == 0 {
                    m.image.height = c.img_resolution as u32;
                    m.image.width = c.img_resolution as u32;
                    m.image.channels = c.in_channels as u32;
                    m.label_count = c.label_dim as u32;
                }
            }
            ModelSpec::Network {
                config: NetConfig::Mlp(c),
                ..
            } => {
                let v = d.size();
                match d.below(5) {
                    0 => c.dim = v,
                    1 => c.hidden = v,
                    2 => c.depth = v,
                    3 => c.noise_channels = v,
                    _ => c.label_dim = v,
                }
            }
            ModelSpec::Mixture(mix) => match d.below(4) {
                0 => mix.dim = d.size(),
                1 => mix.means.truncate(d.size()),
                2 => mix.stds.iter_mut().for_each(|s| *s = d.float()),
                _ => mix.weights.iter_mut().for_each(|w| *w = d.float()),
            },
        },
        5 => {
            if let ModelSpec::Network { weights, .. } = &mut m.model {
                for _ in 0..1 + d.below(8) {
                    if !weights.is_empty() {
                        let i = d.below(weights.len() as u64) as usize;
                        weights[i] = d.next() as u8;
                    }
                }
            }
        }
        6 => {
            if let ModelSpec::Network { weights, .. } = &mut m.model {
                let keep = d.below(weights.len() as u64 + 1) as usize;
                weights.truncate(keep);
            }
        }
        _ => {}
    }
    // Half the pack-weighted mutants as version 2 (the pack after the body), which the micro
    // runtime reads; the rest as version 1 (the pack inside the body), which only the host
    // reads.
    let mut pack = None;
    if let ModelSpec::Network { weights, .. } = &mut m.model
        && weights.starts_with(b"FWPK")
        && d.below(2) == 0
    {
        pack = Some(std::mem::take(weights));
    }
    let mut body = postcard::to_allocvec(&m).expect("bundles serialize");
    // Raw byte edits of the body too (levels, lengths, enum tags), on a third of the inputs
    // and always on the no-op draws.
    if d.below(3) == 0 || body.is_empty() {
        for _ in 0..1 + d.below(4) {
            if !body.is_empty() {
                let i = d.below(body.len() as u64) as usize;
                body[i] = d.next() as u8;
            }
        }
    }
    seal_with(&body, pack.as_deref())
}

/// Decode -> memory check -> load -> one image, through the micro runtime (where the
/// planned arena is small enough to run quickly) and through burn. `Err` is a refusal
/// (fine); a panic unwinds out of here.
fn run(bytes: &[u8]) -> Result<(), String> {
    if let Ok(m) = MicroSampler::new(bytes) {
        let act = m.default_activations();
        let words = m.arena_words(act);
        if words <= MICRO_ARENA_WORDS {
            let mut arena = vec![0u32; words];
            let mut out = vec![0.0f32; m.bundle().image.values()];
            if m.generate(3, 0, None, act, &mut arena, &mut out).is_ok() {
                MICRO_SAMPLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                assert!(
                    out.iter().all(|v| v.is_finite() && v.abs() <= 1.0),
                    "the micro image has values outside [-1, 1]"
                );
            }
        }
    }
    let b = Bundle::from_bytes(bytes).map_err(|e| e.to_string())?;
    if b.memory_bytes(1) > LIMIT {
        return Err("over the memory limit".into());
    }
    let s = Sampler::new(b, &Device::flex()).map_err(|e| e.to_string())?;
    let img = s.generate(3, 1, None).map_err(|e| e.to_string())?;
    assert!(
        img.data.iter().all(|v| v.is_finite() && v.abs() <= 1.0),
        "the image has values outside [-1, 1]"
    );
    Ok(())
}

/// [`run`] under `catch_unwind`: `Ok(sampled?)`, or `Err(())` for a panic, whose input is
/// saved in `regressions` when `save` (the long mode).
fn check(regressions: &std::path::Path, name: &str, bytes: &[u8], save: bool) -> Result<bool, ()> {
    match catch_unwind(AssertUnwindSafe(|| run(bytes))) {
        Ok(r) => Ok(r.is_ok()),
        Err(_) => {
            if save {
                let _ = std::fs::write(regressions.join(format!("{name}.bin")), bytes);
            }
            Err(())
        }
    }
}

/// Draws per input: input `i` reads its own stream from `i * STREAM`, so which mutants a run
/// tries does not depend on how the inputs are shared among threads.
const STREAM: u64 = 1 << 32;

#[test]
fn mutated_bundles_are_sampled_or_refused_never_a_crash() {
    let regressions = repo("tests/fuzz-regressions");
    // 1. Every input that ever failed.
    let mut kept: Vec<PathBuf> = std::fs::read_dir(&regressions)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    kept.sort();
    for p in kept
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
    {
        let bytes = std::fs::read(p).unwrap();
        // Each once got through; now each must be refused (not sampled, not a panic).
        let outcome = check(&regressions, "", &bytes, false);
        assert_eq!(outcome, Ok(false), "{} was not refused", p.display());
    }
    // 2. Mutations of the shipped bundles, on every core: one thread took ~7 minutes of
    // CI's 28 while the other core idled.
    let seeds: Vec<(&str, Bundle)> = ["digits8.bin", "demo-shapes.bin", "face8.bin", "mnist8.bin"]
        .iter()
        .map(|n| {
            let bytes = std::fs::read(repo(&format!("bundles/{n}"))).unwrap();
            (*n, Bundle::from_bytes(&bytes).unwrap())
        })
        .collect();
    let long = std::env::var("FEWSTEP_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    let start = Instant::now();
    let default_seed = 0xF022_u64;
    let seed = std::env::var("FEWSTEP_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_seed);
    // Quiet the panic messages of caught failures (they are counted and named below).
    std::panic::set_hook(Box::new(|_| {}));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    // Per thread: (tried, sampled, the names of the inputs that panicked).
    let results: Vec<(u64, u64, Vec<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (seeds, regressions) = (&seeds, &regressions);
                scope.spawn(move || {
                    let (mut tried, mut sampled, mut failures) = (0u64, 0u64, Vec::new());
                    for i in (t..).step_by(threads as usize) {
                        match long {
                            Some(secs) if start.elapsed() >= Duration::from_secs(secs) => break,
                            None if i >= 20_000 => break,
                            _ => {}
                        }
                        let mut d = Draws {
                            seed,
                            n: i * STREAM,
                        };
                        let (name, base) = &seeds[d.below(seeds.len() as u64) as usize];
                        let bytes = mutate(base, &mut d);
                        let name = format!("{name}-{seed}-{i}");
                        match check(regressions, &name, &bytes, long.is_some()) {
                            Ok(true) => sampled += 1,
                            Ok(false) => {}
                            Err(()) => failures.push(name),
                        }
                        tried += 1;
                    }
                    (tried, sampled, failures)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .expect("a fuzz thread panicked outside catch_unwind")
            })
            .collect()
    });
    let _ = std::panic::take_hook();
    let tried: u64 = results.iter().map(|r| r.0).sum();
    let sampled: u64 = results.iter().map(|r| r.1).sum();
    let failures: Vec<&String> = results.iter().flat_map(|r| &r.2).collect();
    let micro = MICRO_SAMPLED.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "fuzz: {tried} inputs in {:.1} s on {threads} threads, {sampled} sampled by burn, \
         {micro} by the micro runtime, {} failures",
        start.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(failures.is_empty(), "inputs that panicked: {failures:?}");
    // The run must reach the sampler, not stop at the envelope.
    assert!(
        sampled * 20 >= tried,
        "only {sampled} of {tried} inputs were sampled"
    );
    assert!(
        micro * 40 >= tried,
        "only {micro} of {tried} inputs reached the micro runtime's sampler"
    );
}

/// The edits issue 11 reported, by name: each must be refused before anything of its size is
/// allocated (at sampler-cli's default --max-memory of 4 GiB where memory is the reason).
#[test]
fn the_reported_hostile_edits_are_refused() {
    let load = |name: &str| {
        Bundle::from_bytes(&std::fs::read(repo(&format!("bundles/{name}"))).unwrap()).unwrap()
    };
    let default_limit = 4u64 << 30;
    let unet = |b: &mut Bundle| match &mut b.model {
        ModelSpec::Network {
            config: NetConfig::UNet(c),
            ..
        } => c.clone(),
        _ => panic!("a U-Net bundle"),
    };
    let with = |mut b: Bundle, edit: &dyn Fn(&mut sampler_core::model::UNetConfig)| {
        let mut c = unet(&mut b);
        edit(&mut c);
        b.image.height = c.img_resolution as u32;
        b.image.width = c.img_resolution as u32;
        if let ModelSpec::Network { config, .. } = &mut b.model {
            *config = NetConfig::UNet(c);
        }
        Bundle::from_bytes(&seal(&postcard::to_allocvec(&b).unwrap()))
    };
    // One changed byte of face8: channel_mult [1, 2] -> [1, 127]; model_channels 18.
    assert!(with(load("face8.bin"), &|c| c.channel_mult = vec![1, 127]).is_err());
    assert!(with(load("face8.bin"), &|c| c.model_channels = 18).is_err());
    // num_blocks near 2^64.
    assert!(with(load("digits8.bin"), &|c| c.num_blocks = usize::MAX - 3).is_err());
    // Resolution edits no weight depends on: refused by memory, not run for minutes.
    let big = with(load("digits8.bin"), &|c| c.img_resolution = 4096).unwrap();
    assert!(big.memory_bytes(1) > default_limit);
    let mnist256 = with(load("mnist8.bin"), &|c| c.img_resolution = 256).unwrap();
    assert!(mnist256.memory_bytes(1) > default_limit);
    // A config larger than its weights: refused by the weights check, not allocated.
    let wide = with(load("digits8.bin"), &|c| c.model_channels = 64).unwrap();
    let err = Sampler::new(wide, &Device::flex()).err().expect("refused");
    assert!(
        err.to_string()
            .contains("the weights do not match the network config"),
        "{err}"
    );
}
