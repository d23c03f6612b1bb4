//! The `trainer` command line: clap structs that only parse, turned into validated run
//! configs by `into_config`, then handed to the library.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use sampler_core::bundle::{Bundle, ImageShape, ModelSpec, Provenance, SolverKind};
use sampler_core::gmm::Mixture;
use sampler_core::model::{MlpConfig, NetConfig, UNetConfig};
use sampler_core::pack::WeightDtype;
use sampler_core::precond::Precond;
use sampler_core::rng;
use sampler_core::schedule::{Schedule, Warp};

use crate::data::{Dataset, FolderOptions};
use crate::pretrain::PretrainConfig;
use crate::run::{RunDir, write_atomic};
use crate::two_stage::{DiscGrad, DiscTarget, FinetuneConfig, Mode, Teacher};

/// Train few-step diffusion samplers: pre-train an EDM denoiser, learn the T noise levels
/// and fine-tune the weights for them (two-stage optimization), export a bundle.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// EDM pre-training of a U-Net or MLP from scratch.
    Pretrain(PretrainArgs),
    /// The two-stage optimization (paper Algorithm 1) of a base bundle for T steps.
    Finetune(FinetuneArgs),
    /// Write the bundle of a run directory (EMA weights + T levels + provenance), convert a
    /// bundle, or write its network as an EDM state dict (--format safetensors).
    Export(ExportArgs),
    /// Turn an NVlabs/edm SongUNet state dict (+ its config JSON) into a base bundle.
    Import(ImportArgs),
    /// Write an analytic Gaussian-mixture bundle (an exact model for experiments and tests).
    MakeMixture(MixtureArgs),
    /// Time pre-training, stage 1 (exact and paper gradients) and stage 2 steps.
    Bench(crate::bench::BenchArgs),
    /// Compare samplers at equal NFE: EDM-schedule Euler / Heun / DPM-Solver++(2M) on the
    /// base bundle and Euler on fine-tuned bundles; table, CSV, figures and sample grids.
    Eval(EvalArgs),
    /// FID and KID between real and generated images in Inception-v3's features, with
    /// pytorch-fid's conventions (needs `python3 scripts/fetch_inception.py` once).
    Fid(FidArgs),
}

#[derive(Args, Debug)]
struct FidArgs {
    /// The real images: a shipped set (mnist-test, ...), a .fsd(.gz) file or a folder of
    /// PNG/JPEG images.
    #[arg(long, value_name = "NAME|PATH")]
    real: String,
    /// The generated images, in the same forms (e.g. a folder sampler-cli wrote).
    #[arg(long, value_name = "NAME|PATH")]
    fake: String,
    /// Print one JSON object ({"fid", "kid", "n_real", "n_fake"}) instead of text.
    #[arg(long)]
    json: bool,
    /// The converted Inception weights (default: $FEWSTEP_CACHE or ~/.cache/fewstep,
    /// inception-2015-12-05.safetensors).
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// The base (pre-trained) bundle.
    #[arg(long, value_name = "FILE")]
    base: PathBuf,
    /// A fine-tuned row: NAME=PATH, where {T} in PATH stands for T (repeatable), e.g.
    /// --tuned "two-stage=runs/t{T}.bin". Missing files leave that T out of the row.
    #[arg(long, value_name = "NAME=PATH")]
    tuned: Vec<String>,
    /// Numbers of denoiser evaluations to compare at.
    #[arg(long, default_value = "5,8,10,12,15,20", value_delimiter = ',')]
    t: Vec<usize>,
    /// Held-out real images for the Frechet distances (shipped name, .fsd file or folder).
    #[arg(long, value_name = "NAME|PATH")]
    real: Option<String>,
    /// The feature classifier (FD-cls, accuracy): loaded if the file exists, otherwise
    /// trained on --classifier-data and saved there.
    #[arg(long, value_name = "FILE")]
    classifier: Option<PathBuf>,
    /// Labelled images to train the classifier on.
    #[arg(long, value_name = "NAME|PATH")]
    classifier_data: Option<String>,
    /// Adam steps of classifier training (batch 64; 4,000 steps reach 0.98+ on held-out
    /// MNIST).
    #[arg(long, default_value_t = 4000)]
    classifier_steps: u64,
    /// Resize the real and classifier images to N x N (to match the model).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    resize: Option<u32>,
    /// Images generated per row and T.
    #[arg(long, default_value_t = 500, value_parser = count_arg)]
    count: usize,
    /// Images compared with the reference solution (the first --count noises).
    #[arg(long, default_value_t = 64, value_parser = count_arg)]
    ref_count: usize,
    /// Levels of the reference Heun solve.
    #[arg(long, default_value_t = 256, value_parser = steps_arg)]
    reference_steps: usize,
    /// Seed of the noises.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per batch.
    #[arg(long, default_value_t = 250, value_parser = batch_arg)]
    batch: usize,
    /// Images per sample grid.
    #[arg(long, default_value_t = 50)]
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
    /// The training-free solvers to run on EDM's levels of the base network.
    #[arg(
        long,
        default_value = "euler,heun,dpmpp2m,ipndm",
        value_delimiter = ','
    )]
    solvers: Vec<SolverKind>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Where the training images come from.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Training data: a shipped set (mnist, mnist-test, faces, digits), a .fsd(.gz) file,
    /// or a folder of PNG/JPEG images (searched recursively).
    #[arg(long, value_name = "NAME|PATH")]
    data: Option<String>,
    /// Resize every image to N x N.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    resize: Option<u32>,
    /// Class-conditional: labels from a .fsd file, or from the first-level sub-folder names
    /// of an image folder.
    #[arg(long)]
    labels: bool,
    /// Skip unreadable or mismatched images (with a count) instead of stopping.
    #[arg(long)]
    skip_bad: bool,
}

impl DataArgs {
    fn load(&self) -> Result<Option<Dataset>> {
        let Some(path) = &self.data else {
            return Ok(None);
        };
        let opts = FolderOptions {
            resize: self.resize,
            labels: self.labels,
            skip_bad: self.skip_bad,
            channels: None,
        };
        let d = Dataset::load(path, &opts)?;
        if d.skipped > 0 {
            eprintln!(
                "warning: skipped {} unreadable or mismatched files",
                d.skipped
            );
        }
        eprintln!(
            "data: {} images {}x{}x{} from {}{}",
            d.len(),
            d.shape.channels,
            d.shape.height,
            d.shape.width,
            path,
            if d.label_count > 0 {
                format!(", {} classes", d.label_count)
            } else {
                String::new()
            }
        );
        Ok(Some(d))
    }
}

/// Options shared by the long-running commands.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Run directory (config.json, log.jsonl, checkpoint.bin); an existing one is resumed.
    #[arg(long, value_name = "DIR")]
    run: PathBuf,
    /// Seed of every random draw (initialization, batches, noise).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: u64,
    /// Stop (with a checkpoint) after this many steps in total; run again to resume.
    #[arg(long, value_name = "STEPS")]
    stop_after: Option<u64>,
    /// Compute device: flex (CPU), vulkan or cuda (the latter two need cargo features).
    #[arg(long, default_value = "flex")]
    device: String,
    /// Data parallelism: split each step's batch (pre-training, stage 2) over N devices of
    /// --device's kind and sum their gradients; the result equals one device's within f32
    /// round-off. On flex (one CPU device) the N shards run one after the other.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=64))]
    devices: u64,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Refuse to start a run estimated to need more memory than this (weights, optimizer,
    /// activations, data): bytes, or a number with K, M or G.
    #[arg(long, value_name = "SIZE", default_value = "8G", value_parser = sampler_core::fs::parse_size)]
    max_memory: u64,
}

#[derive(Args, Debug)]
struct PretrainArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Network: unet (EDM's DDPM++) or mlp.
    #[arg(long, default_value = "unet", value_parser = ["unet", "mlp"])]
    net: String,
    /// Named U-Net settings instead of the U-Net flags below: mnist (the shipped MNIST
    /// base: 16 channels, mult 1,2, one block) or cifar10 (EDM's DDPM++ CIFAR-10 network:
    /// 128 channels, mult 2,2,2, four blocks, attention at 16x16, dropout 0.13).
    #[arg(long, value_enum, conflicts_with_all = ["model_channels", "channel_mult", "num_blocks", "attn", "dropout"])]
    preset: Option<crate::model::Preset>,
    /// U-Net dropout before each block's second convolution (training only).
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// U-Net base channels.
    #[arg(long, default_value_t = 32)]
    model_channels: usize,
    /// U-Net channel multipliers per resolution, comma-separated.
    #[arg(long, default_value = "1,2,2", value_delimiter = ',')]
    channel_mult: Vec<usize>,
    /// U-Net residual blocks per resolution.
    #[arg(long, default_value_t = 2)]
    num_blocks: usize,
    /// Resolutions with self-attention, comma-separated (none by default).
    #[arg(long, value_delimiter = ',')]
    attn: Vec<usize>,
    /// MLP hidden width.
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// MLP residual blocks.
    #[arg(long, default_value_t = 3)]
    depth: usize,
    /// Optimizer steps.
    #[arg(long, default_value_t = 10_000)]
    steps: u64,
    /// Batch size.
    #[arg(long, default_value_t = 64, value_parser = batch_arg)]
    batch: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// EMA decay of the exported weights (warm-up: min(decay, (1+n)/(10+n))).
    #[arg(long, default_value_t = 0.999)]
    ema_decay: f64,
    /// EDM's sigma_data.
    #[arg(long, default_value_t = 0.5)]
    sigma_data: f32,
}

#[derive(Args, Debug)]
struct FinetuneArgs {
    /// The base bundle: a network (from `trainer export`) or an analytic mixture.
    #[arg(long, value_name = "FILE")]
    base: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    run: RunArgs,
    /// T: number of levels, i.e. denoiser evaluations of the Euler sampler.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(3..=1000))]
    t: u64,
    /// Which rows of paper Table 1: two-stage, stage1-only, stage2-only, edm-weight-finetune.
    #[arg(long, value_enum, default_value = "two-stage")]
    mode: Mode,
    /// Rounds of (stage 1, stage 2).
    #[arg(long, default_value_t = 4)]
    rounds: u64,
    /// N1: stage-1 (schedule) steps per round.
    #[arg(long, default_value_t = 50)]
    stage1_steps: u64,
    /// N2: stage-2 (weights) steps per round.
    #[arg(long, default_value_t = 100)]
    stage2_steps: u64,
    /// gamma: weight of L_disc against L_bound in stage 1.
    #[arg(long, default_value_t = 1.0)]
    gamma: f64,
    /// Adam learning rate of the schedule logits.
    #[arg(long, default_value_t = 2e-2)]
    lr_schedule: f64,
    /// Adam learning rate of the network weights (stage 2).
    #[arg(long, default_value_t = 2e-5)]
    lr_weights: f64,
    /// Space of the softmax increments: rho7 (v = 0 is EDM's schedule), log or linear.
    #[arg(long, default_value = "rho7")]
    warp: Warp,
    /// Gradient of L_disc: exact (autodiff through the sampler) or paper (Eq. 14).
    #[arg(long, value_enum, default_value = "exact")]
    disc_grad: DiscGrad,
    /// Target of L_disc: teacher (many-step Heun solution) or data (x + s_min eps).
    #[arg(long, value_enum, default_value = "teacher")]
    disc_target: DiscTarget,
    /// Batch size of L_bound and stage 2.
    #[arg(long, default_value_t = 32, value_parser = batch_arg)]
    batch: usize,
    /// Batch size of L_disc.
    #[arg(long, default_value_t = 32, value_parser = batch_arg)]
    disc_batch: usize,
    /// Heun steps of the teacher reference solution.
    #[arg(long, default_value_t = 64, value_parser = steps_arg)]
    teacher_steps: usize,
    /// Teacher (noise, solution) pairs computed per round.
    #[arg(long, default_value_t = 256, value_parser = count_arg)]
    teacher_pool: usize,
    /// Whose solution the teacher target is: shipped (the weights being fine-tuned,
    /// recomputed each round, so it moves with stage 2) or base (the base bundle's weights,
    /// frozen: stage 2 distils the T-step sampler toward the pre-trained network's ODE).
    /// Default: base for --mode two-stage with a solver other than euler (stage 2 is then
    /// that distillation), shipped otherwise.
    #[arg(long, value_enum)]
    teacher: Option<Teacher>,
    /// Trajectory cache of the paper gradient (--disc-grad paper, teacher target): keep the
    /// Euler states of the whole teacher pool and re-simulate each entry under the current
    /// levels once every this many steps (a 1/N share of the pool per step) instead of
    /// re-running the sampler for every batch. 0 turns the cache off.
    #[arg(long, default_value_t = 0, value_name = "N")]
    traj_refresh: u64,
    /// The solver to learn for: euler (the paper's), heun, dpmpp2m, ipndm. Other than
    /// euler, both stages optimize its L_disc through the unrolled solver (--mode stage1-only
    /// or two-stage, exact gradient, teacher target); the bundle records it.
    #[arg(long, default_value = "euler", value_name = "SOLVER")]
    solver: SolverKind,
    /// EMA decay of the exported weights.
    #[arg(long, default_value_t = 0.999)]
    ema_decay: f64,
    /// Largest level (default: the base bundle's s_0).
    #[arg(long)]
    s_max: Option<f64>,
    /// Smallest level (default: the base bundle's s_{T-1}).
    #[arg(long)]
    s_min: Option<f64>,
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// The run directory to export.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "bundle",
        conflicts_with = "bundle"
    )]
    run: Option<PathBuf>,
    /// Convert an existing bundle instead of a run: a version-1 bundle to version 2, or
    /// f32 weights to f16/int8 for a microcontroller.
    #[arg(long, value_name = "FILE")]
    bundle: Option<PathBuf>,
    /// The bundle to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Bundle name (default: the run directory's name).
    #[arg(long)]
    name: Option<String>,
    /// Free-text description.
    #[arg(long, default_value = "")]
    description: String,
    /// For pre-training runs: T of the EDM rho = 7 schedule written with the weights.
    #[arg(long, default_value_t = 8)]
    t: usize,
    /// How the network's matrices and convolution kernels are stored: f32 (exact), f16
    /// (half the size) or int8 (a quarter: symmetric per output channel, f32 scales).
    /// Biases and GroupNorm parameters stay f32. The firmware reads every one in place.
    #[arg(long, default_value = "f32", value_name = "TYPE")]
    weights: WeightDtype,
    /// What to write.
    #[arg(long, value_enum, default_value_t = ExportFormat::Bundle)]
    format: ExportFormat,
}

#[derive(Args, Debug)]
struct ImportArgs {
    /// The state dict: .safetensors or a PyTorch .pt of EDMPrecond/VPPrecond (keys
    /// `model.*`) or of a bare SongUNet. scripts/edm_to_safetensors.py makes one (and the
    /// config) from EDM's network-snapshot-*.pkl.
    #[arg(long = "from", value_name = "FILE")]
    from: PathBuf,
    /// The network's config JSON: SongUNet's arguments and the preconditioning.
    #[arg(long, value_name = "CONFIG.json")]
    config: PathBuf,
    /// The base bundle to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// T of the EDM rho = 7 levels written with the weights (ignored when the config
    /// carries levels, as `export --format safetensors` writes them).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=1000))]
    t: u32,
    /// How the weights are stored in the bundle (f32, f16 or int8).
    #[arg(long, default_value = "f32", value_name = "TYPE")]
    weights: WeightDtype,
}

/// What `export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ExportFormat {
    /// A fewstep bundle.
    Bundle,
    /// The network as an NVlabs/edm state dict (EDMPrecond keys and layouts) plus its
    /// config JSON beside it (`model.safetensors` -> `model.json`), for PyTorch.
    Safetensors,
}

#[derive(Args, Debug)]
struct MixtureArgs {
    /// Number of components.
    #[arg(long, default_value_t = 4)]
    components: usize,
    /// Dimension.
    #[arg(long, default_value_t = 16)]
    dim: usize,
    /// Seed of the means, stds and weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// T of the EDM schedule stored with it.
    #[arg(long, default_value_t = 8)]
    t: usize,
    /// The bundle to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// Runs the command the user asked for (the binary parses the command line with
/// `fewstep_host::parse` and maps errors to exit codes).
pub fn run(cli: Cli) -> Result<()> {
    dispatch(cli.command)
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Pretrain(a) => pretrain(a),
        Command::Finetune(a) => finetune(a),
        Command::Export(a) => export(a),
        Command::Import(a) => import(a),
        Command::MakeMixture(a) => make_mixture(a),
        Command::Bench(a) => crate::bench::run(a),
        Command::Eval(a) => eval(a),
        Command::Fid(a) => fid(a),
    }
}

fn fid(a: FidArgs) -> Result<()> {
    use crate::fid::{RealStats, dataset_features};
    use crate::inception::{Inception, weights_path};
    let inception = Inception::load(&a.weights.clone().unwrap_or_else(weights_path))?;
    let real = load_named(&a.real, false, None).with_context(|| format!("--real {}", a.real))?;
    let fake = load_named(&a.fake, false, None).with_context(|| format!("--fake {}", a.fake))?;
    for (flag, d) in [("--real", &real), ("--fake", &fake)] {
        if d.len() < 2 {
            bail!("{flag} has {} image(s); FID needs at least 2", d.len());
        }
    }
    let bar = crate::progress((real.len() + fake.len()) as u64, a.quiet);
    bar.set_message("images through Inception");
    let real_stats = RealStats::new(dataset_features(&inception, &real, &bar)?)?;
    let scores = real_stats.scores(&dataset_features(&inception, &fake, &bar)?)?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string(&scores)?);
    } else {
        println!(
            "FID {:.4}  KID {:.6}  ({} real, {} generated images; Inception-v3 2015-12-05 features)",
            scores.fid, scores.kid, scores.n_real, scores.n_fake
        );
    }
    Ok(())
}

fn load_named(spec: &str, labels: bool, resize: Option<u32>) -> Result<Dataset> {
    let opts = FolderOptions {
        resize,
        labels,
        skip_bad: false,
        channels: None,
    };
    Ok(Dataset::load(spec, &opts)?)
}

fn eval(a: EvalArgs) -> Result<()> {
    use crate::classifier::TrainedClassifier;
    use crate::eval::{EvalConfig, RealSet, plot_results, run_eval, to_csv, to_markdown};
    let mut tuned = Vec::new();
    for spec in &a.tuned {
        let Some((name, path)) = spec.split_once('=') else {
            bail!("--tuned expects NAME=PATH, got '{spec}'");
        };
        if name.trim().is_empty() || path.is_empty() {
            bail!("--tuned expects NAME=PATH, got '{spec}'");
        }
        tuned.push((name.trim().to_string(), path.to_string()));
    }
    let config = EvalConfig {
        base: a.base.clone(),
        tuned,
        ts: a.t.clone(),
        count: a.count,
        ref_count: a.ref_count,
        reference_steps: a.reference_steps,
        seed: a.seed,
        batch: a.batch,
        grid: a.grid,
        solvers: a.solvers.clone(),
    };
    let base_bytes = std::fs::read(&a.base)
        .with_context(|| format!("cannot read base bundle {}", a.base.display()))?;
    let base = Bundle::from_bytes(&base_bytes).with_context(|| format!("{}", a.base.display()))?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let plain = burn::tensor::Device::flex();
    if a.fid && a.real.is_none() {
        bail!("--fid compares with --real images: pass --real");
    }
    let inception = if a.fid {
        Some(crate::inception::Inception::load_default()?)
    } else {
        None
    };

    let classifier = match &a.classifier {
        Some(path) if path.exists() => Some(TrainedClassifier::load(path, &plain)?),
        Some(path) => {
            let spec = a.classifier_data.as_deref().context(
                "--classifier names no existing file: pass --classifier-data to train it",
            )?;
            let data = load_named(spec, true, a.resize)?;
            eprintln!(
                "training the feature classifier on {} images of {spec}",
                data.len()
            );
            let c = TrainedClassifier::train(
                &data,
                a.classifier_steps,
                64,
                a.seed,
                &crate::device("flex")?,
                a.quiet,
            )?;
            c.save(path)?;
            Some(c)
        }
        None => None,
    };
    let real = match &a.real {
        Some(spec) => {
            let labelled = classifier.is_some();
            let data = load_named(spec, labelled, a.resize)
                .or_else(|_| load_named(spec, false, a.resize))?;
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
            Some((
                RealSet::new(&data, classifier.as_ref(), inception.as_ref(), &plain)?,
                data,
            ))
        }
        None => None,
    };
    let held_out_accuracy = match (&real, &classifier) {
        (Some((_, data)), Some(c)) => match &data.labels {
            Some(l) => Some(c.accuracy(&data.values, l, 256, &plain)?),
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
    let results = evaluated.rows;
    let title = a
        .title
        .clone()
        .unwrap_or_else(|| base.provenance.dataset.clone());
    let sigma_data = match base.precond {
        Precond::Edm { sigma_data } => sigma_data as f64,
        _ => 0.5,
    };
    let figures = plot_results(&title, &results, sigma_data, &a.out)?;
    write_atomic(
        &a.out.join("results.csv"),
        to_csv(&title, &results).as_bytes(),
    )?;
    write_atomic(
        &a.out.join("rulers.csv"),
        crate::eval::to_rulers_csv(a.seed, a.count, &results, true).as_bytes(),
    )?;

    let mut md = format!("# {title}\n\n");
    md.push_str(&format!(
        "Base bundle `{}` ({}; {} training steps; levels in [{}, {}]). {} images per row from \
         seeds `image_seed({}, k)`, conditional models asked for label k mod L. Truncation \
         RMSE over the first {} of them against the Heun solution with {} levels of the row's \
         own network (\"vs base net\": of the base network; the two differ only for \
         fine-tuned weights){}. ",
        a.base.display(),
        base.provenance.dataset,
        base.provenance.training_steps,
        base.schedule.s_min(),
        base.schedule.s_max(),
        a.count,
        a.seed,
        a.ref_count.min(a.count),
        a.reference_steps,
        evaluated
            .reference_accuracy
            .map_or(String::new(), |acc| format!(
                "; the classifier gives the base network's reference images the requested label \
             {acc:.3} of the time"
            ))
    ));
    if let Some((r, _)) = &real {
        md.push_str(&format!(
            "Frechet distances against {} real images of `{}`",
            r.count,
            a.real.as_deref().unwrap_or_default()
        ));
        if a.real.as_deref() == Some(base.provenance.dataset.as_str()) {
            // Item 8 of issue 24: a Frechet distance to the training images says how close
            // the samples come to what the network saw, memorization included.
            md.push_str(
                " (the images the base network was trained on, not a held-out split: \
                 closeness to the training distribution, memorization included)",
            );
        }
        if let Some(c) = &classifier {
            md.push_str(&format!(
                "; FD-cls in the {}-dimensional penultimate layer of the project's classifier",
                c.config.features
            ));
            if let Some(acc) = held_out_accuracy {
                md.push_str(&format!(" (accuracy on those real images {:.3})", acc));
            }
        }
        md.push_str(if a.fid {
            ". FID and KID (KID x 1000 in the table) in Inception-v3's 2048-d features, \
             pytorch-fid's conventions; \"at 255\": the share of sample pixels clipped at white. "
        } else {
            ". These are not FID (no Inception network; --fid adds it). "
        });
        if let Some((pixel, cls)) = evaluated.reference_fd {
            md.push_str(&format!(
                "The reference images themselves (the ODE solved with {} Heun levels, one per \
                 sample) score FD-pixel {pixel:.2}{}: what a solver that matched the base \
                 network's ODE exactly would score. ",
                a.reference_steps,
                cls.map_or(String::new(), |c| format!(", FD-cls {c:.3}"))
            ));
        }
    }
    if matches!(base.model, sampler_core::bundle::ModelSpec::Mixture(_)) {
        md.push_str(
            "NLL: -mean ln p(x) of the samples under the exact mixture density, nats per \
             sample; not ranked, since samples collapsed toward the modes score below the \
             mixture's entropy. ",
        );
    }
    md.push_str("Wall time on this machine's CPU (flex backend), all images in batches.\n\n");
    md.push_str(&to_markdown(&results));
    md.push('\n');
    for f in &figures {
        md.push_str(&format!("![{f}]({f})\n"));
    }
    write_atomic(&a.out.join("results.md"), md.as_bytes())?;
    println!("{}", to_markdown(&results));
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

fn pretrain(a: PretrainArgs) -> Result<()> {
    let data = a.data.load()?.context("pre-training needs --data")?;
    let net = match a.net.as_str() {
        "mlp" => NetConfig::Mlp(
            MlpConfig::new(data.dim())
                .with_hidden(a.hidden)
                .with_depth(a.depth)
                .with_label_dim(data.label_count as usize),
        ),
        _ => {
            if data.shape.height != data.shape.width {
                bail!(
                    "the U-Net needs square images, the data is {}x{}; pass --resize N",
                    data.shape.width,
                    data.shape.height
                );
            }
            let (side, colors) = (data.shape.height as usize, data.shape.channels as usize);
            NetConfig::UNet(match a.preset {
                Some(p) => p.unet(side, colors, data.label_count as usize),
                None => UNetConfig::new(side, colors, colors)
                    .with_label_dim(data.label_count as usize)
                    .with_model_channels(a.model_channels)
                    .with_channel_mult(a.channel_mult)
                    .with_num_blocks(a.num_blocks)
                    .with_attn_resolutions(a.attn),
            })
        }
    };
    if a.net == "mlp" && a.preset.is_some() {
        bail!("--preset names U-Net settings; it does not apply to --net mlp");
    }
    let dropout = a.preset.map_or(a.dropout, |p| p.dropout());
    net.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = PretrainConfig {
        net,
        precond: Precond::Edm {
            sigma_data: a.sigma_data,
        },
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        ema_decay: a.ema_decay,
        seed: a.run.seed,
        checkpoint_every: a.run.checkpoint_every,
        dataset: data.name.clone(),
        image: data.shape,
        label_count: data.label_count,
        dropout,
    };
    crate::memory::check(
        crate::memory::pretrain_bytes(&config),
        data.values.len() as u64 * 4,
        a.run.max_memory,
    )?;
    let devices = crate::devices(&a.run.device, a.run.devices as usize)?;
    let run_dir = RunDir::create(&a.run.run)?;
    let pt = crate::pretrain::run(
        &run_dir,
        config,
        &data,
        &devices,
        a.run.stop_after,
        a.run.quiet,
    )?;
    println!(
        "pre-training: {} of {} steps done; run directory {}",
        pt.step,
        pt.config.steps,
        run_dir.path.display()
    );
    Ok(())
}

fn finetune(a: FinetuneArgs) -> Result<()> {
    let base_bytes = std::fs::read(&a.base)
        .with_context(|| format!("cannot read base bundle {}", a.base.display()))?;
    let base = Bundle::from_bytes(&base_bytes).with_context(|| format!("{}", a.base.display()))?;
    // An absolute path keeps `trainer export` working from any directory.
    let base_path = std::fs::canonicalize(&a.base).unwrap_or_else(|_| a.base.clone());
    let mut c = FinetuneConfig::new(base_path, a.t as usize);
    c.mode = a.mode;
    c.rounds = a.rounds;
    c.stage1_steps = a.stage1_steps;
    c.stage2_steps = a.stage2_steps;
    c.gamma = a.gamma;
    c.lr_schedule = a.lr_schedule;
    c.lr_weights = a.lr_weights;
    c.warp = a.warp;
    c.disc_grad = a.disc_grad;
    c.disc_target = a.disc_target;
    c.batch = a.batch;
    c.disc_batch = a.disc_batch;
    c.teacher_steps = a.teacher_steps;
    c.teacher_pool = a.teacher_pool;
    c.teacher = a.teacher.unwrap_or(
        if a.solver != SolverKind::Euler && a.mode == Mode::TwoStage {
            Teacher::Base
        } else {
            Teacher::Shipped
        },
    );
    c.traj_refresh = a.traj_refresh;
    c.solver = a.solver;
    c.ema_decay = a.ema_decay;
    c.s_max = a.s_max.unwrap_or(base.schedule.s_max() as f64);
    c.s_min = a.s_min.unwrap_or(base.schedule.s_min() as f64);
    c.seed = a.run.seed;
    c.checkpoint_every = a.run.checkpoint_every;
    c.validate()?;
    let data = a.data.load()?;
    let (net, dim) = match &base.model {
        sampler_core::bundle::ModelSpec::Network { config, .. } => {
            (Some(config.clone()), config.dim())
        }
        sampler_core::bundle::ModelSpec::Mixture(m) => (None, m.dim),
    };
    crate::memory::check(
        crate::memory::finetune_bytes(&c, net.as_ref(), dim),
        data.as_ref().map_or(0, |d| d.values.len() as u64 * 4),
        a.run.max_memory,
    )?;
    let devices = crate::devices(&a.run.device, a.run.devices as usize)?;
    let run_dir = RunDir::create(&a.run.run)?;
    let ft = crate::two_stage::run(&run_dir, c, data, &devices, a.run.stop_after, a.run.quiet)?;
    let s = ft.schedule()?;
    println!(
        "fine-tuning: {} of {} steps done; levels {:?}; run directory {}",
        ft.step,
        ft.config.total_steps(),
        s.sigmas(),
        run_dir.path.display()
    );
    Ok(())
}

fn export(a: ExportArgs) -> Result<()> {
    let mut bundle = match (&a.run, &a.bundle) {
        (_, Some(path)) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let mut b =
                Bundle::from_bytes(&bytes).with_context(|| format!("{}", path.display()))?;
            if let Some(name) = &a.name {
                b.name = name.clone();
            }
            if !a.description.is_empty() {
                b.description = a.description.clone();
            }
            b
        }
        (Some(run), None) => export_run(run, &a)?,
        (None, None) => bail!("give --run DIR or --bundle FILE"),
    };
    if a.format == ExportFormat::Safetensors {
        let config = crate::interop::config_path_for(&a.out);
        crate::interop::export_safetensors(&bundle, &a.out, &config)?;
        println!(
            "wrote {} and {} (EDMPrecond state dict and config; the T = {} levels are in the \
             config's \"fewstep\" section)",
            a.out.display(),
            config.display(),
            bundle.schedule.len()
        );
        return Ok(());
    }
    if let ModelSpec::Network { config, weights } = &mut bundle.model {
        *weights = sampler_core::model::weights_to_pack(config, weights, a.weights)
            .map_err(|e| anyhow::anyhow!("cannot convert the weights: {e}"))?;
    }
    let bytes = bundle.to_bytes()?;
    write_atomic(&a.out, &bytes)?;
    println!(
        "wrote {} ({} bytes, {} weights, T = {}, {})",
        a.out.display(),
        bytes.len(),
        a.weights.name(),
        bundle.schedule.len(),
        bundle.provenance.schedule_method
    );
    Ok(())
}

fn import(a: ImportArgs) -> Result<()> {
    let imported = crate::interop::import(&a.from, &a.config, a.t as usize, a.weights)?;
    let bytes = imported.bundle.to_bytes()?;
    write_atomic(&a.out, &bytes)?;
    let b = &imported.bundle;
    let params = match &b.model {
        ModelSpec::Network { config, .. } => config
            .parameters()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum::<usize>(),
        ModelSpec::Mixture(_) => 0,
    };
    println!(
        "wrote {} ({} bytes: {params} parameters as {}, {}x{}x{}, {} labels, precond {}, T = {})",
        a.out.display(),
        bytes.len(),
        a.weights.name(),
        b.image.channels,
        b.image.height,
        b.image.width,
        b.label_count,
        b.precond.name(),
        b.schedule.len()
    );
    let filters = imported
        .skipped
        .iter()
        .filter(|s| s.ends_with(".resample_filter"))
        .count();
    if filters > 0 {
        println!("  checked: {filters} resample filter buffers, all EDM's [1, 1] filter");
    }
    for s in imported
        .skipped
        .iter()
        .filter(|s| !s.ends_with(".resample_filter"))
    {
        println!("  left out: {s}");
    }
    Ok(())
}

/// The bundle of a run directory: a fine-tuning run with its base, or a pre-training run
/// with EDM's levels.
fn export_run(run: &std::path::Path, a: &ExportArgs) -> Result<Bundle> {
    let run_dir = RunDir::open(run);
    let ck = run_dir
        .load_checkpoint()?
        .with_context(|| format!("{} has no checkpoint yet", run.display()))?;
    let name = a.name.clone().unwrap_or_else(|| {
        run.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "fewstep".into())
    });
    if let Ok(c) = run_dir.load_config::<FinetuneConfig>() {
        let base_bytes = std::fs::read(&c.base)
            .with_context(|| format!("cannot read the run's base bundle {}", c.base.display()))?;
        let base =
            Bundle::from_bytes(&base_bytes).with_context(|| format!("{}", c.base.display()))?;
        crate::two_stage::export_bundle(&c, &base, &ck, &name, &a.description)
    } else {
        let c: PretrainConfig = run_dir.load_config().context(
            "the run directory's config.json is neither a fine-tuning nor a pre-training config",
        )?;
        let mut b = crate::pretrain::export_bundle(&c, &ck, a.t, &name)?;
        if !a.description.is_empty() {
            b.description = a.description.clone();
        }
        Ok(b)
    }
}

fn make_mixture(a: MixtureArgs) -> Result<()> {
    if a.components == 0 || a.dim == 0 {
        bail!("--components and --dim must be positive");
    }
    let m = random_mixture(a.components, a.dim, a.seed);
    let b = Bundle {
        name: format!("gmm-{}x{}", a.components, a.dim),
        description: format!("analytic isotropic Gaussian mixture, seed {}", a.seed),
        image: ImageShape {
            channels: 1,
            height: 1,
            width: a.dim as u32,
        },
        label_count: 0,
        precond: Precond::default(),
        schedule: Schedule::edm(a.t, 0.002, 80.0)?,
        solver: SolverKind::Euler,
        model: ModelSpec::Mixture(m),
        provenance: Provenance {
            dataset: "synthetic mixture".into(),
            training_steps: 0,
            schedule_method: "edm-rho7".into(),
            created_unix: 0,
        },
    };
    write_atomic(&a.out, &b.to_bytes()?)?;
    println!("wrote {}", a.out.display());
    Ok(())
}

/// A mixture with means in [-1, 1]^d, stds in [0.05, 0.3] and uneven weights.
pub fn random_mixture(k: usize, d: usize, seed: u64) -> Mixture {
    let u = |i: u64| (rng::random_u64(seed, i) >> 11) as f64 / (1u64 << 53) as f64;
    Mixture {
        dim: d,
        means: (0..k * d)
            .map(|i| (2.0 * u(i as u64) - 1.0) as f32)
            .collect(),
        stds: (0..k)
            .map(|i| (0.05 + 0.25 * u(1_000_000 + i as u64)) as f32)
            .collect(),
        weights: (0..k)
            .map(|i| (0.5 + u(2_000_000 + i as u64)) as f32)
            .collect(),
    }
}

/// `n` in `lo..=hi`, for counts that size allocations (a --batch of 10^8 aborted on memory).
fn bounded(s: &str, lo: usize, hi: usize) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    if (lo..=hi).contains(&n) {
        Ok(n)
    } else {
        Err(format!("{n} is outside {lo}..={hi}"))
    }
}

fn batch_arg(s: &str) -> Result<usize, String> {
    bounded(s, 1, 1 << 12)
}

fn count_arg(s: &str) -> Result<usize, String> {
    bounded(s, 1, 1 << 20)
}

fn steps_arg(s: &str) -> Result<usize, String> {
    bounded(s, 2, 1 << 16)
}
