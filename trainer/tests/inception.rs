//! FID's feature network against pytorch-fid: features and scores of the committed fixture
//! `tests/fixtures/inception/reference.json` (made once by `scripts/make_fid_fixture.py` with
//! pytorch-fid 0.3.0 on the same weights), the burn modules against the host executor, and
//! the `trainer fid` command end to end.
//!
//! These need the converted weights (`python3 scripts/fetch_inception.py`, which `.ci/run`
//! runs); `FEWSTEP_SKIP_INCEPTION=1` skips them on a machine without them.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use indicatif::ProgressBar;
use trainer::data::Dataset;
use trainer::fid::{RealStats, dataset_features};
use trainer::inception::{FEATURES, Inception};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn skipped() -> bool {
    let skip = std::env::var("FEWSTEP_SKIP_INCEPTION").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("FEWSTEP_SKIP_INCEPTION=1: Inception tests skipped");
    }
    skip
}

fn inception() -> &'static Inception {
    static NET: OnceLock<Inception> = OnceLock::new();
    NET.get_or_init(|| Inception::load_default().unwrap_or_else(|e| panic!("{e}")))
}

fn reference() -> &'static serde_json::Value {
    static REF: OnceLock<serde_json::Value> = OnceLock::new();
    REF.get_or_init(|| {
        let path = repo().join("tests/fixtures/inception/reference.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    })
}

fn rows(key: &str) -> Vec<Vec<f32>> {
    reference()[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

/// The first `n` images of a shipped set.
fn first(name: &str, n: usize) -> Dataset {
    let mut d = Dataset::from_fsd(&repo().join("data").join(name), None).unwrap();
    d.values.truncate(n * d.dim());
    d
}

/// Largest `|got - want|` relative to the largest `|want|` of the row.
fn worst_relative(got: &[f32], want: &[Vec<f32>]) -> f64 {
    let mut worst = 0.0f64;
    for (g, w) in got.chunks(FEATURES).zip(want) {
        assert_eq!(w.len(), FEATURES);
        let scale = w.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
        for (a, b) in g.iter().zip(w) {
            worst = worst.max((*a as f64 - *b as f64).abs() / scale);
        }
    }
    worst
}

#[test]
fn features_match_pytorch_fid() {
    if skipped() {
        return;
    }
    let net = inception();
    let bar = ProgressBar::hidden();
    let digits = dataset_features(net, &first("mnist-test.fsd.gz", 8), &bar).unwrap();
    let want = rows("features_a8");
    assert_eq!(digits.len(), want.len() * FEATURES);
    let err = worst_relative(&digits, &want);
    assert!(
        err < 1e-4,
        "digits: features off by {err:.3e} of the largest"
    );

    // 32x32 RGB images from the fixture's closed form.
    let mut rgb = Vec::new();
    for i in 0..4 {
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    rgb.push(((7 * x + 13 * y + 29 * c + 31 * i) % 256) as f32 / 255.0);
                }
            }
        }
    }
    let got = net.features(&rgb, (3, 32, 32), &bar).unwrap();
    let err = worst_relative(&got, &rows("features_rgb4"));
    assert!(err < 1e-4, "rgb: features off by {err:.3e} of the largest");
}

#[test]
fn fid_and_kid_of_two_digit_sets_match_pytorch_fid() {
    if skipped() {
        return;
    }
    let n = reference()["n"].as_u64().unwrap() as usize;
    let bar = ProgressBar::hidden();
    let a = dataset_features(inception(), &first("mnist-test.fsd.gz", n), &bar).unwrap();
    let b = dataset_features(inception(), &first("mnist-train.fsd.gz", n), &bar).unwrap();
    let scores = RealStats::new(a).unwrap().scores(&b).unwrap();
    let (fid, kid) = (
        reference()["fid_ab"].as_f64().unwrap(),
        reference()["kid_ab"].as_f64().unwrap(),
    );
    assert!(
        (scores.fid - fid).abs() < 0.005 * fid,
        "FID {} against pytorch-fid's {fid}",
        scores.fid
    );
    // KID is a difference of kernel means near 1.0-10.0: 1e-5 is a relative 1e-6 of them.
    assert!(
        (scores.kid - kid).abs() < 1e-5,
        "KID {} against {kid}",
        scores.kid
    );
    assert_eq!((scores.n_real, scores.n_fake), (n, n));
}

#[test]
fn burn_modules_match_the_host_executor() {
    if skipped() {
        return;
    }
    // Two images at the smallest size the network takes and one non-square size.
    for (h, w) in [(75, 75), (80, 96)] {
        let x: Vec<f32> = (0..2 * 3 * h * w)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect();
        let host = inception().features_prepared(&x, (h, w));
        let device = burn::tensor::Device::flex();
        let module = inception().module(&device);
        let t = burn::tensor::Tensor::<4>::from_data(
            burn::tensor::TensorData::new(x, [2, 3, h, w]),
            &device,
        );
        let burn = module.forward(t).into_data().try_into_vec::<f32>().unwrap();
        let want: Vec<Vec<f32>> = burn.chunks(FEATURES).map(|c| c.to_vec()).collect();
        let err = worst_relative(&host, &want);
        assert!(err < 1e-4, "{h}x{w}: host and burn differ by {err:.3e}");
    }
}

#[test]
fn fid_command_prints_json_and_text() {
    if skipped() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // 12 shipped test digits against 12 training digits, written as PNG folders to go
    // through the folder reader too.
    let write = |name: &str, d: &Dataset| {
        let folder = dir.path().join(name);
        std::fs::create_dir(&folder).unwrap();
        for (i, img) in d.values.chunks(d.dim()).enumerate() {
            let px: Vec<u8> = img
                .iter()
                .map(|&v| sampler_core::sampler::to_u8(v))
                .collect();
            image::GrayImage::from_raw(28, 28, px)
                .unwrap()
                .save(folder.join(format!("{i}.png")))
                .unwrap();
        }
        folder.to_string_lossy().into_owned()
    };
    let real = first("mnist-test.fsd.gz", 12);
    let fake = first("mnist-train.fsd.gz", 12);
    let (rp, fp) = (write("real", &real), write("fake", &fake));
    let out = common::trainer(&["fid", "--real", &rp, "--fake", &fp, "--json"]);
    common::ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bar = ProgressBar::hidden();
    let want = RealStats::new(dataset_features(inception(), &real, &bar).unwrap())
        .unwrap()
        .scores(&dataset_features(inception(), &fake, &bar).unwrap())
        .unwrap();
    assert!((v["fid"].as_f64().unwrap() - want.fid).abs() < 1e-6 * want.fid.max(1.0));
    assert!((v["kid"].as_f64().unwrap() - want.kid).abs() < 1e-9);
    assert_eq!(v["n_real"].as_u64(), Some(12));
    let text = common::trainer(&["fid", "--real", &rp, "--fake", "mnist-train.fsd.gz.nope"]);
    assert_eq!(text.status.code(), Some(2));
    let err = String::from_utf8_lossy(&text.stderr);
    assert!(err.contains("--fake"), "{err}");
}

#[test]
fn missing_or_wrong_weights_name_the_fetch_script() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.safetensors");
    let e = Inception::load(&missing).unwrap_err().to_string();
    assert!(e.contains("scripts/fetch_inception.py"), "{e}");
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not the weights").unwrap();
    let e = Inception::load(&junk).unwrap_err().to_string();
    assert!(
        e.contains("sha256") && e.contains("scripts/fetch_inception.py"),
        "{e}"
    );
    // The command says the same, and exits 2.
    let out = common::trainer(&[
        "fid",
        "--real",
        "mnist-test",
        "--fake",
        "mnist-test",
        "--weights",
        &missing.to_string_lossy(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("scripts/fetch_inception.py"));
}
