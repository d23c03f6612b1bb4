//! The `trainer` binary end to end: mixture -> stage 1 -> export -> sampler-core, resume
//! through the CLI, help text and errors.

use std::process::{Command, Output};

fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()
        .expect("run trainer")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn mixture_to_bundle_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    ok(&trainer(&[
        "make-mixture",
        "--components",
        "3",
        "--dim",
        "8",
        "--out",
        &p("gmm.bin"),
    ]));
    let args = [
        "finetune",
        "--base",
        &p("gmm.bin"),
        "--run",
        &p("run"),
        "--t",
        "4",
        "--mode",
        "stage1-only",
        "--rounds",
        "1",
        "--stage1-steps",
        "6",
        "--batch",
        "8",
        "--disc-batch",
        "8",
        "--teacher-pool",
        "16",
        "--teacher-steps",
        "16",
        "--checkpoint-every",
        "2",
        "--quiet",
    ];
    let mut first = args.to_vec();
    first.extend(["--stop-after", "3"]);
    let out = ok(&trainer(&first));
    assert!(out.contains("3 of 6 steps"), "{out}");
    let out = ok(&trainer(&args));
    assert!(out.contains("6 of 6 steps"), "{out}");
    assert_eq!(
        std::fs::read_to_string(p("run/log.jsonl"))
            .unwrap()
            .lines()
            .count(),
        6
    );
    ok(&trainer(&[
        "export",
        "--run",
        &p("run"),
        "--out",
        &p("out.bin"),
    ]));
    let b = sampler_core::Bundle::from_bytes(&std::fs::read(p("out.bin")).unwrap()).unwrap();
    assert_eq!(b.schedule.len(), 4);
    assert!(
        b.provenance.schedule_method.contains("stage1-only"),
        "{}",
        b.provenance.schedule_method
    );
}

#[test]
fn help_documents_every_flag() {
    let out = ok(&trainer(&["finetune", "--help"]));
    for flag in [
        "--base",
        "--rounds",
        "--stage1-steps",
        "--stage2-steps",
        "--gamma",
        "--lr-schedule",
        "--lr-weights",
        "--warp",
        "--disc-grad",
        "--disc-target",
        "--mode",
        "--seed",
        "--run",
        "--device",
        "--stop-after",
        "--data",
        "--resize",
        "--labels",
        "--skip-bad",
    ] {
        assert!(out.contains(flag), "finetune --help lacks {flag}");
    }
    let out = ok(&trainer(&["pretrain", "--help"]));
    for flag in [
        "--steps",
        "--batch",
        "--lr",
        "--ema-decay",
        "--net",
        "--model-channels",
        "--checkpoint-every",
    ] {
        assert!(out.contains(flag), "pretrain --help lacks {flag}");
    }
}

#[test]
fn bad_input_is_one_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    std::fs::write(p("junk.bin"), b"not a bundle").unwrap();
    std::fs::create_dir_all(p("imgs")).unwrap();
    std::fs::write(p("imgs/broken.png"), b"\x89PNG broken").unwrap();
    for (args, needle) in [
        (
            vec!["finetune", "--base", &p("missing.bin"), "--run", &p("r1")],
            "cannot read base bundle",
        ),
        (
            vec!["finetune", "--base", &p("junk.bin"), "--run", &p("r2")],
            "not a fewstep bundle",
        ),
        (vec!["pretrain", "--run", &p("r3")], "needs --data"),
        (
            vec!["pretrain", "--run", &p("r4"), "--data", &p("imgs")],
            "broken.png",
        ),
        (
            vec!["export", "--run", &p("nothing"), "--out", &p("x.bin")],
            "no checkpoint",
        ),
    ] {
        let o = trainer(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: expected '{needle}' in {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn conditional_unet_on_shipped_digits_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let out = ok(&trainer(&[
        "pretrain",
        "--data",
        "digits",
        "--labels",
        "--run",
        &p("base"),
        "--steps",
        "3",
        "--batch",
        "8",
        "--model-channels",
        "8",
        "--channel-mult",
        "1,2",
        "--num-blocks",
        "1",
        "--quiet",
    ]));
    assert!(out.contains("3 of 3 steps"), "{out}");
    ok(&trainer(&[
        "export",
        "--run",
        &p("base"),
        "--out",
        &p("digits.bin"),
        "--t",
        "4",
    ]));
    let bytes = std::fs::read(p("digits.bin")).unwrap();
    let sampler =
        sampler_core::Sampler::from_bundle(&bytes, &burn::tensor::Device::flex()).unwrap();
    let b = sampler.bundle();
    assert_eq!(
        (b.label_count, b.image.height, b.provenance.dataset.as_str()),
        (10, 8, "digits")
    );
    let images = sampler.generate(1, 2, Some(3)).unwrap();
    assert_eq!(images.data.len(), 2 * 64);
}
