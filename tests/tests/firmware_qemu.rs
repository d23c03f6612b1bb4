//! The firmware check: build `firmware-example` for thumbv7em-none-eabihf (the micro
//! runtime, no burn) with an embedded bundle, boot it in qemu-system-arm (mps2-an386,
//! `-icount shift=0`), and compare it with the host for the same bundle and seed:
//!
//! - `bundles/digits8.bin` (f32 weights): the initial noise bit-identical, the image equal
//!   (0/255) to the host's micro runtime and within 2/255 of burn's, in at most 256 KiB of
//!   flash and 64 KiB of RAM (statics, arena included, plus the stack high-water);
//! - `digits8.bin` converted to int8 weights on the f16 float path and on the integer path
//!   (whose 8x8 and 4x4 maps take the blocked staging mnist8's never do): the image equal to
//!   the host's micro runtime, and on the integer path's f32 rows (`int-f32`, digits8's
//!   default for int8 weights) also within issue 25's budget of 7,148,530 instructions per
//!   image;
//! - `mnist8.bin` converted to int8 weights on the integer path (the default for int8): the
//!   image CRC equal to the host's micro runtime on the same bundle, in at most 1 MiB of
//!   flash and 128 KiB of RAM, at most 0.7 billion instructions (CMSIS-NN's speed).
//!
//! The firmware itself fails if its heap runs out or the stack reaches the statics.
//! Needs `qemu-system-arm` and the `thumbv7em-none-eabihf` target (`.ci/run` installs
//! both). `FEWSTEP_SKIP_FIRMWARE=1` skips it explicitly, with a note on stderr.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sampler_core::burn::tensor::Device;
use sampler_core::micro::{Activations, MicroSampler};
use sampler_core::model::weights_to_pack;
use sampler_core::pack::WeightDtype;
use sampler_core::sampler::to_u8;
use sampler_core::{Bundle, Sampler};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[derive(Debug)]
struct FirmwareRun {
    noise_crc: u32,
    image_crc: u32,
    pixels: Vec<u8>,
    flash: usize,
    statics: usize,
    arena: usize,
    heap_high_water: usize,
    stack_high_water: usize,
    instructions: u64,
    macs: u64,
    wall: f64,
}

fn parse(stdout: &str, wall: f64) -> FirmwareRun {
    let hex = |line: &str| {
        u32::from_str_radix(line.trim().trim_start_matches("0x"), 16).expect("hex checksum")
    };
    let number = |key: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no `{key}` line in:\n{stdout}"))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("`{key}`: {e}"))
    };
    let mut lines = stdout.lines();
    let mut noise_crc = None;
    let mut image_crc = None;
    let mut pixels = Vec::new();
    while let Some(line) = lines.next() {
        if let Some(v) = line.strip_prefix("noise_crc32 ") {
            noise_crc = Some(hex(v));
        } else if let Some(v) = line.strip_prefix("image_crc32 ") {
            image_crc = Some(hex(v));
        } else if line == "P2" || line == "P3" {
            let dims: Vec<usize> = lines
                .next()
                .unwrap()
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect();
            assert_eq!(lines.next(), Some("255"));
            for _ in 0..dims[1] {
                pixels.extend(
                    lines
                        .next()
                        .unwrap()
                        .split_whitespace()
                        .map(|v| v.parse::<u8>().unwrap()),
                );
            }
        }
    }
    FirmwareRun {
        noise_crc: noise_crc.expect("noise_crc32 line"),
        image_crc: image_crc.expect("image_crc32 line"),
        pixels,
        flash: number("flash_bytes ") as usize,
        statics: number("statics_bytes ") as usize,
        arena: number("arena_bytes ") as usize,
        heap_high_water: number("heap_high_water ") as usize,
        stack_high_water: number("stack_high_water ") as usize,
        instructions: number("instructions_per_image "),
        macs: number("macs_per_image "),
        wall,
    }
}

/// Builds the firmware with `bundle` embedded, its activations stored as `act` (`f32`,
/// `f16`, `int8`; `""` the default for the weights), and runs it in qemu.
fn build_and_run(bundle: &Path, act: &str) -> FirmwareRun {
    let fw = repo().join("firmware-example");
    let build = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet"])
        .current_dir(&fw)
        .env("FEWSTEP_BUNDLE", bundle)
        .env("FEWSTEP_ACTIVATIONS", act)
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("run cargo");
    assert!(
        build.success(),
        "firmware build failed for {}",
        bundle.display()
    );
    let elf = fw.join("target/thumbv7em-none-eabihf/release/firmware-example");
    let start = Instant::now();
    let out = Command::new("timeout")
        .args([
            "600",
            "qemu-system-arm",
            "-machine",
            "mps2-an386",
            "-cpu",
            "cortex-m4",
            "-nographic",
            "-icount",
            "shift=0",
        ])
        .args(["-semihosting-config", "enable=on,target=native", "-kernel"])
        .arg(&elf)
        .output()
        .expect("run qemu");
    let wall = start.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "firmware with {} exited with {:?}:\n{stdout}\n{}",
        bundle.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let run = parse(&stdout, wall);
    let host = Bundle::from_bytes(&std::fs::read(bundle).unwrap()).unwrap();
    assert_eq!(
        Some(run.macs),
        host.macs_per_image(),
        "the firmware counts other MACs than the host"
    );
    let mut reported = crc32fast::Hasher::new();
    reported.update(&run.pixels);
    assert_eq!(
        reported.finalize(),
        run.image_crc,
        "the firmware's printed image does not match its own checksum"
    );
    run
}

/// The host's micro-runtime image 0 of seed 0, in activation storage `act` (None: the
/// default for the weights, as the firmware's).
fn host_micro(bytes: &[u8], act: Option<Activations>) -> (u32, Vec<u8>) {
    let m = MicroSampler::new(bytes).unwrap();
    let act = act.unwrap_or(m.default_activations());
    let d = m.bundle().image.values();
    let mut noise = vec![0.0f32; d];
    m.initial_noise(0, 0, &mut noise);
    let mut crc = crc32fast::Hasher::new();
    for v in &noise {
        crc.update(&v.to_bits().to_le_bytes());
    }
    let mut arena = vec![0u32; m.arena_words(act)];
    let mut image = vec![0.0f32; d];
    m.generate(0, 0, None, act, &mut arena, &mut image).unwrap();
    (crc.finalize(), image.iter().map(|&v| to_u8(v)).collect())
}

/// The firmware's image CRC equals that of the host's 8-bit image `host`.
fn assert_image_crc(fw: &FirmwareRun, host: &[u8], what: &str) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(host);
    assert_eq!(
        crc.finalize(),
        fw.image_crc,
        "{what}: the firmware's image CRC differs from the host's"
    );
}

fn max_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len(), "image size");
    a.iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

fn report(name: &str, r: &FirmwareRun) {
    eprintln!(
        "firmware {name}: flash {} B, RAM {} B (statics {} incl. arena {}, heap high-water {}, \
         stack high-water {}), {} instructions per image, {} MACs, {:.2} instructions per MAC, \
         qemu wall {:.1} s",
        r.flash,
        r.statics + r.stack_high_water,
        r.statics,
        r.arena,
        r.heap_high_water,
        r.stack_high_water,
        r.instructions,
        r.macs,
        r.instructions as f64 / r.macs as f64,
        r.wall
    );
}

#[test]
fn firmware_in_qemu_matches_the_host() {
    if std::env::var_os("FEWSTEP_SKIP_FIRMWARE").is_some_and(|v| v == "1") {
        eprintln!("FEWSTEP_SKIP_FIRMWARE=1: firmware check skipped");
        return;
    }
    let qemu_ok = Command::new("qemu-system-arm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        qemu_ok,
        "qemu-system-arm not found: `apt-get install -y qemu-system-arm` and `rustup target add thumbv7em-none-eabihf` \
         (or set FEWSTEP_SKIP_FIRMWARE=1 to skip this check)"
    );

    // 1. digits8, f32 weights.
    let digits = repo()
        .join("bundles/digits8.bin")
        .canonicalize()
        .expect("bundles/digits8.bin");
    let bytes = std::fs::read(&digits).unwrap();
    let fw = build_and_run(&digits, "");
    report("digits8 f32", &fw);
    let (noise_crc, micro) = host_micro(&bytes, None);
    assert_eq!(
        fw.noise_crc, noise_crc,
        "initial noise differs between Cortex-M4 and the host"
    );
    // The same code on both: the same pixels.
    assert_eq!(
        max_diff(&fw.pixels, &micro),
        0,
        "firmware vs host micro runtime"
    );
    // And burn, the host's own engine (sampler-cli's PNG bytes are `Images::to_u8`).
    let burn = Sampler::from_bundle(&bytes, &Device::flex())
        .unwrap()
        .generate(0, 1, None)
        .unwrap()
        .to_u8();
    let d = max_diff(&fw.pixels, &burn);
    assert!(d <= 2, "firmware vs burn: {d}/255 > 2/255");
    assert!(
        fw.flash <= 256 * 1024,
        "digits8 flash {} > 256 KiB",
        fw.flash
    );
    assert!(
        fw.statics + fw.stack_high_water <= 64 * 1024,
        "digits8 RAM {} > 64 KiB",
        fw.statics + fw.stack_high_water
    );

    let dir = std::env::temp_dir().join(format!("fewstep-firmware-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // 2. digits8 with int8 weights on the f16 float path: SMLAD-free, the earlier default.
    let path = dir.join("digits8-int8.bin");
    let int8 = int8_bundle(&digits, &path);
    let fw = build_and_run(&path, "f16");
    report("digits8 int8 (f16 path)", &fw);
    let (noise_crc, micro) = host_micro(&int8, Some(Activations::F16));
    assert_eq!(fw.noise_crc, noise_crc, "digits8 noise");
    assert_eq!(
        max_diff(&fw.pixels, &micro),
        0,
        "digits8 int8, f16 path: firmware vs host"
    );
    let fw = build_and_run(&path, "int8");
    report("digits8 int8 (integer path, int8 rows)", &fw);
    let (_, micro) = host_micro(&int8, Some(Activations::Int8));
    assert_image_crc(&fw, &micro, "digits8 int8");
    // The integer path on f32 rows, digits8's default (a 25 KB arena) and fastest: issue
    // 25's budget is 4x fewer instructions than the int8 row of its day (28,594,120).
    // Measured 7,118,400.
    let fw = build_and_run(&path, "");
    report("digits8 int8 (integer path, f32 rows)", &fw);
    let (_, micro) = host_micro(&int8, None);
    assert_image_crc(&fw, &micro, "digits8 int8, int-f32");
    assert!(
        fw.instructions <= 28_594_120 / 4,
        "digits8 int8 on int-f32: {} instructions per image > 7,148,530",
        fw.instructions
    );

    // 3. mnist8 with int8 weights on the integer path (SMLAD), within the budgets of an
    // STM32F4-class part: 1 MiB of flash, 128 KiB of RAM, and CMSIS-NN-like speed.
    let path = dir.join("mnist8-int8.bin");
    let int8 = int8_bundle(&repo().join("bundles/mnist8.bin"), &path);
    let fw = build_and_run(&path, "");
    report("mnist8 int8 (integer path)", &fw);
    let (noise_crc, micro) = host_micro(&int8, None);
    assert_eq!(fw.noise_crc, noise_crc, "mnist8 noise");
    assert_image_crc(&fw, &micro, "mnist8 int8");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        fw.flash <= 1024 * 1024,
        "mnist8 int8 flash {} > 1 MiB",
        fw.flash
    );
    assert!(
        fw.statics + fw.stack_high_water <= 128 * 1024,
        "mnist8 int8 RAM {} > 128 KiB",
        fw.statics + fw.stack_high_water
    );
    // Measured 6.70e8 instructions (1.45 per MAC; the f16 float path takes 3.42e9); the
    // issue's budget, CMSIS-NN's speed, is 0.7e9.
    assert!(
        fw.instructions <= 700_000_000,
        "mnist8 int8: {} instructions per image > 0.7 billion",
        fw.instructions
    );
}

/// `bundle` with its weights converted to int8, written to `path` (for the firmware) and
/// returned (for the host).
fn int8_bundle(bundle: &Path, path: &Path) -> Vec<u8> {
    let mut b = Bundle::from_bytes(&std::fs::read(bundle).unwrap()).unwrap();
    if let sampler_core::bundle::ModelSpec::Network { config, weights } = &mut b.model {
        *weights = weights_to_pack(config, weights, WeightDtype::I8).unwrap();
    }
    let int8 = b.to_bytes().unwrap();
    std::fs::write(path, &int8).unwrap();
    int8
}
