//! `trainer eval`: samplers compared at equal numbers of denoiser evaluations
//! (docs/method.md §6). The flags become an [`EvalConfig`]; this file loads what the rulers
//! need (the real images, the feature classifier, Inception), `crate::eval` runs the rows
//! and writes the reports, and a summary goes to stdout.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Args;
use sampler_core::bundle::{Bundle, SolverKind};

use super::{ClassifierArgs, batch_arg, count_arg, list_default, load_named, steps_arg};
use crate::classifier::TrainedClassifier;
use crate::data::Dataset;
use crate::eval::measure::CLASSIFIER_BATCH;
use crate::eval::{EvalConfig, RealSet, Setting, run_eval, to_markdown, write_reports};
use crate::inception::Inception;

/// The defaults of the flags: [`EvalConfig::new`]'s.
fn defaults() -> EvalConfig {
    EvalConfig::new(PathBuf::new())
}

fn solver_names(kinds: &[SolverKind]) -> Vec<&'static str> {
    kinds.iter().map(|k| k.name()).collect()
}

/// One entry of `--solvers`: a solver's name, or `none` (no training-free rows).
fn solver_arg(s: &str) -> Result<Option<SolverKind>, String> {
    match s {
        "none" => Ok(None),
        name => name.parse().map(Some),
    }
}

/// The flags of `trainer eval`.
#[derive(Args, Debug)]
pub(super) struct EvalArgs {
    /// The base (pre-trained) bundle.
    #[arg(long, value_name = "FILE")]
    base: PathBuf,
    /// A fine-tuned row: NAME=PATH, where {T} in PATH stands for T (repeatable), e.g.
    /// --tuned "two-stage=runs/t{T}.bin". NAME may hold '=' ("rho=7"), PATH may not (the
    /// last '=' splits them). A T whose file is missing is left out of the row; a row with
    /// no file at any T is an error.
    #[arg(long, value_name = "NAME=PATH")]
    tuned: Vec<String>,
    /// Numbers of denoiser evaluations to compare at.
    #[arg(long, default_value = list_default(&defaults().ts), value_delimiter = ',')]
    t: Vec<usize>,
    /// Held-out real images for the Frechet distances (shipped name, .fsd file or folder).
    #[arg(long, value_name = "NAME|PATH")]
    real: Option<String>,
    #[command(flatten)]
    classifier: ClassifierArgs,
    /// Resize the real and classifier images to N x N (to match the model).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    resize: Option<u32>,
    /// Images generated per row and T.
    #[arg(long, default_value_t = defaults().count, value_parser = count_arg)]
    count: usize,
    /// Images compared with the reference solution (the first --count noises).
    #[arg(long, default_value_t = defaults().ref_count, value_parser = count_arg)]
    ref_count: usize,
    /// Levels of the reference Heun solve.
    #[arg(long, default_value_t = defaults().reference_steps, value_parser = steps_arg)]
    reference_steps: usize,
    /// Seed of the noises.
    #[arg(long, default_value_t = defaults().seed)]
    seed: u64,
    /// Images per batch.
    #[arg(long, default_value_t = defaults().batch, value_parser = batch_arg)]
    batch: usize,
    /// Images per sample grid.
    #[arg(long, default_value_t = defaults().grid)]
    grid: usize,
    /// Title of the table and figures (default: the base bundle's data set).
    #[arg(long)]
    title: Option<String>,
    /// Output directory (results.md, results.csv, rulers.csv, figures, grids/).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Also FID and KID against --real (Inception-v3 features, pytorch-fid's conventions;
    /// needs `python3 scripts/fetch_inception.py` once).
    #[arg(long)]
    fid: bool,
    /// The training-free solvers to run on EDM's levels of the base network, or `none` to
    /// evaluate only the --tuned rows (their free rows already measured: a third of an
    /// Inception-bound evaluation per row left out).
    #[arg(long, default_value = list_default(&solver_names(&defaults().solvers)), value_delimiter = ',', value_parser = solver_arg)]
    solvers: Vec<Option<SolverKind>>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

impl TryFrom<&EvalArgs> for EvalConfig {
    type Error = anyhow::Error;

    /// The comparison the flags ask for, with the `--tuned` rows parsed.
    fn try_from(a: &EvalArgs) -> Result<EvalConfig> {
        let mut tuned = Vec::new();
        for spec in &a.tuned {
            let Some((name, path)) = spec.rsplit_once('=') else {
                bail!("--tuned expects NAME=PATH, got '{spec}'");
            };
            if name.trim().is_empty() || path.is_empty() {
                bail!("--tuned expects NAME=PATH, got '{spec}'");
            }
            tuned.push((name.trim().to_string(), path.to_string()));
        }
        Ok(EvalConfig {
            base: a.base.clone(),
            tuned,
            ts: a.t.clone(),
            count: a.count,
            ref_count: a.ref_count,
            reference_steps: a.reference_steps,
            seed: a.seed,
            batch: a.batch,
            grid: a.grid,
            solvers: a.solvers.iter().flatten().copied().collect(),
        })
    }
}

/// Runs the comparison, writes its reports into `--out` and prints the table.
pub(super) fn run(a: EvalArgs) -> Result<()> {
    let config = EvalConfig::try_from(&a)?;
    let base_bytes = std::fs::read(&a.base)
        .with_context(|| format!("cannot read base bundle {}", a.base.display()))?;
    let base = Bundle::from_bytes(&base_bytes).with_context(|| format!("{}", a.base.display()))?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let plain = Device::flex();
    if a.fid && a.real.is_none() {
        bail!("--fid compares with --real images: pass --real");
    }
    let inception = if a.fid {
        Some(Inception::load_default()?)
    } else {
        None
    };
    let classifier = a
        .classifier
        .load_or_train(a.resize, a.seed, a.quiet, &plain)?;
    let real = match &a.real {
        Some(spec) => Some(real_set(
            &a,
            spec,
            &base,
            classifier.as_ref(),
            inception.as_ref(),
            &plain,
        )?),
        None => None,
    };
    let held_out_accuracy = match (&real, &classifier) {
        (Some((_, data)), Some(c)) => match &data.labels {
            Some(l) => Some(c.accuracy(&data.values, l, CLASSIFIER_BATCH, &plain)?),
            None => None,
        },
        _ => None,
    };

    let evaluated = run_eval(
        &config,
        real.as_ref().map(|(r, _)| r),
        classifier.as_ref(),
        inception.as_ref(),
        &a.out,
        a.quiet,
    )?;
    let title = a
        .title
        .clone()
        .unwrap_or_else(|| base.provenance.dataset.clone());
    let setting = Setting {
        title: &title,
        config: &config,
        base: &base,
        real: a.real.as_deref().zip(real.as_ref().map(|(r, _)| r.count)),
        classifier_features: classifier.as_ref().map(|c| c.config.features),
        held_out_accuracy,
        fid: a.fid,
    };
    write_reports(&setting, &evaluated, &a.out)?;
    println!("{}", to_markdown(&evaluated.rows));
    if let Some(acc) = evaluated.reference_accuracy {
        println!("reference accuracy (base network, many-step Heun): {acc:.3}");
    }
    if let Some((pixel, cls)) = evaluated.reference_fd {
        let cls = cls.map_or(String::new(), |c| format!(", FD-cls {c:.3}"));
        println!("reference images (base network, many-step Heun): FD-pixel {pixel:.2}{cls}");
    }
    println!("wrote {}", a.out.join("results.md").display());
    Ok(())
}

/// The real images `spec` (labelled where a classifier will score them and the labels can
/// be read) and what the rulers need from them.
fn real_set(
    a: &EvalArgs,
    spec: &str,
    base: &Bundle,
    classifier: Option<&TrainedClassifier>,
    inception: Option<&Inception>,
    plain: &Device,
) -> Result<(RealSet, Dataset)> {
    let labelled = classifier.is_some();
    let data =
        load_named(spec, labelled, a.resize).or_else(|_| load_named(spec, false, a.resize))?;
    if data.shape != base.image {
        bail!(
            "--real images are {}x{}x{}, the model makes {}x{}x{}; use --resize",
            data.shape.channels,
            data.shape.height,
            data.shape.width,
            base.image.channels,
            base.image.height,
            base.image.width
        );
    }
    Ok((RealSet::new(&data, classifier, inception, plain)?, data))
}
