//! Run directories under stress (issue 11): a diverging run keeps a checkpoint it can resume
//! from with a lower learning rate, resumes may change only what does not change the steps
//! taken, nothing is rewritten before a checkpoint is accepted, one trainer per directory,
//! and inputs that would allocate without bound are refused with one line.

use std::path::Path;
use std::process::{Command, Output};

fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()
        .expect("run trainer")
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A tiny conditional U-Net on the shipped digits, checkpointing every step.
fn pretrain(run: &Path, extra: &[&str]) -> Output {
    // Flags given in `extra` replace the defaults below.
    let defaults = [
        ("--model-channels", "4"),
        ("--channel-mult", "1,2"),
        ("--num-blocks", "1"),
        ("--batch", "16"),
        ("--steps", "20"),
        ("--checkpoint-every", "1"),
    ];
    let mut args = vec![
        "pretrain",
        "--data",
        "digits",
        "--labels",
        "--quiet",
        "--run",
        run.to_str().unwrap(),
    ];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    trainer(&args)
}

fn log_lines(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("log.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn a_diverging_run_keeps_a_checkpoint_it_can_resume_from() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // Diverges at once: no checkpoint is claimed and none is left.
    let o = pretrain(&run, &["--lr", "1e9"]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("before the first checkpoint"),
        "{}",
        err(&o)
    );
    assert!(!run.join("checkpoint.bin").exists());
    // Three good steps, then a learning rate that diverges.
    assert!(
        pretrain(&run, &["--lr", "1e-3", "--stop-after", "3"])
            .status
            .success()
    );
    let o = pretrain(&run, &["--lr", "1e12"]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("checkpoint of step 3 is kept"),
        "{}",
        err(&o)
    );
    let errors: Vec<String> = err(&o)
        .lines()
        .filter(|l| l.starts_with("error"))
        .map(String::from)
        .collect();
    assert_eq!(errors.len(), 1, "{}", err(&o));
    // The kept checkpoint resumes with a lower rate; the change is in the log.
    let o = pretrain(&run, &["--lr", "1e-3", "--stop-after", "6"]);
    assert!(o.status.success(), "{}", err(&o));
    let lines = log_lines(&run);
    let steps: Vec<u64> = lines
        .iter()
        .filter(|l| !l.contains("event"))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, [0, 1, 2, 3, 4, 5]);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"event\":\"resume\"") && l.contains("\"lr\""))
    );
    assert!(!run.join("run.lock").exists(), "the lock was not released");
}

#[test]
fn a_resume_may_change_the_rate_and_length_but_not_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    assert!(pretrain(&run, &["--stop-after", "2"]).status.success());
    let before = log_lines(&run);
    let o = pretrain(&run, &["--batch", "8"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("batch (16 -> 8)"), "{}", err(&o));
    assert_eq!(log_lines(&run), before, "a refused resume rewrote the log");
    // Longer is fine.
    let o = pretrain(&run, &["--steps", "25", "--stop-after", "3"]);
    assert!(o.status.success(), "{}", err(&o));
    let cfg = std::fs::read_to_string(run.join("config.json")).unwrap();
    assert!(cfg.contains("\"steps\": 25"), "{cfg}");
}

#[test]
fn a_checkpoint_of_another_model_is_refused_before_the_log_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    assert!(pretrain(&a, &["--stop-after", "2"]).status.success());
    // The same config in b, with a's checkpoint swapped for one of another seed's model:
    // same shapes, so it loads; a checkpoint of a different architecture must not.
    assert!(pretrain(&b, &["--stop-after", "4"]).status.success());
    let before = log_lines(&b);
    let other = dir.path().join("other");
    let o = trainer(&[
        "pretrain",
        "--data",
        "digits",
        "--labels",
        "--model-channels",
        "8",
        "--channel-mult",
        "1,2",
        "--num-blocks",
        "1",
        "--batch",
        "16",
        "--steps",
        "2",
        "--quiet",
        "--run",
        other.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", err(&o));
    std::fs::copy(other.join("checkpoint.bin"), b.join("checkpoint.bin")).unwrap();
    let o = pretrain(&b, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(!err(&o).contains("panicked"), "{}", err(&o));
    assert_eq!(
        log_lines(&b),
        before,
        "the log was cut before the checkpoint was accepted"
    );
}

#[test]
fn one_trainer_per_run_directory_and_damaged_configs_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    assert!(pretrain(&run, &["--stop-after", "1"]).status.success());
    // A live holder (this test process) blocks; a dead one is taken over.
    std::fs::write(run.join("run.lock"), format!("{}\n", std::process::id())).unwrap();
    let o = pretrain(&run, &["--stop-after", "2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("another trainer (process"), "{}", err(&o));
    if Path::new("/proc/self").exists() {
        std::fs::write(run.join("run.lock"), "4000000000\n").unwrap();
        assert!(pretrain(&run, &["--stop-after", "2"]).status.success());
        assert!(!run.join("run.lock").exists());
    }
    std::fs::remove_file(run.join("run.lock")).ok();
    std::fs::write(run.join("config.json"), "{ not json").unwrap();
    let o = pretrain(&run, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("config.json is damaged"), "{}", err(&o));
}

/// A PNG whose header claims `w x h` pixels, with no image data.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    let crc = crc32fast::hash(&ihdr);
    let mut png = Vec::new();
    png.extend_from_slice(&[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a]);
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc.to_be_bytes());
    png.extend_from_slice(&0u32.to_be_bytes());
    png.extend_from_slice(b"IEND");
    png.extend_from_slice(&crc32fast::hash(b"IEND").to_be_bytes());
    png
}

#[test]
fn inputs_that_would_allocate_without_bound_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let run = p("run");
    let run_s = run.to_str().unwrap();
    // Flags.
    for (args, needle) in [
        (
            vec![
                "pretrain", "--data", "digits", "--resize", "65536", "--run", run_s,
            ],
            "65536",
        ),
        (
            vec![
                "pretrain",
                "--data",
                "digits",
                "--batch",
                "100000000",
                "--run",
                run_s,
            ],
            "outside",
        ),
        (
            vec![
                "pretrain",
                "--data",
                "digits",
                "--model-channels",
                "18",
                "--run",
                run_s,
            ],
            "GroupNorm",
        ),
        (
            vec![
                "pretrain",
                "--data",
                "digits",
                "--max-memory",
                "1M",
                "--run",
                run_s,
            ],
            "more than --max-memory 1.0 MiB",
        ),
    ] {
        let o = trainer(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", err(&o));
        assert!(err(&o).contains(needle), "{args:?}: {}", err(&o));
        assert!(!err(&o).contains("panicked"), "{}", err(&o));
    }
    // A data file whose label field claims 2^32 - 1 classes.
    let header = [1u32, 1, 2, 2, u32::MAX];
    let mut file = Vec::new();
    file.extend_from_slice(b"FSDATA1\0");
    for v in header {
        file.extend_from_slice(&v.to_le_bytes());
    }
    file.extend_from_slice(&[0, 1, 2, 3, 7]);
    std::fs::write(p("huge-labels.fsd"), &file).unwrap();
    let o = trainer(&[
        "pretrain",
        "--data",
        p("huge-labels.fsd").to_str().unwrap(),
        "--labels",
        "--run",
        run_s,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("at most 256"), "{}", err(&o));
    // A 16000 x 16000 PNG.
    std::fs::create_dir_all(p("big/a")).unwrap();
    std::fs::write(p("big/a/huge.png"), png_header_only(16000, 16000)).unwrap();
    let o = trainer(&[
        "pretrain",
        "--data",
        p("big").to_str().unwrap(),
        "--run",
        run_s,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("huge.png"), "{}", err(&o));
    // --labels with an image in the folder root.
    std::fs::create_dir_all(p("lab/cat")).unwrap();
    image::GrayImage::new(4, 4)
        .save(p("lab/cat/a.png"))
        .unwrap();
    image::GrayImage::new(4, 4)
        .save(p("lab/stray.png"))
        .unwrap();
    let o = trainer(&[
        "pretrain",
        "--data",
        p("lab").to_str().unwrap(),
        "--labels",
        "--run",
        run_s,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("in no class folder"), "{}", err(&o));
}

/// Checkpoints written before the fine-tuning resume state existed (the same header, a
/// body that ends after the schedule optimizer) still load, with an empty resume state; new
/// ones round-trip it.
#[test]
fn checkpoints_without_the_resume_state_still_load() {
    use trainer::run::{Checkpoint, ResumeState, RunDir, TrajectoryState};
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(&dir.path().join("run")).unwrap();
    let mut ck = Checkpoint {
        step: 7,
        logits: Some(vec![0.5, -1.0]),
        ..Default::default()
    };
    let old_body = postcard::to_allocvec(&ck).unwrap();
    let mut old = b"FEWSTCK1".to_vec();
    old.extend_from_slice(&sampler_core::bundle::crc32(&old_body).to_le_bytes());
    old.extend_from_slice(&old_body);
    std::fs::write(run.checkpoint_path(), &old).unwrap();
    assert_eq!(run.load_checkpoint().unwrap(), Some(ck.clone()));

    ck.resume = ResumeState {
        teacher_targets: Some((2, vec![1.0, 2.5])),
        trajectories: Some(TrajectoryState {
            round: 2,
            states: vec![vec![0.25; 2], vec![-3.0; 2]],
            cursor: 1,
        }),
    };
    run.save_checkpoint(&ck).unwrap();
    assert_eq!(run.load_checkpoint().unwrap(), Some(ck));
}
