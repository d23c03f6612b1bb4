//! Running the rows of `trainer eval` (docs/method.md §6): the same noises for every row,
//! each training-free solver on EDM's levels of the base network and each fine-tuned bundle
//! at every T, their images, wall time and rulers (`measure.rs`), and the sample grids.
//!
//! Images come from `generate`, not `Sampler::generate_range`: a row runs a solver and
//! levels other than its bundle's own (EDM's levels, the reference Heun solve), and the
//! truncation RMSE and the NLL are taken on the raw, unclamped outputs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::{Device, Tensor, TensorData};
use sampler_core::bundle::{ImageShape, ModelSpec, SolverKind};
use sampler_core::pack::{PACK_MAGIC, PackView};
use sampler_core::rng;
use sampler_core::schedule::Schedule;
use sampler_core::solver::{Denoiser, Stop};
use sampler_core::{Images, Sampler};

use super::measure::{CLASSIFIER_BATCH, RealSet, frechet_and_accuracy, rmse};
use crate::classifier::TrainedClassifier;
use crate::fid::{image_features, saturated_fraction};
use crate::inception::Inception;

/// Levels to use for a budget of `nfe` evaluations, and the evaluations they cost: Heun
/// gets the largest `n` with `2n - 1 <= nfe`.
pub fn levels_for(kind: SolverKind, nfe: usize) -> (usize, usize) {
    match kind {
        SolverKind::Heun => {
            let n = nfe.div_ceil(2).max(2);
            (n, kind.nfe(n))
        }
        _ => (nfe, kind.nfe(nfe)),
    }
}

/// What `trainer eval` compares and how much.
#[derive(Clone, Debug)]
pub struct EvalConfig {
    /// The base (pre-trained) bundle: Euler / Heun / DPM-Solver++(2M) rows with EDM's
    /// rho = 7 levels over its `[s_min, s_max]`, and the truncation-error reference.
    pub base: PathBuf,
    /// Fine-tuned rows: (row name, bundle path where `{T}` stands for T). A missing file
    /// leaves that row out at that T.
    pub tuned: Vec<(String, String)>,
    /// Numbers of denoiser evaluations.
    pub ts: Vec<usize>,
    /// Images generated per row and T (FD and accuracy).
    pub count: usize,
    /// Images (the first of the same noises) compared with the reference solution.
    pub ref_count: usize,
    /// Levels of the reference Heun solve (EDM rho = 7; `2n - 1` evaluations).
    pub reference_steps: usize,
    /// Seed of the noises (image `k` uses stream `image_seed(seed, k)`, as sampler-cli).
    pub seed: u64,
    /// Images per batch.
    pub batch: usize,
    /// Images in each sample grid.
    pub grid: usize,
    /// The training-free solvers run on EDM's levels of the base network.
    pub solvers: Vec<SolverKind>,
}

impl EvalConfig {
    /// `trainer eval`'s defaults for `base`: the solvers at T = 5 .. 20, 500 images per
    /// row, the first 64 against a 256-level Heun reference, no fine-tuned rows.
    pub fn new(base: PathBuf) -> Self {
        EvalConfig {
            base,
            tuned: Vec::new(),
            ts: vec![5, 8, 10, 12, 15, 20],
            count: 500,
            ref_count: 64,
            reference_steps: 256,
            seed: 0,
            batch: 250,
            grid: 50,
            solvers: SolverKind::ALL.to_vec(),
        }
    }
}

/// One row of the results: one sampler at one T.
#[derive(Clone, Debug, PartialEq)]
pub struct RowResult {
    /// Row name (paper Table 1 naming for fine-tuned rows).
    pub row: String,
    /// Solver.
    pub solver: &'static str,
    /// The NFE budget T of the comparison.
    pub t: usize,
    /// Denoiser evaluations actually spent.
    pub nfe: usize,
    /// The levels used.
    pub sigmas: Vec<f32>,
    /// RMSE against the row's own network's many-step Heun solution from the same noise:
    /// the truncation error of the levels and solver alone.
    pub trunc_rmse: f64,
    /// RMSE against the base network's solution: for fine-tuned weights it adds how far
    /// the weights moved the endpoint.
    pub trunc_rmse_base: f64,
    /// Frechet distance to the real images in pixel space.
    pub fd_pixel: Option<f64>,
    /// Frechet distance in the classifier's penultimate-layer features.
    pub fd_cls: Option<f64>,
    /// Fraction of samples the classifier assigns to the requested label.
    pub accuracy: Option<f64>,
    /// FID against the real images (Inception-v3 features, pytorch-fid's conventions).
    pub fid: Option<f64>,
    /// KID (unbiased MMD^2, cubic kernel) in the same features.
    pub kid: Option<f64>,
    /// Fraction of sample values at 255 after 8-bit quantization.
    pub saturated: f64,
    /// Levels learned by the trainer (a tuned bundle's) rather than EDM's.
    pub learned_levels: bool,
    /// Weights other than the base bundle's.
    pub finetuned_weights: bool,
    /// Negative log-likelihood of the samples under the mixture, nats per image: `-mean ln
    /// p(x)` of the data density; for analytic mixture bases only (where it is exact).
    pub nll: Option<f64>,
    /// Wall time per image, milliseconds.
    pub ms_per_image: f64,
    /// Sample-grid file, relative to the output directory.
    pub grid: String,
}

/// What `trainer eval` measured: the rows, and the classifier's accuracy on the base
/// network's reference solutions (the ceiling any few-step row of the base approaches).
pub struct EvalResults {
    /// One entry per row and T.
    pub rows: Vec<RowResult>,
    /// Fraction of the reference images (`ref_count`, the base network's many-step Heun
    /// solutions) assigned to their requested label; conditional models with a classifier.
    pub reference_accuracy: Option<f64>,
    /// Frechet distances of the reference images themselves, `(FD-pixel, FD-cls)`, when
    /// there is one for every sample (`ref_count == count`, so the sample sizes match):
    /// what a solver that reproduced the ODE exactly would score.
    pub reference_fd: Option<(f64, Option<f64>)>,
}

/// One-hot labels of images `first .. first + count`: image `k` asks for label `k mod L`.
fn one_hot(first: usize, count: usize, label_count: u32, device: &Device) -> Option<Tensor<2>> {
    let l = label_count as usize;
    (l > 0)
        .then(|| sampler_core::denoiser::one_hot((first..first + count).map(|k| k % l), l, device))
}

/// Runs `solver` over `schedule` from the noises `eps` (`n * d`, unscaled), in batches;
/// returns the raw outputs and the seconds spent.
#[allow(clippy::too_many_arguments)]
fn generate(
    den: &dyn Denoiser,
    solver: SolverKind,
    schedule: &Schedule,
    eps: &[f32],
    label_count: u32,
    batch: usize,
    device: &Device,
) -> Result<(Vec<f32>, f64)> {
    let d = den.dim();
    let n = eps.len() / d;
    let start = Instant::now();
    let mut out = Vec::with_capacity(eps.len());
    let mut first = 0;
    while first < n {
        let b = batch.min(n - first);
        let x0 = Tensor::<2>::from_data(
            TensorData::new(eps[first * d..(first + b) * d].to_vec(), [b, d]),
            device,
        )
        .mul_scalar(schedule.s_max() as f64);
        let labels = one_hot(first, b, label_count, device);
        let x = sampler_core::solver::solve(
            solver,
            den,
            x0,
            schedule.to_tensor(device),
            labels,
            Stop::Zero,
            |_| {},
        );
        out.extend(
            x.try_into_vec_as::<f32>()
                .map_err(|e| anyhow!("reading samples back: {e:?}"))?,
        );
        first += b;
    }
    Ok((out, start.elapsed().as_secs_f64()))
}

/// Name of a solver in tables.
pub fn solver_title(kind: SolverKind) -> &'static str {
    match kind {
        SolverKind::Euler => "Euler",
        SolverKind::Heun => "Heun",
        SolverKind::DpmPp2m => "DPM-Solver++(2M)",
        SolverKind::Ipndm => "iPNDM",
        SolverKind::DpmPp2mLof => "DPM-Solver++(2M), first-order last step",
    }
}

/// A file-name-safe form of a row name.
pub fn slug(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    s.trim_matches('-').to_string()
}

/// Writes `clamped` (whole images, values in [-1, 1]) as one PNG grid at `path`: a column
/// per label for a conditional model (image `k` asks for label `k mod L`).
pub(super) fn write_grid(
    path: &Path,
    shape: ImageShape,
    label_count: u32,
    clamped: &[f32],
) -> Result<()> {
    let images = Images {
        shape,
        count: clamped.len() / shape.values(),
        data: clamped.to_vec(),
    };
    let cols = if label_count > 0 {
        Some(label_count as usize)
    } else {
        None
    };
    // Small images are enlarged (nearest) to at least 48 pixels for viewing.
    let scale = (48 / shape.height.max(1)).max(1);
    sampler_core::fs::write_png(path, &images.grid(cols).scaled(scale))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A sampler and a fingerprint of its model (the loaded sampler no longer holds the
/// serialized weights): rows with the base's weights share its reference solution.
fn read(path: &Path, device: &Device) -> Result<(Sampler, u64)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bundle =
        sampler_core::Bundle::from_bytes(&bytes).with_context(|| format!("{}", path.display()))?;
    let fingerprint = model_fingerprint(&bundle.model)?;
    let sampler = Sampler::new(bundle, device).with_context(|| format!("{}", path.display()))?;
    Ok((sampler, fingerprint))
}

/// A hash of the function a model computes: a weights pack's tensors by name, shape and f32
/// value, so that the same weights stored in another dtype (an f16 base whose levels were
/// learned and exported in f32) count as the base's; any other model by its serialized
/// bytes.
fn model_fingerprint(model: &ModelSpec) -> Result<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match model {
        ModelSpec::Network { config, weights } if weights.starts_with(&PACK_MAGIC) => {
            postcard::to_allocvec(config)?.hash(&mut hasher);
            let pack = PackView::parse(weights).map_err(|e| anyhow!("{e}"))?;
            for t in pack.tensors() {
                t.name.hash(&mut hasher);
                t.shape().hash(&mut hasher);
                for v in t.to_vec() {
                    v.to_bits().hash(&mut hasher);
                }
            }
        }
        other => postcard::to_allocvec(other)?.hash(&mut hasher),
    }
    Ok(hasher.finish())
}

/// One row of the comparison: a training-free solver on EDM's levels of the base network,
/// or a fine-tuned bundle (`{T}` in its path stands for T).
struct Plan {
    row: String,
    solver: SolverKind,
    bundle: Option<PathBuf>,
}

/// The rows of `config`: the chosen solvers in [`SolverKind::ALL`]'s order, then the
/// fine-tuned bundles in the order given.
fn plans(config: &EvalConfig) -> Vec<Plan> {
    let mut plans: Vec<Plan> = SolverKind::ALL
        .into_iter()
        .filter(|k| config.solvers.contains(k))
        .map(|solver| Plan {
            row: format!("{}, EDM rho=7", solver_title(solver)),
            solver,
            bundle: None,
        })
        .collect();
    for (name, pattern) in &config.tuned {
        plans.push(Plan {
            row: name.clone(),
            // Replaced by each tuned bundle's own solver in `run_eval`.
            solver: SolverKind::Euler,
            bundle: Some(PathBuf::from(pattern)),
        });
    }
    plans
}

/// Evaluates every row at every T of `config`, writing sample grids under `out/grids/`.
pub fn run_eval(
    config: &EvalConfig,
    real: Option<&RealSet>,
    classifier: Option<&TrainedClassifier>,
    inception: Option<&Inception>,
    out: &Path,
    quiet: bool,
) -> Result<EvalResults> {
    if config.ts.iter().any(|&t| t < 2) || config.ts.is_empty() {
        bail!("every T must be at least 2");
    }
    if config.count < 2 || config.batch == 0 || config.reference_steps < 2 {
        bail!("--count must be at least 2, --batch and --reference-steps positive");
    }
    if config.solvers.is_empty() && config.tuned.is_empty() {
        bail!("nothing to evaluate: no training-free solver (--solvers none) and no --tuned row");
    }
    // A row whose pattern names no file at any T is a typo, not a row to leave out: say so
    // before minutes of sampling and Inception rather than print a table without it.
    for (name, pattern) in &config.tuned {
        let found = config
            .ts
            .iter()
            .any(|t| Path::new(&pattern.replace("{T}", &t.to_string())).exists());
        if !found {
            let ts: Vec<String> = config.ts.iter().map(|t| t.to_string()).collect();
            bail!(
                "--tuned row '{name}': no bundle at '{pattern}' for any T in {} ({{T}} stands for T)",
                ts.join(",")
            );
        }
    }
    let device = Device::flex();
    let (base, base_fingerprint) = read(&config.base, &device)?;
    let shape = base.bundle().image;
    let label_count = base.bundle().label_count;
    let (s_min, s_max) = (
        base.bundle().schedule.s_min() as f64,
        base.bundle().schedule.s_max() as f64,
    );
    let d = shape.values();
    let ref_count = config.ref_count.min(config.count);

    // The same noises for every row: image k is stream image_seed(seed, k), as sampler-cli.
    let mut eps = vec![0f32; config.count * d];
    for (k, chunk) in eps.chunks_mut(d).enumerate() {
        rng::fill_gaussian(rng::image_seed(config.seed, k as u64), 0, chunk);
    }

    let grids = out.join("grids");
    std::fs::create_dir_all(&grids)
        .with_context(|| format!("cannot create {}", grids.display()))?;

    eprintln!(
        "reference: {} images, Heun with {} levels ({} evaluations) of each row's network",
        ref_count,
        config.reference_steps,
        2 * config.reference_steps - 1
    );
    let reference_levels = Schedule::edm(config.reference_steps, s_min, s_max)?;
    let solve_reference = |sampler: &Sampler| {
        sampler.with_denoiser(|den| {
            generate(
                den,
                SolverKind::Heun,
                &reference_levels,
                &eps[..ref_count * d],
                label_count,
                config.batch,
                &device,
            )
            .map(|(x, _)| x)
        })
    };
    let reference = solve_reference(&base)?;
    let truth = match &base.bundle().model {
        sampler_core::bundle::ModelSpec::Mixture(m) => Some(
            m.to_device(&device)
                .map_err(|e| anyhow!("the base mixture: {e}"))?,
        ),
        _ => None,
    };
    let reference_accuracy = match classifier {
        Some(c) if label_count > 0 && c.config.classes == label_count as usize => {
            let clamped: Vec<f32> = reference.iter().map(|v| v.clamp(-1.0, 1.0)).collect();
            let labels: Vec<u32> = (0..ref_count)
                .map(|k| (k % c.config.classes) as u32)
                .collect();
            Some(c.accuracy(&clamped, &labels, CLASSIFIER_BATCH, &device)?)
        }
        _ => None,
    };
    let reference_fd = if ref_count == config.count {
        let clamped: Vec<f32> = reference.iter().map(|v| v.clamp(-1.0, 1.0)).collect();
        let (pixel, cls, _) =
            frechet_and_accuracy(&clamped, d, real, classifier, label_count, &device)?;
        pixel.map(|p| (p, cls))
    } else {
        None
    };
    // One reference per distinct set of weights: the levels-only rows share the base's.
    let mut own_references: Vec<(u64, Vec<f32>)> = vec![(base_fingerprint, reference.clone())];

    let plans = plans(config);

    let total = (config.ts.len() * plans.len()) as u64;
    let bar = crate::progress(total, quiet);
    let mut results = Vec::new();
    for &t in &config.ts {
        for plan in &plans {
            bar.set_message(format!("T={t} {}", plan.row));
            let tuned = match &plan.bundle {
                None => None,
                Some(pattern) => {
                    let path =
                        PathBuf::from(pattern.to_string_lossy().replace("{T}", &t.to_string()));
                    if !path.exists() {
                        bar.inc(1);
                        continue;
                    }
                    let (s, fingerprint) = read(&path, &device)?;
                    if s.bundle().image != shape || s.bundle().label_count != label_count {
                        bail!(
                            "{} does not match the base bundle's image shape and labels",
                            path.display()
                        );
                    }
                    if s.bundle().schedule.len() != t {
                        bail!(
                            "{} has T = {}, expected {t}",
                            path.display(),
                            s.bundle().schedule.len()
                        );
                    }
                    Some((s, fingerprint))
                }
            };
            let (sampler, fingerprint) = match &tuned {
                Some((s, f)) => (s, *f),
                None => (&base, base_fingerprint),
            };
            let solver = tuned
                .as_ref()
                .map_or(plan.solver, |(s, _)| s.bundle().solver);
            let schedule = match &tuned {
                Some((s, _)) => s.bundle().schedule.clone(),
                None => Schedule::edm(levels_for(solver, t).0, s_min, s_max)?,
            };
            // A tuned bundle may keep EDM's levels (stage 2 alone, the EDM-weight ablation):
            // its levels are learned only where they differ from EDM's of the same count.
            let learned_levels = tuned.is_some() && {
                let edm = Schedule::edm(schedule.len(), s_min, s_max)?;
                schedule
                    .sigmas()
                    .iter()
                    .zip(edm.sigmas())
                    .any(|(a, b)| (a - b).abs() > 1e-5 * b.abs())
            };
            // What the levels cost with this solver: a bundle tuned for Heun with T levels
            // spends 2T - 1 evaluations, not T.
            let nfe = solver.nfe(schedule.len());
            let (samples, seconds) = sampler.with_denoiser(|den| {
                generate(
                    den,
                    solver,
                    &schedule,
                    &eps,
                    label_count,
                    config.batch,
                    &device,
                )
            })?;
            let trunc_rmse_base = rmse(&samples[..ref_count * d], &reference);
            if !own_references.iter().any(|(f, _)| *f == fingerprint) {
                bar.set_message(format!("T={t} {}: its network's reference", plan.row));
                own_references.push((fingerprint, solve_reference(sampler)?));
            }
            let own = own_references
                .iter()
                .find(|(f, _)| *f == fingerprint)
                .map_or(reference.as_slice(), |(_, r)| r.as_slice());
            let trunc_rmse = rmse(&samples[..ref_count * d], own);
            let nll = truth.as_ref().map(|m| {
                let n = samples.len() / d;
                let x = Tensor::<2>::from_data(TensorData::new(samples.clone(), [n, d]), &device);
                let zero = Tensor::<1>::zeros([n], &device);
                -crate::run::scalar(&m.log_density(x, zero).mean())
            });
            let clamped: Vec<f32> = samples.iter().map(|v| v.clamp(-1.0, 1.0)).collect();
            let (fd_pixel, fd_cls, accuracy) =
                frechet_and_accuracy(&clamped, d, real, classifier, label_count, &device)?;
            let (fid, kid) = match (inception, real.and_then(|r| r.inception.as_ref())) {
                (Some(net), Some(stats)) => {
                    bar.set_message(format!("T={t} {}: Inception", plan.row));
                    let f =
                        image_features(net, &clamped, shape, &indicatif::ProgressBar::hidden())?;
                    let s = stats.scores(&f)?;
                    (Some(s.fid), Some(s.kid))
                }
                _ => (None, None),
            };
            let grid_name = format!("grids/{}-t{t}.png", slug(&plan.row));
            let shown = config.grid.min(config.count);
            if shown > 0 {
                write_grid(
                    &out.join(&grid_name),
                    shape,
                    label_count,
                    &clamped[..shown * d],
                )?;
            }
            results.push(RowResult {
                row: plan.row.clone(),
                solver: solver.name(),
                t,
                nfe,
                sigmas: schedule.sigmas().to_vec(),
                trunc_rmse,
                trunc_rmse_base,
                fd_pixel,
                fd_cls,
                accuracy,
                fid,
                kid,
                saturated: saturated_fraction(&clamped),
                learned_levels,
                finetuned_weights: fingerprint != base_fingerprint,
                nll,
                ms_per_image: seconds * 1000.0 / config.count as f64,
                grid: grid_name,
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(EvalResults {
        rows: results,
        reference_accuracy,
        reference_fd,
    })
}
#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn heun_gets_the_levels_that_fit_the_budget() {
        assert_eq!(levels_for(SolverKind::Heun, 5), (3, 5));
        assert_eq!(levels_for(SolverKind::Heun, 8), (4, 7));
        assert_eq!(levels_for(SolverKind::Heun, 3), (2, 3));
        assert_eq!(levels_for(SolverKind::Euler, 8), (8, 8));
        assert_eq!(levels_for(SolverKind::DpmPp2m, 12), (12, 12));
        assert_eq!(levels_for(SolverKind::Ipndm, 5), (5, 5));
    }

    /// The same weights stored as f16 and as f32 are the same model; other values are not.
    #[test]
    fn fingerprint_follows_values_not_storage() {
        use sampler_core::pack::{PackTensor, WeightDtype, encode, f16_to_f32, f32_to_f16};
        let config = sampler_core::config::NetConfig::Mlp(sampler_core::config::MlpConfig::new(4));
        let values: Vec<f32> = (0..24).map(|i| 0.1 + i as f32 / 7.0).collect();
        let on_f16_grid: Vec<f32> = values.iter().map(|&v| f16_to_f32(f32_to_f16(v))).collect();
        let model = |vals: &[f32], dtype| ModelSpec::Network {
            config: config.clone(),
            weights: encode(
                &[PackTensor {
                    name: "UNet.conv.weight".into(),
                    shape: vec![2, 3, 2, 2],
                    values: vals.to_vec(),
                }],
                dtype,
            )
            .unwrap(),
        };
        let f16 = model_fingerprint(&model(&values, WeightDtype::F16)).unwrap();
        let f32_same = model_fingerprint(&model(&on_f16_grid, WeightDtype::F32)).unwrap();
        let f32_other = model_fingerprint(&model(&values, WeightDtype::F32)).unwrap();
        assert_eq!(f16, f32_same);
        assert_ne!(f16, f32_other);
    }
}
