//! The `trainer` command line, one file per subcommand, layered as ripgrep's flags are: a
//! clap `XArgs` struct only parses the flags (with their ranges), and its conversion into
//! the library's run config (`TryFrom`) does the checks that can fail, reading what the
//! flags point to where the config needs it (pre-training's network takes the data's
//! shape, fine-tuning's default levels are the base bundle's). The config owns the
//! defaults: clap's defaults are read from it, not written a second time. Each command then
//! hands the config to the library and prints a summary. `export`, `import` and `fid` have
//! no config: their flags only name files and formats.
//!
//! [`main`] parses the command line and dispatches; a command's error is printed once
//! (`error: ...`) with exit code 2.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::classifier::TrainedClassifier;
use crate::data::{Dataset, FolderOptions};

mod bench;
mod eval;
mod export;
mod fid;
mod finetune;
mod import;
mod mixture;
mod pretrain;

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
    Pretrain(pretrain::PretrainArgs),
    /// The two-stage optimization (paper Algorithm 1) of a base bundle for T steps.
    Finetune(finetune::FinetuneArgs),
    /// Write the bundle of a run directory (EMA weights + T levels + provenance), convert a
    /// bundle, or write its network as an EDM state dict (--format safetensors).
    Export(export::ExportArgs),
    /// Turn an NVlabs/edm SongUNet state dict (+ its config JSON) into a base bundle.
    Import(import::ImportArgs),
    /// Write an analytic Gaussian-mixture bundle (an exact model for experiments and tests).
    MakeMixture(mixture::MixtureArgs),
    /// Time pre-training, stage 1 (exact and paper gradients) and stage 2 steps.
    Bench(bench::BenchArgs),
    /// Compare samplers at equal NFE: EDM-schedule Euler / Heun / DPM-Solver++(2M) on the
    /// base bundle and Euler on fine-tuned bundles; table, CSV, figures and sample grids.
    Eval(eval::EvalArgs),
    /// FID and KID between real and generated images in Inception-v3's features, with
    /// pytorch-fid's conventions (needs `python3 scripts/fetch_inception.py` once).
    Fid(fid::FidArgs),
}

/// The compute device when `--device` is not given.
const DEFAULT_DEVICE: &str = "flex";

/// T when `--t` is not given: the levels of the shipped bundles.
const DEFAULT_T: usize = 8;

/// The weight storage when `--weights` is not given: exact.
const DEFAULT_WEIGHTS: sampler_core::pack::WeightDtype = sampler_core::pack::WeightDtype::F32;

/// A list default in the form the flag takes (`1,2,2`): clap shows several default values
/// space-separated, which a comma-delimited flag does not read back. Leaked: clap keeps
/// defaults as `&'static str`, and the command is built once per process.
fn list_default<T: ToString>(values: &[T]) -> &'static str {
    let joined: Vec<String> = values.iter().map(ToString::to_string).collect();
    joined.join(",").leak()
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
    /// The data set the flags name, if any, reported on stderr.
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
    #[arg(long, default_value_t = pretrain::defaults().seed)]
    seed: u64,
    /// Steps between checkpoints.
    // Pre-training's default for both commands (`FinetuneConfig::new`'s 50 is for library
    // callers).
    #[arg(long, default_value_t = pretrain::defaults().checkpoint_every, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: u64,
    /// Stop (with a checkpoint) after this many steps in total; run again to resume.
    #[arg(long, value_name = "STEPS")]
    stop_after: Option<u64>,
    /// Compute device: flex (CPU), vulkan or cuda (the latter two need cargo features).
    #[arg(long, default_value = DEFAULT_DEVICE)]
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

/// Runs the command the user asked for (the binary parses the command line with
/// `fewstep_host::parse`, which prints a bad flag as one line and exits 2, and maps errors
/// to exit codes).
pub fn run(cli: Cli) -> Result<()> {
    dispatch(cli.command)
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Pretrain(a) => pretrain::run(a),
        Command::Finetune(a) => finetune::run(a),
        Command::Export(a) => export::run(a),
        Command::Import(a) => import::run(a),
        Command::MakeMixture(a) => mixture::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Fid(a) => fid::run(a),
    }
}

/// The feature classifier's flags (FD-cls and accuracy), shared by `eval` and `fid`.
#[derive(Args, Debug)]
pub struct ClassifierArgs {
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
}

impl ClassifierArgs {
    /// The classifier of `--classifier`: loaded if the file exists, otherwise trained on
    /// `--classifier-data` (resized to `resize`, from `seed`) and saved there.
    fn load_or_train(
        &self,
        resize: Option<u32>,
        seed: u64,
        quiet: bool,
        device: &burn::tensor::Device,
    ) -> Result<Option<TrainedClassifier>> {
        Ok(match &self.classifier {
            Some(path) if path.exists() => Some(TrainedClassifier::load(path, device)?),
            Some(path) => {
                let spec = self.classifier_data.as_deref().context(
                    "--classifier names no existing file: pass --classifier-data to train it",
                )?;
                let data = load_named(spec, true, resize)?;
                eprintln!(
                    "training the feature classifier on {} images of {spec}",
                    data.len()
                );
                let c = TrainedClassifier::train(
                    &data,
                    self.classifier_steps,
                    64,
                    seed,
                    &crate::device("flex")?,
                    quiet,
                )?;
                c.save(path)?;
                Some(c)
            }
            None => None,
        })
    }
}

/// Images named on the command line (a shipped set, a .fsd(.gz) file or a folder), every
/// image required to be readable.
fn load_named(spec: &str, labels: bool, resize: Option<u32>) -> Result<Dataset> {
    let opts = FolderOptions {
        resize,
        labels,
        skip_bad: false,
        channels: None,
    };
    Ok(Dataset::load(spec, &opts)?)
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

/// `--batch`-like flags: 1 ..= 4096.
fn batch_arg(s: &str) -> Result<usize, String> {
    bounded(s, 1, 1 << 12)
}

/// Image counts: 1 ..= 2^20.
fn count_arg(s: &str) -> Result<usize, String> {
    bounded(s, 1, 1 << 20)
}

/// Levels of a reference solve: 2 ..= 2^16.
fn steps_arg(s: &str) -> Result<usize, String> {
    bounded(s, 2, 1 << 16)
}
