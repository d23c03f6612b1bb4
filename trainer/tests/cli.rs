//! The `trainer` binary end to end: mixture -> stage 1 -> export -> sampler-core, resume
//! through the CLI, help text and errors.

mod common;
use common::{ok, trainer};

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
fn trajectory_cache_flag_runs_with_the_paper_gradient_and_is_refused_otherwise() {
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
    let gmm = p("gmm.bin");
    let run = |name: &str, grad: &str| {
        let run_dir = p(name);
        trainer(&[
            "finetune",
            "--base",
            &gmm,
            "--run",
            &run_dir,
            "--t",
            "4",
            "--mode",
            "stage1-only",
            "--rounds",
            "2",
            "--stage1-steps",
            "4",
            "--batch",
            "8",
            "--disc-batch",
            "8",
            "--teacher-pool",
            "8",
            "--teacher-steps",
            "8",
            "--disc-grad",
            grad,
            "--traj-refresh",
            "2",
            "--quiet",
        ])
    };
    let out = ok(&run("cached", "paper"));
    assert!(out.contains("8 of 8 steps"), "{out}");
    let cfg = std::fs::read_to_string(p("cached/config.json")).unwrap();
    assert!(cfg.contains("\"traj_refresh\": 2"), "{cfg}");
    let o = run("refused", "exact");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--disc-grad paper") && !err.contains("panicked"),
        "{err}"
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
        "--traj-refresh",
        "--teacher",
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
    let digits8 = concat!(env!("CARGO_MANIFEST_DIR"), "/../bundles/digits8.bin");
    for (args, needle) in [
        (
            vec![
                "finetune",
                "--base",
                digits8,
                "--run",
                &p("r5"),
                "--data",
                "digits",
                "--labels",
                "--teacher",
                "base",
                "--disc-target",
                "data",
            ],
            "--teacher base chooses the teacher target's network",
        ),
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
            vec![
                "pretrain",
                "--run",
                &p("r6"),
                "--data",
                "digits",
                "--devices",
                "0",
            ],
            "--devices",
        ),
        (
            vec![
                "pretrain",
                "--run",
                &p("r7"),
                "--data",
                "digits",
                "--dropout",
                "1.5",
            ],
            "--dropout in [0, 1)",
        ),
        (
            vec![
                "pretrain",
                "--run",
                &p("r8"),
                "--data",
                "digits",
                "--preset",
                "cifar10",
                "--num-blocks",
                "2",
            ],
            "--num-blocks",
        ),
        (
            vec!["pretrain", "--run", &p("r4"), "--data", &p("imgs")],
            "broken.png",
        ),
        (
            vec!["export", "--run", &p("nothing"), "--out", &p("x.bin")],
            "no checkpoint",
        ),
        (
            vec!["bench", "--batch", "4", "--disc-batch", "8"],
            "--disc-batch must be between 1 and --batch (4)",
        ),
        (vec!["bench", "--disc-batch", "0"], "--disc-batch must be"),
        (
            vec![
                "eval",
                "--base",
                digits8,
                "--solvers",
                "none",
                "--out",
                &p("e1"),
            ],
            "nothing to evaluate",
        ),
        (
            vec![
                "eval",
                "--base",
                digits8,
                "--solvers",
                "rk4",
                "--out",
                &p("e2"),
            ],
            "unknown solver 'rk4'",
        ),
        // The last '=' splits NAME from PATH: a row name may say "T = 8".
        (
            vec![
                "eval",
                "--base",
                digits8,
                "--tuned",
                "learned at T = 8=no/such/t{T}.bin",
                "--out",
                &p("e3"),
            ],
            "--tuned row 'learned at T = 8': no bundle at 'no/such/t{T}.bin' for any T",
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

/// `--teacher` defaults to the frozen base network where stage 2 is distillation (two-stage
/// with a solver other than Euler, stage 2 on L_disc) and to the shipped weights elsewhere; a
/// flag overrides it.
#[test]
fn teacher_default_follows_the_solver_and_mode() {
    let dir = tempfile::tempdir().unwrap();
    let digits8 = concat!(env!("CARGO_MANIFEST_DIR"), "/../bundles/digits8.bin");
    for (i, (extra, expected)) in [
        (vec!["--solver", "ipndm"], "Base"),
        (vec!["--solver", "ipndm", "--teacher", "shipped"], "Shipped"),
        (
            vec!["--solver", "ipndm", "--stage2-loss", "bound"],
            "Shipped",
        ),
        (vec![], "Shipped"),
        (
            vec!["--solver", "dpmpp2m", "--mode", "stage1-only"],
            "Shipped",
        ),
        (vec!["--teacher", "base"], "Base"),
    ]
    .into_iter()
    .enumerate()
    {
        let run = dir.path().join(format!("r{i}"));
        let run_s = run.to_string_lossy().into_owned();
        let mut args = vec![
            "finetune",
            "--base",
            digits8,
            "--run",
            &run_s,
            "--data",
            "digits",
            "--labels",
            "--rounds",
            "1",
            "--stage1-steps",
            "1",
            "--stage2-steps",
            "1",
            "--batch",
            "4",
            "--disc-batch",
            "4",
            "--teacher-pool",
            "4",
            "--teacher-steps",
            "2",
            "--quiet",
        ];
        args.extend(extra.iter().copied());
        ok(&trainer(&args));
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["teacher"], expected, "{extra:?}");
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
        // Labels split over two replicas (data parallel) with the images they belong to.
        "--devices",
        "2",
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

    // The export is a version-2 bundle the micro runtime reads; --bundle re-encodes it with
    // int8 weights: a quarter of the weights' size, the same image within int8's error.
    assert_eq!(sampler_core::Bundle::version_of(&bytes).unwrap(), 2);
    let out = ok(&trainer(&[
        "export",
        "--bundle",
        &p("digits.bin"),
        "--weights",
        "int8",
        "--name",
        "digits-int8",
        "--out",
        &p("digits-int8.bin"),
    ]));
    assert!(out.contains("int8 weights"), "{out}");
    let int8 = std::fs::read(p("digits-int8.bin")).unwrap();
    assert!(
        int8.len() < bytes.len() / 2,
        "{} vs {}",
        int8.len(),
        bytes.len()
    );
    let m = sampler_core::micro::MicroSampler::new(&int8).unwrap();
    assert_eq!(m.weight_dtype(), sampler_core::pack::WeightDtype::I8);
    assert_eq!(m.bundle().name, "digits-int8");
    let quantized = sampler_core::Sampler::from_bundle(&int8, &burn::tensor::Device::flex())
        .unwrap()
        .generate(1, 2, Some(3))
        .unwrap();
    let diff = images
        .data
        .iter()
        .zip(&quantized.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff > 0.0 && diff < 0.1, "int8 vs f32: {diff}");
    // --run and --bundle exclude each other; an unknown weight type is one line.
    let both = trainer(&[
        "export",
        "--run",
        &p("base"),
        "--bundle",
        &p("digits.bin"),
        "--out",
        &p("x.bin"),
    ]);
    assert_eq!(both.status.code(), Some(2));
    let bad = trainer(&[
        "export",
        "--bundle",
        &p("digits.bin"),
        "--weights",
        "int4",
        "--out",
        &p("x.bin"),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("choose f32, f16 or int8"), "{err}");
}

/// `trainer eval` end to end on a tiny model (the CI smoke test of issue 5): every row and T
/// appear, a fine-tuned row that is the base bundle itself reproduces the Euler baseline's
/// numbers exactly, the classifier is saved and a rerun with it is deterministic.
#[test]
fn eval_smoke_on_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    // A 2-step tiny U-Net of `seed`, exported with T = 4.
    let base = |run: &str, seed: &str, out: &str| {
        ok(&trainer(&[
            "pretrain",
            "--data",
            "digits",
            "--labels",
            "--run",
            &p(run),
            "--seed",
            seed,
            "--steps",
            "2",
            "--batch",
            "8",
            "--model-channels",
            "4",
            "--channel-mult",
            "1,2",
            "--num-blocks",
            "1",
            "--quiet",
        ]));
        ok(&trainer(&[
            "export",
            "--run",
            &p(run),
            "--out",
            &p(out),
            "--t",
            "4",
        ]));
    };
    base("base", "0", "base.bin");
    std::fs::copy(p("base.bin"), p("same4.bin")).unwrap();
    // Other weights: another seed.
    base("other", "1", "other4.bin");
    let eval = |out: &str, train_classifier: bool, t: &str, extra: &[&str]| {
        let mut args: Vec<String> = [
            "eval",
            "--base",
            &p("base.bin"),
            "--tuned",
            &format!("same={}", p("same{T}.bin")),
            "--tuned",
            &format!("other={}", p("other{T}.bin")),
            "--t",
            t,
            "--real",
            "digits",
            "--classifier",
            &p("cls.bin"),
            "--count",
            "24",
            "--ref-count",
            "6",
            "--reference-steps",
            "8",
            "--batch",
            "10",
            "--grid",
            "10",
            "--out",
            &p(out),
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if train_classifier {
            args.extend(
                ["--classifier-data", "digits", "--classifier-steps", "3"].map(String::from),
            );
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&trainer(&args));
        std::fs::read_to_string(dir.path().join(out).join("results.csv")).unwrap()
    };
    let csv = eval("first", true, "3,4", &[]);
    assert!(dir.path().join("cls.bin").exists());
    let rows: Vec<Vec<String>> = csv
        .lines()
        .skip(1)
        .map(|l| {
            // Row names are quoted and contain commas.
            let (head, rest) = l.split_once(",\"").unwrap();
            let (name, tail) = rest.split_once("\",").unwrap();
            let mut v = vec![head.to_string(), name.to_string()];
            v.extend(tail.split(',').map(str::to_string));
            v
        })
        .collect();
    // T = 3: the five training-free rows; T = 4: those and the `same` and `other` rows.
    assert_eq!(rows.len(), 12, "{csv}");
    assert!(rows.iter().any(|r| r[1] == "iPNDM, EDM rho=7"), "{csv}");
    let find = |name: &str, t: &str| {
        rows.iter()
            .find(|r| r[1] == name && r[3] == t)
            .unwrap_or_else(|| panic!("row {name} T={t} missing:\n{csv}"))
    };
    assert!(rows.iter().all(|r| r[1] != "same" || r[3] == "4"));
    // With three levels DPM-Solver++(2M)'s only second-order step is the one into s_min,
    // which its first-order-last-step form takes as Euler: the same samples, so the same
    // truncation error and distances. At T = 4 it has one second-order step left.
    let lof = "DPM-Solver++(2M), first-order last step, EDM rho=7";
    for col in [5, 7, 8] {
        assert_eq!(
            find(lof, "3")[col],
            find("Euler, EDM rho=7", "3")[col],
            "{csv}"
        );
    }
    assert_ne!(find(lof, "4")[5], find("Euler, EDM rho=7", "4")[5], "{csv}");
    let euler = find("Euler, EDM rho=7", "4");
    let same = find("same", "4");
    // nfe, both trunc RMSEs, FD-pixel, FD-cls and accuracy agree; wall time may not. The
    // levels agree to f32 rounding (the bundle's come from s_min in f64, eval's from the
    // f32 one).
    for col in [4, 5, 6, 7, 8, 9] {
        assert_eq!(euler[col], same[col], "column {col}:\n{csv}");
    }
    // Base weights: the own reference is the base's. Other weights: measured against their
    // own network's solution, which differs from the base network's.
    assert_eq!(euler[5], euler[6], "{csv}");
    let other = find("other", "4");
    let (own, vs_base): (f64, f64) = (other[5].parse().unwrap(), other[6].parse().unwrap());
    assert!(own > 0.0 && (own - vs_base).abs() > 1e-4 * vs_base, "{csv}");
    let levels =
        |r: &[String]| -> Vec<f64> { r[12].split(' ').map(|v| v.parse().unwrap()).collect() };
    for (a, b) in levels(euler).iter().zip(levels(same)) {
        assert!((a - b).abs() <= 1e-6 * a, "{a} vs {b}");
    }
    assert_eq!(
        find("Heun, EDM rho=7", "4")[4],
        "3",
        "Heun at NFE 4 uses 2 levels"
    );
    assert_eq!(find("DPM-Solver++(2M), EDM rho=7", "3")[4], "3");
    for r in &rows {
        for col in [5, 6, 7, 8, 9] {
            let v: f64 = r[col].parse().unwrap_or_else(|_| panic!("{col} in {r:?}"));
            assert!(v.is_finite() && v >= 0.0, "{r:?}");
        }
    }
    for f in [
        "results.md",
        "trunc_rmse_vs_t.png",
        "fd_pixel_vs_t.png",
        "fd_cls_vs_t.png",
        "accuracy_vs_t.png",
        "grids/same-t4.png",
        "grids/euler-edm-rho-7-t3.png",
    ] {
        assert!(dir.path().join("first").join(f).exists(), "{f} missing");
    }
    // Both tuned bundles were exported on EDM's levels: the rulers' table says so, and
    // tells the base's own weights (a copy) from another network's.
    let rulers = std::fs::read_to_string(dir.path().join("first/rulers.csv")).unwrap();
    assert!(rulers.contains(",4,\"same\",euler,edm,base,"), "{rulers}");
    assert!(
        rulers.contains(",4,\"other\",euler,edm,finetuned,"),
        "{rulers}"
    );
    // The base network's reference images are scored too.
    let md = std::fs::read_to_string(dir.path().join("first/results.md")).unwrap();
    assert!(md.contains("reference images the requested label"), "{md}");
    // --real is the base's own training set: the page must not pass it off as held out.
    assert!(
        md.contains("the images the base network was trained on"),
        "{md}"
    );
    // The saved classifier is reused: the same numbers again, and `--solvers none` leaves
    // out exactly the training-free rows. At one T there is no curve against T to draw.
    let again = eval("second", false, "4", &["--solvers", "none"]);
    let second = dir.path().join("second");
    assert!(second.join("grids/same-t4.png").exists());
    assert!(!second.join("fd_cls_vs_t.png").exists());
    let md = std::fs::read_to_string(second.join("results.md")).unwrap();
    assert!(!md.contains("_vs_t.png"), "{md}");
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| {
                let (head, rest) = l.split_once(",\"").unwrap_or((l, ""));
                let cols: Vec<&str> = rest.split(',').collect();
                // Drop the wall-time column (second to last).
                let keep: Vec<&str> = cols
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i + 2 != cols.len())
                    .map(|(_, c)| *c)
                    .collect();
                format!("{head},{}", keep.join(","))
            })
            .collect()
    };
    let tuned_only: Vec<String> = csv
        .lines()
        .enumerate()
        .filter(|(i, l)| {
            // The header, and the tuned rows at T = 4 (`title,"row",solver,T,...`).
            let t = l.split_once(",\"").map(|(_, r)| r.split(',').nth(2));
            *i == 0 || (!l.contains("EDM rho=7") && t == Some(Some("4")))
        })
        .map(|(_, l)| l.to_string())
        .collect();
    assert_eq!(tuned_only.len(), 1 + 2, "{csv}");
    assert_eq!(strip(&tuned_only.join("\n")), strip(&again));
}

/// `trainer eval` on an analytic mixture base reports the samples' NLL under the exact
/// density: for a single Gaussian N(mu, c^2 I) in d dimensions, samples of an accurate
/// solver score the closed form d/2 (1 + ln(2 pi c^2)) up to sampling noise.
#[test]
fn eval_reports_the_exact_nll_of_a_mixture_base() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    ok(&trainer(&[
        "make-mixture",
        "--components",
        "1",
        "--dim",
        "8",
        "--seed",
        "3",
        "--out",
        &p("gauss.bin"),
    ]));
    // The same mixture with 3 levels for Heun: 5 evaluations, whatever T it is listed at.
    let mut heun =
        sampler_core::Bundle::from_bytes(&std::fs::read(p("gauss.bin")).unwrap()).unwrap();
    heun.solver = sampler_core::bundle::SolverKind::Heun;
    heun.schedule = sampler_core::schedule::Schedule::edm(
        3,
        heun.schedule.s_min() as f64,
        heun.schedule.s_max() as f64,
    )
    .unwrap();
    std::fs::write(p("heun3.bin"), heun.to_bytes().unwrap()).unwrap();
    ok(&trainer(&[
        "eval",
        "--base",
        &p("gauss.bin"),
        "--tuned",
        &format!("tuned heun={}", p("heun{T}.bin")),
        "--t",
        "3,80",
        "--count",
        "2000",
        "--ref-count",
        "8",
        "--grid",
        "0",
        "--out",
        &p("ev"),
        "--quiet",
    ]));
    let bundle = sampler_core::Bundle::from_bytes(&std::fs::read(p("gauss.bin")).unwrap()).unwrap();
    let sampler_core::bundle::ModelSpec::Mixture(m) = &bundle.model else {
        panic!("not a mixture");
    };
    let c2 = (m.stds[0] as f64).powi(2);
    let closed = 4.0 * (1.0 + (2.0 * std::f64::consts::PI * c2).ln());
    let csv = std::fs::read_to_string(dir.path().join("ev/results.csv")).unwrap();
    // After the quoted row name: solver, T, nfe, trunc, trunc_base, fd_pixel, fd_cls,
    // accuracy, fid, kid, saturated, nll, ...
    let column = |row: &str, t: &str, k: usize| -> String {
        csv.lines()
            .skip(1)
            .filter_map(|l| l.split_once(",\"")?.1.split_once("\","))
            .map(|(name, tail)| (name, tail.split(',').collect::<Vec<_>>()))
            .find(|(name, cols)| *name == row && cols[1] == t)
            .unwrap_or_else(|| panic!("{row} T={t} missing:\n{csv}"))
            .1[k]
            .to_string()
    };
    let nll = |row: &str, t: &str| -> f64 { column(row, t, 11).parse().unwrap() };
    assert_eq!(column("tuned heun", "3", 2), "5", "{csv}");
    assert_eq!(column("Heun, EDM rho=7", "3", 2), "3", "{csv}");
    // 2,000 samples: the mean NLL's standard error is sqrt(d/2)/sqrt(2000) = 0.045. A
    // spread off by a fraction e moves it by about d e, so only an accurate solve (iPNDM
    // with 80 levels) is held to the closed form.
    let ipndm = nll("iPNDM, EDM rho=7", "80");
    assert!((ipndm - closed).abs() < 0.15, "{ipndm} vs {closed}\n{csv}");
    assert!(nll("Euler, EDM rho=7", "3").is_finite());
    let md = std::fs::read_to_string(dir.path().join("ev/results.md")).unwrap();
    assert!(md.contains("| NLL |"), "{md}");
}

/// With a reference solution for every sample, `trainer eval` scores the reference images
/// themselves: with `--reference-steps 2` the reference is the Heun row at T = 3 (two
/// levels, three evaluations), so their FD-pixel must be that row's, digit for digit.
#[test]
fn eval_scores_the_reference_images_when_every_sample_has_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    ok(&trainer(&[
        "pretrain",
        "--data",
        "digits",
        "--run",
        &p("base"),
        "--steps",
        "2",
        "--batch",
        "8",
        "--model-channels",
        "4",
        "--channel-mult",
        "1,2",
        "--num-blocks",
        "1",
        "--quiet",
    ]));
    ok(&trainer(&[
        "export",
        "--run",
        &p("base"),
        "--out",
        &p("base.bin"),
        "--t",
        "3",
    ]));
    ok(&trainer(&[
        "eval",
        "--base",
        &p("base.bin"),
        "--t",
        "3",
        "--real",
        "digits",
        "--count",
        "12",
        "--ref-count",
        "12",
        "--reference-steps",
        "2",
        "--grid",
        "0",
        "--out",
        &p("ev"),
        "--quiet",
    ]));
    let csv = std::fs::read_to_string(dir.path().join("ev/results.csv")).unwrap();
    // After the quoted row name: solver, T, nfe, trunc, trunc_base, fd_pixel, ...
    let heun = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(",\"")?.1.split_once("\","))
        .find(|(name, _)| *name == "Heun, EDM rho=7")
        .map(|(_, tail)| tail.split(',').map(str::to_string).collect::<Vec<_>>())
        .unwrap_or_else(|| panic!("no Heun row:\n{csv}"));
    // That row is the reference itself: zero truncation error.
    assert_eq!(heun[3].parse::<f64>().unwrap(), 0.0, "{csv}");
    let fd: f64 = heun[5].parse().unwrap();
    let md = std::fs::read_to_string(dir.path().join("ev/results.md")).unwrap();
    assert!(
        md.contains(&format!("score FD-pixel {fd:.2}")),
        "{fd:.2} not in\n{md}"
    );
    // Without a reference for every sample, no such sentence.
    ok(&trainer(&[
        "eval",
        "--base",
        &p("base.bin"),
        "--t",
        "3",
        "--real",
        "digits",
        "--count",
        "12",
        "--ref-count",
        "6",
        "--reference-steps",
        "2",
        "--grid",
        "0",
        "--out",
        &p("ev2"),
        "--quiet",
    ]));
    let md2 = std::fs::read_to_string(dir.path().join("ev2/results.md")).unwrap();
    assert!(!md2.contains("The reference images themselves"), "{md2}");
}
