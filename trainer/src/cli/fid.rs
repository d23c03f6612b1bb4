//! `trainer fid`: FID and KID between two image sets in Inception-v3's features, with
//! pytorch-fid's conventions (docs/method.md §6; `crate::inception`, `crate::fid`), and with
//! `--classifier` FD-cls, the Frechet distance `trainer eval` reports in the feature
//! classifier's features. No run config: the flags name the two sets and the networks.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::{ClassifierArgs, load_named};
use crate::eval::measure::CLASSIFIER_BATCH;
use crate::fid::{RealStats, dataset_features, reference_features};
use crate::frechet::{FrechetReference, Moments};
use crate::inception::{Inception, weights_path};

/// The flags of `trainer fid`.
#[derive(Args, Debug)]
pub(super) struct FidArgs {
    /// The real images: a shipped set (mnist-test, ...), a .fsd(.gz) file or a folder of
    /// PNG/JPEG images.
    #[arg(long, value_name = "NAME|PATH")]
    real: String,
    /// The generated images, in the same forms (e.g. a folder sampler-cli wrote).
    #[arg(long, value_name = "NAME|PATH")]
    fake: String,
    #[command(flatten)]
    classifier: ClassifierArgs,
    /// Print one JSON object ({"fid", "kid", "n_real", "n_fake", and "fd_cls" with
    /// --classifier}) instead of text.
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

/// Prints the two scores.
pub(super) fn run(a: FidArgs) -> Result<()> {
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
    let real_stats = RealStats::new(reference_features(
        &inception,
        &real.values,
        real.shape,
        &bar,
    )?)?;
    let scores = real_stats.scores(&dataset_features(&inception, &fake, &bar)?)?;
    bar.finish_and_clear();
    // FD-cls: the same Frechet distance in the feature classifier's penultimate layer.
    let device = crate::device("flex")?;
    let fd_cls = match a.classifier.load_or_train(None, 0, a.quiet, &device)? {
        Some(c) => {
            let moments = |d: &crate::data::Dataset| -> Result<Moments> {
                let p = c.predict(&d.values, CLASSIFIER_BATCH, &device)?;
                Ok(Moments::from_rows(&p.features, c.config.features)?)
            };
            Some(FrechetReference::new(moments(&real)?).distance(&moments(&fake)?)?)
        }
        None => None,
    };
    if a.json {
        let mut j = serde_json::to_value(scores)?;
        if let Some(fd) = fd_cls {
            j["fd_cls"] = fd.into();
        }
        println!("{j}");
    } else {
        println!(
            "FID {:.4}  KID {:.6}  ({} real, {} generated images; Inception-v3 2015-12-05 features)",
            scores.fid, scores.kid, scores.n_real, scores.n_fake
        );
        if let Some(fd) = fd_cls {
            println!("FD-cls {fd:.4}  (the feature classifier's penultimate layer)");
        }
    }
    Ok(())
}
