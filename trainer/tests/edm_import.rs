//! EDM interop (issue 13): `trainer import` of state dicts made by NVlabs/edm's own code
//! (tests/fixtures/edm, made by scripts/make_edm_fixture.py: random weights, fixed inputs,
//! EDM's outputs) gives a denoiser whose outputs match EDM's within 1e-5; `.pt` and
//! `.safetensors` import the same weights; `export --format safetensors` gives EDM's state
//! dict back bit for bit, and importing an export gives the bundle back.

mod common;
use common::{ok, trainer};

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use sampler_core::bundle::{Bundle, ModelSpec};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/edm")
        .join(name)
}

/// A safetensors file's f32 tensors: name -> (shape, values).
fn read_safetensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
            let v = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, t.shape().to_vec(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn import(dir: &Path, case: &str, ext: &str) -> (PathBuf, String) {
    let out = dir.join(format!("{case}-{ext}.bin"));
    let text = ok(&trainer(&[
        "import",
        "--from",
        fixture(&format!("{case}.{ext}")).to_str().unwrap(),
        "--config",
        fixture(&format!("{case}.json")).to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    (out, text)
}

#[test]
fn imported_edm_networks_give_edm_outputs() {
    let dir = tempfile::tempdir().unwrap();
    for case in ["uncond", "cond"] {
        let (bundle, text) = import(dir.path(), case, "safetensors");
        assert!(text.contains("resample filter buffers"), "{text}");
        let bytes = std::fs::read(&bundle).unwrap();
        let sampler = sampler_core::Sampler::from_bundle(&bytes, &Device::flex()).unwrap();
        let io: std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> =
            read_safetensors(&fixture(&format!("{case}-io.safetensors")))
                .into_iter()
                .map(|(n, s, v)| (n, (s, v)))
                .collect();
        let (xs, x) = &io["x"];
        let b = xs[0];
        let d = x.len() / b;
        let device = Device::flex();
        let x = Tensor::<2>::from_data(TensorData::new(x.clone(), [b, d]), &device);
        let sigma = Tensor::<1>::from_data(TensorData::new(io["sigma"].1.clone(), [b]), &device);
        let labels = io.get("class_labels").map(|(s, v)| {
            Tensor::<2>::from_data(TensorData::new(v.clone(), [s[0], s[1]]), &device)
        });
        let got: Vec<f32> = sampler
            .with_denoiser(|den| den.denoise(x, sigma, labels))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let want = &io["D"].1;
        let worst = got
            .iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
            .fold(0.0f32, f32::max);
        eprintln!("{case}: max |ours - EDM| / max(1, |EDM|) = {worst:.2e}");
        assert!(worst <= 1e-5, "{case}: {worst}");
    }
    // The PyTorch pickle holds the same weights.
    let (pt, _) = import(dir.path(), "cond", "pt");
    let (st, _) = import(dir.path(), "cond", "safetensors");
    let weights = |p: &Path| match Bundle::from_bytes(&std::fs::read(p).unwrap())
        .unwrap()
        .model
    {
        ModelSpec::Network { weights, .. } => weights,
        ModelSpec::Mixture(_) => unreachable!(),
    };
    assert_eq!(weights(&pt), weights(&st));
}

#[test]
fn export_gives_edms_state_dict_back_and_import_of_an_export_is_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    // EDM -> bundle -> EDM: every tensor of the fixture, bit for bit (the resample filters
    // included).
    let (bundle, _) = import(dir.path(), "uncond", "safetensors");
    ok(&trainer(&[
        "export",
        "--bundle",
        bundle.to_str().unwrap(),
        "--format",
        "safetensors",
        "--out",
        &p("uncond.safetensors"),
    ]));
    assert_eq!(
        read_safetensors(&dir.path().join("uncond.safetensors")),
        read_safetensors(&fixture("uncond.safetensors"))
    );
    assert!(dir.path().join("uncond.json").exists());
    // The config path beside --out is a directory, then a symbolic link: refused (exit 2)
    // before anything is written, and nothing is left behind.
    std::fs::create_dir(dir.path().join("blocked.json")).unwrap();
    std::os::unix::fs::symlink(p("elsewhere.json"), dir.path().join("linked.json")).unwrap();
    for name in ["blocked", "linked"] {
        let out = trainer(&[
            "export",
            "--bundle",
            bundle.to_str().unwrap(),
            "--format",
            "safetensors",
            "--out",
            &p(&format!("{name}.safetensors")),
        ]);
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(name) && !n.ends_with(".json"))
            .collect();
        assert!(left.is_empty(), "{name}: left behind {left:?}");
    }
    assert!(!dir.path().join("elsewhere.json").exists());
    // A fine-tuned bundle (its learned levels, name and provenance ride in the config) ->
    // EDM -> bundle: the same bundle.
    let face = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bundles/face8.bin");
    ok(&trainer(&[
        "export",
        "--bundle",
        face.to_str().unwrap(),
        "--format",
        "safetensors",
        "--out",
        &p("face8.safetensors"),
    ]));
    ok(&trainer(&[
        "import",
        "--from",
        &p("face8.safetensors"),
        "--config",
        &p("face8.json"),
        "--out",
        &p("face8-back.bin"),
    ]));
    let original = Bundle::from_bytes(&std::fs::read(&face).unwrap()).unwrap();
    let back = Bundle::from_bytes(&std::fs::read(p("face8-back.bin")).unwrap()).unwrap();
    assert_eq!(back, original);
    assert_eq!(
        std::fs::read(p("face8-back.bin")).unwrap(),
        std::fs::read(&face).unwrap(),
        "the file itself, byte for byte"
    );
}

#[test]
fn what_does_not_map_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("uncond.json")).unwrap()).unwrap();
    let run = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut c = config.clone();
        edit(&mut c);
        std::fs::write(p("c.json"), c.to_string()).unwrap();
        let o = trainer(&[
            "import",
            "--from",
            fixture("uncond.safetensors").to_str().unwrap(),
            "--config",
            &p("c.json"),
            "--out",
            &p("x.bin"),
        ]);
        assert_eq!(o.status.code(), Some(2));
        assert!(!dir.path().join("x.bin").exists());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // Wider than the weights: shapes named.
    let err = run(&|c| c["model_channels"] = 16.into());
    assert!(
        err.contains(
            "'model.enc.16x16_conv.weight' has shape [8, 3, 3, 3], the config needs [16, 3, 3, 3]"
        ),
        "{err}"
    );
    // No attention in the config: the file's attention tensors named as surplus.
    let err = run(&|c| c["attn_resolutions"] = serde_json::json!([]));
    assert!(
        err.contains("is not a parameter of this config's network"),
        "{err}"
    );
    assert!(err.contains("qkv"), "{err}");
    // NCSN++ settings are refused by name.
    let err = run(&|c| c["embedding_type"] = "fourier".into());
    assert!(err.contains("embedding_type 'fourier'"), "{err}");
    // A typo in a key is an error, not a silent default.
    let err = run(&|c| c["num_block"] = 1.into());
    assert!(err.contains("num_block"), "{err}");
}
