//! The firmware check of issues 4 and 5: build `firmware-example` for thumbv7em-none-eabihf
//! with the shipped `bundles/digits8.bin`, linked for 256 KiB of RAM, boot it in
//! qemu-system-arm (mps2-an386), and compare its image with the host's for the same bundle
//! and seed: the initial noise must be bit-identical, the pixels within 2/255 (the targets
//! may sum floats in a different order). The firmware itself fails if the heap runs out or
//! the stack reaches the statics.
//!
//! Needs `qemu-system-arm` and the `thumbv7em-none-eabihf` target (`.ci/run` installs
//! both). `FEWSTEP_SKIP_FIRMWARE=1` skips it explicitly, with a note on stderr.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sampler_core::Sampler;
use sampler_core::burn::tensor::Device;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct FirmwareRun {
    noise_crc: u32,
    image_crc: u32,
    pixels: Vec<u8>,
    heap_high_water: usize,
    stack_high_water: usize,
}

fn parse(stdout: &str) -> FirmwareRun {
    let hex = |line: &str| {
        u32::from_str_radix(line.trim().trim_start_matches("0x"), 16).expect("hex checksum")
    };
    let mut lines = stdout.lines();
    let mut noise_crc = None;
    let mut image_crc = None;
    let mut heap = None;
    let mut stack = None;
    let mut pixels = Vec::new();
    while let Some(line) = lines.next() {
        if let Some(v) = line.strip_prefix("noise_crc32 ") {
            noise_crc = Some(hex(v));
        } else if let Some(v) = line.strip_prefix("image_crc32 ") {
            image_crc = Some(hex(v));
        } else if let Some(v) = line.strip_prefix("heap_high_water ") {
            heap = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("stack_high_water ") {
            stack = v.trim().parse().ok();
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
        heap_high_water: heap.expect("heap_high_water line"),
        stack_high_water: stack.expect("stack_high_water line"),
    }
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
    let bundle = repo()
        .join("bundles/digits8.bin")
        .canonicalize()
        .expect("bundles/digits8.bin");
    let fw = repo().join("firmware-example");

    // 1. Build.
    let build = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet"])
        .current_dir(&fw)
        .env("FEWSTEP_BUNDLE", &bundle)
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("run cargo");
    assert!(build.success(), "firmware build failed");
    let elf = fw.join("target/thumbv7em-none-eabihf/release/firmware-example");

    // 2. Run in qemu, bounded by timeout(1).
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
        ])
        .args(["-semihosting-config", "enable=on,target=native", "-kernel"])
        .arg(&elf)
        .output()
        .expect("run qemu");
    let wall = start.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "firmware exited with {:?}:\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let fw_run = parse(&stdout);

    // 3. The host, through the same library sampler-cli uses (its PNG bytes equal
    //    `Images::to_u8`, pinned in sampler-cli's tests).
    let host = Sampler::from_bundle(&std::fs::read(&bundle).unwrap(), &Device::flex()).unwrap();
    let mut crc = crc32fast::Hasher::new();
    for v in host.initial_noise(0, 0, 1) {
        crc.update(&v.to_bits().to_le_bytes());
    }
    assert_eq!(
        fw_run.noise_crc,
        crc.finalize(),
        "initial noise differs between Cortex-M4 and the host"
    );
    let want = host.generate(0, 1, None).unwrap().to_u8();
    assert_eq!(fw_run.pixels.len(), want.len(), "image size");
    let mut reported = crc32fast::Hasher::new();
    reported.update(&fw_run.pixels);
    assert_eq!(
        reported.finalize(),
        fw_run.image_crc,
        "the firmware's printed image does not match its own checksum"
    );
    let max_diff = fw_run
        .pixels
        .iter()
        .zip(&want)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0);
    eprintln!(
        "firmware: qemu wall {wall:.1} s, max pixel difference {max_diff}/255, heap high-water {} bytes, stack high-water {} bytes",
        fw_run.heap_high_water, fw_run.stack_high_water
    );
    assert!(
        fw_run.heap_high_water + fw_run.stack_high_water < 256 * 1024,
        "heap + stack exceed the 256 KiB budget"
    );
    assert!(max_diff <= 2, "max pixel difference {max_diff}/255 > 2/255");
}
