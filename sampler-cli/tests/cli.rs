//! sampler-cli end to end: real bundles made here, real PNGs read back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sampler_core::bundle::{Bundle, ImageShape, ModelSpec, Provenance, SolverKind};
use sampler_core::burn::tensor::Device;
use sampler_core::gmm::Mixture;
use sampler_core::model::{NetConfig, UNetConfig, weights_to_bytes};
use sampler_core::precond::Precond;
use sampler_core::schedule::Schedule;
use sampler_core::{Sampler, rng};

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sampler-cli"))
        .args(args)
        .output()
        .expect("run sampler-cli")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A 2-component mixture over 4x4 RGB images: an exact, if boring, model.
fn mixture_bundle(dir: &Path) -> PathBuf {
    let d = 3 * 4 * 4;
    let b = Bundle {
        name: "mixture-4x4".into(),
        description: "two flat colors".into(),
        image: ImageShape {
            channels: 3,
            height: 4,
            width: 4,
        },
        label_count: 0,
        precond: Precond::default(),
        schedule: Schedule::edm(6, 0.002, 80.0).unwrap(),
        solver: SolverKind::Euler,
        model: ModelSpec::Mixture(Mixture {
            dim: d,
            means: (0..2 * d).map(|i| if i < d { -0.8 } else { 0.6 }).collect(),
            stds: vec![0.05, 0.05],
            weights: vec![1.0, 1.0],
        }),
        provenance: Provenance {
            dataset: "synthetic".into(),
            schedule_method: "edm-rho7".into(),
            ..Default::default()
        },
    };
    let path = dir.join("mixture.bin");
    std::fs::write(&path, b.to_bytes().unwrap()).unwrap();
    path
}

/// An untrained class-conditional U-Net over 8x8 grayscale images.
fn unet_bundle(dir: &Path) -> (PathBuf, Bundle) {
    let device = Device::flex();
    device.seed(1);
    let config = NetConfig::UNet(
        UNetConfig::new(8, 1, 1)
            .with_label_dim(4)
            .with_model_channels(8)
            .with_channel_mult(vec![1, 2])
            .with_num_blocks(1),
    );
    let net = config.init(&device);
    let b = Bundle {
        name: "untrained-unet".into(),
        description: String::new(),
        image: ImageShape {
            channels: 1,
            height: 8,
            width: 8,
        },
        label_count: 4,
        precond: Precond::default(),
        schedule: Schedule::edm(4, 0.002, 80.0).unwrap(),
        solver: SolverKind::Euler,
        model: ModelSpec::Network {
            weights: weights_to_bytes(&net).unwrap(),
            config,
        },
        provenance: Provenance::default(),
    };
    let path = dir.join("unet.bin");
    std::fs::write(&path, b.to_bytes().unwrap()).unwrap();
    (path, b)
}

fn png_dims(path: &Path) -> (u32, u32, image::ColorType) {
    let img = image::open(path).unwrap();
    (img.width(), img.height(), img.color())
}

#[test]
fn grid_has_the_expected_size_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = mixture_bundle(dir.path());
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    for out in [&a, &b] {
        let o = cli(&[
            "--bundle",
            bundle.to_str().unwrap(),
            "--count",
            "6",
            "--seed",
            "7",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("images/s"));
    }
    // 6 images -> 3 columns x 2 rows of 4x4 with 2-pixel borders.
    assert_eq!(png_dims(&a), (3 * 6 + 2, 2 * 6 + 2, image::ColorType::Rgb8));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let c = dir.path().join("c.png");
    let o = cli(&[
        "--bundle",
        bundle.to_str().unwrap(),
        "--count",
        "6",
        "--seed",
        "8",
        "--out",
        c.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    assert_ne!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&c).unwrap(),
        "another seed gave the same images"
    );
}

#[test]
fn scale_and_gap_enlarge_every_tile_by_nearest_neighbour() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = mixture_bundle(dir.path());
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "--bundle",
            bundle.to_str().unwrap(),
            "--count",
            "6",
            "--seed",
            "7",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = cli(&args);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    let (plain, big) = (dir.path().join("plain.png"), dir.path().join("big.png"));
    run(&plain, &["--gap", "0"]);
    run(&big, &["--scale", "3", "--gap", "5"]);
    // 3 x 2 tiles of 12x12 with 5-pixel gaps between and around them.
    assert_eq!(
        png_dims(&big),
        (3 * 17 + 5, 2 * 17 + 5, image::ColorType::Rgb8)
    );
    // Every output pixel is the source pixel it covers.
    let (p, b) = (
        image::open(&plain).unwrap().to_rgb8(),
        image::open(&big).unwrap().to_rgb8(),
    );
    assert_eq!((p.width(), p.height()), (12, 8));
    for k in 0..6u32 {
        let (tx, ty) = (k % 3, k / 3);
        for y in 0..12 {
            for x in 0..12 {
                let want = p.get_pixel(tx * 4 + x / 3, ty * 4 + y / 3);
                let got = b.get_pixel(5 + tx * 17 + x, 5 + ty * 17 + y);
                assert_eq!(got, want, "tile {k} ({x}, {y})");
            }
        }
    }
    // The gap is black; per-image PNGs are scaled too.
    assert_eq!(b.get_pixel(18, 18).0, [0, 0, 0]);
    assert_eq!(b.get_pixel(2, 10).0, [0, 0, 0]);
    let out = dir.path().join("each");
    let o = cli(&[
        "--bundle",
        bundle.to_str().unwrap(),
        "--count",
        "2",
        "--scale",
        "4",
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        png_dims(&out.join("000001.png")),
        (16, 16, image::ColorType::Rgb8)
    );
    let o = cli(&["--bundle", bundle.to_str().unwrap(), "--scale", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn solver_and_levels_override_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, decoded) = unet_bundle(dir.path());
    let b = bundle.to_str().unwrap();
    let run = |extra: &[&str]| {
        let out = dir
            .path()
            .join(format!("{}.png", extra.join("_").replace('/', "")));
        let mut args = vec![
            "--bundle",
            b,
            "--count",
            "3",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = cli(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(&out).unwrap()
    };
    // Each override is what the library gives for the same bundle edited the same way.
    let library = |solver: SolverKind, schedule: Schedule| {
        let mut b = decoded.clone();
        b.solver = solver;
        b.schedule = schedule;
        let images = Sampler::new(b, &Device::flex())
            .unwrap()
            .generate(0, 3, None)
            .unwrap();
        sampler_core::fs::encode_png(&images.grid(None)).unwrap()
    };
    let levels = decoded.schedule.clone();
    assert_eq!(
        run(&["--solver", "ipndm"]),
        library(SolverKind::Ipndm, levels.clone())
    );
    assert_ne!(run(&["--solver", "ipndm"]), run(&[]));
    let edm = Schedule::edm(levels.len(), levels.s_min() as f64, levels.s_max() as f64).unwrap();
    assert_eq!(
        run(&["--levels", "edm", "--solver", "dpmpp2m"]),
        library(SolverKind::DpmPp2m, edm)
    );
    // Levels from a text file.
    let file = dir.path().join("levels.txt");
    std::fs::write(&file, "80, 10\n1.5 0.1\n0.002\n").unwrap();
    let custom = Schedule::new(vec![80.0, 10.0, 1.5, 0.1, 0.002]).unwrap();
    assert_eq!(
        run(&["--levels", file.to_str().unwrap()]),
        library(SolverKind::Euler, custom)
    );
    // --info shows the override and what the bundle records.
    let o = cli(&["--bundle", b, "--solver", "heun", "--info"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("solver:      heun"), "{text}");
    assert!(text.contains("the bundle records solver euler"), "{text}");
    // Bad values are one line.
    let o = cli(&["--bundle", b, "--solver", "rk4"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("euler, heun, dpmpp2m, ipndm or dpmpp2m-lof"),
        "{}",
        stderr(&o)
    );
    std::fs::write(&file, "1 2 3").unwrap();
    let o = cli(&["--bundle", b, "--levels", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("levels"), "{}", stderr(&o));
    // A level past what fewstep samples: the message names the levels file, not the bundle.
    std::fs::write(&file, "1e38 10 1 0.1").unwrap();
    let o = cli(&["--bundle", b, "--levels", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains(file.to_str().unwrap()) && err.contains("1e38"),
        "{err}"
    );
    assert!(!err.contains(b) && !err.contains("bundle"), "{err}");
    // A NUL byte (any control byte) is escaped, never echoed raw to the terminal.
    std::fs::write(&file, "80 10\0 1 0.1").unwrap();
    let o = cli(&["--bundle", b, "--levels", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(!err.contains('\0') && err.contains("10\\0"), "{err:?}");
}

#[test]
fn info_json_is_one_object_scripts_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, decoded) = unet_bundle(dir.path());
    let o = cli(&["--bundle", bundle.to_str().unwrap(), "--info", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["name"], decoded.name.as_str());
    assert_eq!(v["format_version"], 1);
    assert_eq!(v["labels"], decoded.label_count);
    assert_eq!(v["image"]["height"], 8);
    assert_eq!(v["model"]["kind"], "unet");
    assert_eq!(v["model"]["weights_format"], "burnpack f32");
    assert_eq!(v["model"]["config"]["UNet"]["img_resolution"], 8);
    let sigmas: Vec<f32> = serde_json::from_value(v["sigmas"].clone()).unwrap();
    assert_eq!(sigmas, decoded.schedule.sigmas());
    assert_eq!(v["T"], decoded.schedule.len());
    // A shipped version-2 bundle says so, in text too.
    let face = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bundles/face8.bin");
    let o = cli(&["--bundle", face.to_str().unwrap(), "--info", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["format_version"], 2);
    assert_eq!(v["model"]["weights_format"], "pack f32");
    let o = cli(&["--bundle", face.to_str().unwrap(), "--info"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("format:      version 2") && text.contains("(pack f32)"),
        "{text}"
    );
    // A version-2 pack whose magic is corrupted (CRC resealed) is a malformed pack, not a
    // burnpack.
    let mut bytes = std::fs::read(&face).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == sampler_core::pack::PACK_MAGIC)
        .unwrap();
    bytes[at] ^= 0x20;
    let end = bytes.len() - 4;
    let crc = sampler_core::bundle::crc32(&bytes[..end]);
    bytes[end..].copy_from_slice(&crc.to_le_bytes());
    let bad = dir.path().join("bad-magic.bin");
    std::fs::write(&bad, &bytes).unwrap();
    let o = cli(&["--bundle", bad.to_str().unwrap(), "--info", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["model"]["weights_format"], "pack (malformed)");
    // --json alone is a usage error.
    let o = cli(&["--bundle", face.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn out_dir_pngs_match_the_library_to_the_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, decoded) = unet_bundle(dir.path());
    let out = dir.path().join("imgs");
    // Batches of 2 must give the same images as the library's single batch.
    let o = cli(&[
        "--bundle",
        bundle.to_str().unwrap(),
        "--count",
        "5",
        "--seed",
        "3",
        "--label",
        "2",
        "--batch",
        "2",
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = Sampler::new(decoded, &Device::flex())
        .unwrap()
        .generate(3, 5, Some(2))
        .unwrap()
        .to_u8();
    for k in 0..5 {
        let img = image::open(out.join(format!("{k:06}.png"))).unwrap();
        assert_eq!(
            (img.width(), img.height(), img.color()),
            (8, 8, image::ColorType::L8)
        );
        assert_eq!(img.as_bytes(), &want[k * 64..(k + 1) * 64], "image {k}");
    }
}

#[test]
fn info_prints_metadata_and_levels() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = mixture_bundle(dir.path());
    let o = cli(&["--bundle", bundle.to_str().unwrap(), "--info"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("mixture-4x4"), "{text}");
    assert!(text.contains("T:           6"), "{text}");
    assert!(
        text.contains("80.000000") && text.contains("0.002000"),
        "{text}"
    );
    assert!(!dir.path().join("samples.png").exists());
}

#[test]
fn bad_input_gives_one_clear_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = mixture_bundle(dir.path());
    let bytes = std::fs::read(&bundle).unwrap();
    let out = dir.path().join("never.png");
    let outs = out.to_str().unwrap();

    let check = |args: &[&str], needle: &str| {
        let o = cli(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains(needle),
            "{args:?}: expected '{needle}' in: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    };
    check(
        &[
            "--bundle",
            dir.path().join("missing.bin").to_str().unwrap(),
            "--out",
            outs,
        ],
        "cannot read bundle",
    );
    let not_bundle = dir.path().join("x.png");
    std::fs::write(&not_bundle, b"\x89PNG\r\n\x1a\nxxxxxxxxxxxxxxxx").unwrap();
    check(
        &["--bundle", not_bundle.to_str().unwrap(), "--out", outs],
        "not a fewstep bundle",
    );
    let corrupt = dir.path().join("corrupt.bin");
    let mut c = bytes.clone();
    c[40] ^= 0x55;
    std::fs::write(&corrupt, &c).unwrap();
    check(
        &["--bundle", corrupt.to_str().unwrap(), "--out", outs],
        "checksum mismatch",
    );
    let short = dir.path().join("short.bin");
    std::fs::write(&short, &bytes[..bytes.len() / 2]).unwrap();
    check(
        &["--bundle", short.to_str().unwrap(), "--out", outs],
        "truncated",
    );
    check(
        &[
            "--bundle",
            bundle.to_str().unwrap(),
            "--label",
            "1",
            "--out",
            outs,
        ],
        "unconditional",
    );
    let (unet, _) = unet_bundle(dir.path());
    check(
        &[
            "--bundle",
            unet.to_str().unwrap(),
            "--label",
            "4",
            "--out",
            outs,
        ],
        "labels 0..=3",
    );
    check(
        &[
            "--bundle",
            bundle.to_str().unwrap(),
            "--count",
            "0",
            "--out",
            outs,
        ],
        "count",
    );
    check(
        &[
            "--bundle",
            bundle.to_str().unwrap(),
            "--out",
            dir.path().join("no/such/dir/x.png").to_str().unwrap(),
        ],
        "cannot write",
    );
    assert!(!out.exists(), "a failed run left an image behind");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn noise_is_the_portable_generator() {
    // The CLI's images start from s_max * eps with eps from rng::image_seed streams; pin that
    // here so firmware and host agree on what "seed 7" means.
    let dir = tempfile::tempdir().unwrap();
    let bundle = mixture_bundle(dir.path());
    let s = Sampler::from_bundle(&std::fs::read(bundle).unwrap(), &Device::flex()).unwrap();
    let x0 = s.initial_noise(7, 1, 1);
    let eps = rng::gaussian_vec(rng::image_seed(7, 1), 48);
    assert_eq!(x0, eps.iter().map(|e| e * 80.0).collect::<Vec<_>>());
}

/// `--info | head -1`: the reader closes the pipe early; the CLI must not panic.
#[test]
fn a_closed_stdout_pipe_is_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = mixture_bundle(dir.path());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sampler-cli"))
        .args(["--bundle", bundle.to_str().unwrap(), "--info"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // close the read end before the CLI writes
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `--out - | (reader that exits)`: the image never arrived, so it is an error (exit 2, one
/// line naming standard output), not a "wrote N images" and exit 0.
#[test]
fn a_closed_pipe_under_the_png_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = mixture_bundle(dir.path());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sampler-cli"))
        .args(["--bundle", bundle.to_str().unwrap(), "--out", "-"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("standard output") && !err.contains("wrote"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bench_prints_a_row_per_batch_size_and_writes_no_image() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, _) = unet_bundle(dir.path());
    let out = dir.path().join("never.png");
    let o = cli(&[
        "--bundle",
        bundle.to_str().unwrap(),
        "--count",
        "6",
        "--out",
        out.to_str().unwrap(),
        "--bench",
        "1,4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let rows: Vec<Vec<String>> = text
        .lines()
        .filter(|l| l.starts_with("| ") && !l.contains("batch") && !l.contains("---"))
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    for (row, batch) in rows.iter().zip(["1", "4"]) {
        assert_eq!(row[1], batch, "{text}");
        let rate: f64 = row[2].parse().unwrap();
        let ms: f64 = row[3].parse().unwrap();
        assert!(rate > 0.0 && (rate * ms / 1e3 - 1.0).abs() < 0.05, "{text}");
    }
    assert!(!out.exists(), "--bench must not write images");
    // Without a list, batch sizes 1 and 16.
    let o = cli(&[
        "--bundle",
        bundle.to_str().unwrap(),
        "--count",
        "2",
        "--bench",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("| 1 |") && text.contains("| 16 |"), "{text}");
}

#[cfg(unix)]
#[test]
fn outputs_that_are_not_regular_files_are_refused_and_left_alone() {
    use std::os::unix::fs::{FileTypeExt, symlink};
    let dir = tempfile::tempdir().unwrap();
    let bundle = mixture_bundle(dir.path());
    let run = |out: &Path| {
        cli(&[
            "--bundle",
            bundle.to_str().unwrap(),
            "--count",
            "2",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let refused = |out: &Path, what: &str| {
        let o = run(out);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(what) && err.contains("refusing"), "{err}");
    };
    // A directory.
    let d = dir.path().join("adir");
    std::fs::create_dir(&d).unwrap();
    refused(&d, "a directory");
    assert!(d.is_dir());
    // A socket (a device node needs root to make; it takes the same branch).
    let sock = dir.path().join("a.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    refused(&sock, "a device, FIFO or socket");
    assert!(
        std::fs::symlink_metadata(&sock)
            .unwrap()
            .file_type()
            .is_socket()
    );
    // Links are never followed, dangling or not; neither they nor their targets change.
    let dangling = dir.path().join("dangling.png");
    symlink(dir.path().join("nowhere.png"), &dangling).unwrap();
    refused(&dangling, "a symbolic link");
    assert!(!dir.path().join("nowhere.png").exists());
    let real = dir.path().join("real.png");
    std::fs::write(&real, b"old").unwrap();
    let link = dir.path().join("link.png");
    symlink(&real, &link).unwrap();
    refused(&link, "a symbolic link");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&real).unwrap(), b"old");
}

#[test]
fn temp_files_of_dead_writers_are_removed_and_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = mixture_bundle(dir.path());
    let out = dir.path().join("grid.png");
    // No process has this id (above Linux's pid_max); ours is alive.
    let stale = dir.path().join(".grid.png.tmp-4000000000");
    let live = dir
        .path()
        .join(format!(".grid.png.tmp-{}", std::process::id()));
    std::fs::write(&stale, b"half a png").unwrap();
    std::fs::write(&live, b"someone else's write in progress").unwrap();
    let o = cli(&[
        "--bundle",
        bundle.to_str().unwrap(),
        "--count",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.exists());
    if std::path::Path::new("/proc/self").exists() {
        assert!(
            !stale.exists(),
            "the dead writer's temp file is still there"
        );
    }
    assert!(live.exists(), "a live process's temp file was removed");
}

#[test]
fn out_dash_writes_the_png_to_stdout_and_the_summary_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = mixture_bundle(dir.path());
    let o = cli(&[
        "--bundle",
        bundle.to_str().unwrap(),
        "--count",
        "3",
        "--out",
        "-",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::load_from_memory(&o.stdout).expect("stdout is a PNG");
    // 2 columns x 2 rows of 4x4 images with 2-pixel borders.
    assert_eq!((img.width(), img.height()), (2 * 6 + 2, 2 * 6 + 2));
    assert!(stderr(&o).contains("wrote 3 images to standard output"));
    assert!(!dir.path().join("-").exists());
}

#[test]
fn usage_errors_are_one_line() {
    for args in [
        &["--bogus"][..],
        &["--bundle"][..],
        &["--count", "0", "--bundle", "x"][..],
    ] {
        let o = cli(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains("--help"),
            "{err}"
        );
    }
    let o = cli(&["--help"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("--bench"));
}

#[test]
fn max_memory_refuses_before_loading_and_names_a_batch_that_fits() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, b) = unet_bundle(dir.path());
    let out = dir.path().join("m.png");
    let run = |limit: &str, batch: &str| {
        cli(&[
            "--bundle",
            bundle.to_str().unwrap(),
            "--count",
            "8",
            "--batch",
            batch,
            "--max-memory",
            limit,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    // A limit between the needs of batch 2 and batch 8.
    let limit = (b.memory_bytes(2) + b.memory_bytes(3)) / 2;
    let o = run(&limit.to_string(), "8");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("use --batch 2 or less"), "{err}");
    assert!(!out.exists());
    assert!(run(&limit.to_string(), "2").status.success());
    let o = run("1k", "1");
    assert!(
        stderr(&o).contains("even one image does not fit"),
        "{}",
        stderr(&o)
    );
    let o = run("lots", "1");
    assert!(stderr(&o).contains("not a size"), "{}", stderr(&o));
}

/// Every bundle the repository ships loads, reports itself and makes an image: a bundle
/// added to `bundles/` without being runnable fails here.
#[test]
fn every_shipped_bundle_samples() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bundles");
    let mut seen = 0;
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "bin") {
            continue;
        }
        let name = path.to_str().unwrap();
        let o = cli(&["--bundle", name, "--info", "--json"]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let out = dir.path().join("x.png");
        let o = cli(&[
            "--bundle",
            name,
            "--count",
            "2",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let (w, h, _) = png_dims(&out);
        let side = info["image"]["height"].as_u64().unwrap() as u32;
        assert!(w >= side && h >= side, "{name}: {w}x{h}");
        seen += 1;
    }
    assert!(seen >= 4, "only {seen} bundles in {}", shipped.display());
}

#[test]
fn engine_micro_writes_the_micro_runtimes_images_and_refuses_what_it_cannot_run() {
    use sampler_core::micro::{Activations, MicroSampler};
    use sampler_core::model::weights_to_pack;
    use sampler_core::pack::WeightDtype;
    let dir = tempfile::tempdir().unwrap();
    let (v1, mut b) = unet_bundle(dir.path());
    if let ModelSpec::Network { config, weights } = &mut b.model {
        *weights = weights_to_pack(config, weights, WeightDtype::I8).unwrap();
    }
    let int8 = dir.path().join("unet-int8.bin");
    let bytes = b.to_bytes().unwrap();
    std::fs::write(&int8, &bytes).unwrap();
    let micro = MicroSampler::new(&bytes).unwrap();
    // The default (the integer path, on int8 or f32 rows by the arena's size), both integer
    // paths by name and the f16 float path, each image as the library makes it, whichever
    // thread of the CLI made it.
    for (i, (flag, act)) in [
        (None, micro.default_activations()),
        (Some("int8"), Activations::Int8),
        (Some("int-f32"), Activations::IntF32),
        (Some("f16"), Activations::F16),
    ]
    .into_iter()
    .enumerate()
    {
        let out = dir.path().join(format!("imgs-{i}-{}", act.name()));
        let mut args = vec![
            "--bundle",
            int8.to_str().unwrap(),
            "--engine",
            "micro",
            "--count",
            "5",
            "--seed",
            "4",
            "--batch",
            "2",
            "--out-dir",
            out.to_str().unwrap(),
        ];
        if let Some(f) = flag {
            args.extend(["--activations", f]);
        }
        let o = cli(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let mut arena = vec![0u32; micro.arena_words(act)];
        let mut img = vec![0f32; 64];
        for k in 0..5u64 {
            micro
                .generate(4, k, None, act, &mut arena, &mut img)
                .unwrap();
            let want: Vec<u8> = img
                .iter()
                .map(|&v| sampler_core::sampler::to_u8(v))
                .collect();
            let got = image::open(out.join(format!("{k:06}.png"))).unwrap();
            assert_eq!(got.as_bytes(), &want[..], "{act:?} image {k}");
        }
    }
    // What the micro runtime cannot run, and a flag without its engine: one line, exit 2.
    let refused = [
        (
            vec!["--bundle", v1.to_str().unwrap(), "--engine", "micro"],
            "version-1",
        ),
        (
            vec!["--bundle", int8.to_str().unwrap(), "--activations", "f16"],
            "--engine micro",
        ),
        (
            vec![
                "--bundle",
                int8.to_str().unwrap(),
                "--engine",
                "micro",
                "--activations",
                "f8",
            ],
            "f32, f16, int8 or int-f32",
        ),
    ];
    for (args, says) in refused {
        let o = cli(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
}
