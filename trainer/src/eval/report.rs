//! What `trainer eval` writes (docs/method.md §6): the results as CSV (`results.csv`, and
//! `rulers.csv` with every ruler side by side), the Markdown table with the best value per T
//! in bold, the prose of `results.md` that says how each column was measured, and the
//! figures (metrics against T, paper Fig. 2; learned levels, Fig. 3; the lambda weights,
//! Fig. 4).

use std::path::Path;

use anyhow::Result;
use sampler_core::bundle::{Bundle, ModelSpec};
use sampler_core::precond::{Precond, SIGMA_DATA};
use sampler_core::schedule::Schedule;

use super::run::{EvalConfig, EvalResults, RowResult};
use crate::run::write_atomic;

/// What `results.md` says besides the rows: how the comparison was set up.
pub struct Setting<'a> {
    /// Title of the table and figures.
    pub title: &'a str,
    /// What was compared and how much.
    pub config: &'a EvalConfig,
    /// The base bundle (its data set, training steps, levels and kind of model).
    pub base: &'a Bundle,
    /// The real images as named on the command line (`--real`), and how many there are.
    pub real: Option<(&'a str, usize)>,
    /// The dimension of the classifier's features, when FD-cls was measured.
    pub classifier_features: Option<usize>,
    /// The classifier's accuracy on the labelled real images.
    pub held_out_accuracy: Option<f64>,
    /// Whether FID and KID were measured.
    pub fid: bool,
}

/// Writes the figures, `results.csv`, `rulers.csv` and `results.md` into `out`.
pub fn write_reports(setting: &Setting, evaluated: &EvalResults, out: &Path) -> Result<()> {
    let (title, results) = (setting.title, &evaluated.rows);
    // EDM's weighting of the levels in Fig. 4; VP and VE bases are weighted like EDM with
    // the conventional sigma_data, as in training.
    let sigma_data = match setting.base.precond {
        Precond::Edm { sigma_data } => sigma_data as f64,
        _ => SIGMA_DATA as f64,
    };
    let figures = plot_results(title, results, sigma_data, out)?;
    write_atomic(&out.join("results.csv"), to_csv(title, results).as_bytes())?;
    write_atomic(
        &out.join("rulers.csv"),
        to_rulers_csv(setting.config.seed, setting.config.count, results, true).as_bytes(),
    )?;
    let md = results_markdown(setting, evaluated, &figures);
    write_atomic(&out.join("results.md"), md.as_bytes())
}

/// `results.md`: the title, the prose that says how every column was measured and against
/// what, the table and the figures.
pub fn results_markdown(setting: &Setting, evaluated: &EvalResults, figures: &[String]) -> String {
    let (config, base) = (setting.config, setting.base);
    let mut md = format!("# {}\n\n", setting.title);
    md.push_str(&format!(
        "Base bundle `{}` ({}; {} training steps; levels in [{}, {}]). {} images per row from \
         seeds `image_seed({}, k)`{}. Truncation \
         RMSE over the first {} of them against the Heun solution with {} levels of the row's \
         own network (\"vs base net\": of the base network; the two differ only for \
         fine-tuned weights){}. ",
        config.base.display(),
        base.provenance.dataset,
        base.provenance.training_steps,
        base.schedule.s_min(),
        base.schedule.s_max(),
        config.count,
        config.seed,
        match base.label_count {
            0 => String::new(),
            l => format!(", image k asking for label k mod {l}"),
        },
        config.ref_count.min(config.count),
        config.reference_steps,
        evaluated
            .reference_accuracy
            .map_or(String::new(), |acc| format!(
                "; the classifier gives the base network's reference images the requested label \
             {acc:.3} of the time"
            ))
    ));
    if let Some((spec, count)) = setting.real {
        md.push_str(&format!(
            "Frechet distances against {count} real images of `{spec}`"
        ));
        if spec == base.provenance.dataset.as_str() {
            // Item 8 of issue 24: a Frechet distance to the training images says how close
            // the samples come to what the network saw, memorization included.
            md.push_str(
                " (the images the base network was trained on, not a held-out split: \
                 closeness to the training distribution, memorization included)",
            );
        }
        if let Some(features) = setting.classifier_features {
            md.push_str(&format!(
                "; FD-cls in the {features}-dimensional penultimate layer of the project's \
                 classifier"
            ));
            if let Some(acc) = setting.held_out_accuracy {
                md.push_str(&format!(" (accuracy on those real images {:.3})", acc));
            }
        }
        md.push_str(if setting.fid {
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
                config.reference_steps,
                cls.map_or(String::new(), |c| format!(", FD-cls {c:.3}"))
            ));
        }
    }
    if matches!(base.model, ModelSpec::Mixture(_)) {
        md.push_str(
            "NLL: -mean ln p(x) of the samples under the exact mixture density, nats per \
             sample; not ranked, since samples collapsed toward the modes score below the \
             mixture's entropy. ",
        );
    }
    md.push_str("Wall time on this machine's CPU (flex backend), all images in batches.\n\n");
    md.push_str(&to_markdown(&evaluated.rows));
    md.push('\n');
    for f in figures {
        md.push_str(&format!("![{f}]({f})\n"));
    }
    md
}

/// A CSV field in quotes (inner quotes doubled, RFC 4180).
fn quoted(field: &str) -> String {
    format!("\"{}\"", field.replace('"', "\"\""))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_default()
}

/// The results as CSV (one line per row and T; levels space-separated).
pub fn to_csv(dataset: &str, results: &[RowResult]) -> String {
    let mut s = String::from(
        "dataset,row,solver,T,nfe,trunc_rmse,trunc_rmse_base,fd_pixel,fd_cls,accuracy,fid,kid,saturated,nll,ms_per_image,sigmas\n",
    );
    for r in results {
        let sigmas: Vec<String> = r.sigmas.iter().map(|v| format!("{v}")).collect();
        s.push_str(&format!(
            "{dataset},{},{},{},{},{:.6},{:.6},{},{},{},{},{},{:.5},{},{:.3},{}\n",
            quoted(&r.row),
            r.solver,
            r.t,
            r.nfe,
            r.trunc_rmse,
            r.trunc_rmse_base,
            opt(r.fd_pixel, 4),
            opt(r.fd_cls, 4),
            opt(r.accuracy, 4),
            opt(r.fid, 4),
            opt(r.kid, 6),
            r.saturated,
            opt(r.nll, 3),
            r.ms_per_image,
            sigmas.join(" ")
        ));
    }
    s
}

/// Every ruler side by side, one line per row and T (docs/results/fid/results.csv):
/// `seed,T,row,solver,levels,weights,nfe,n,fid,kid,fd_pixel,fd_cls,saturated`, with `levels`
/// `edm` or `learned` and `weights` `base` or `finetuned`; `header` adds the column line.
pub fn to_rulers_csv(seed: u64, n: usize, results: &[RowResult], header: bool) -> String {
    let mut s = String::new();
    if header {
        s.push_str("seed,T,row,solver,levels,weights,nfe,n,fid,kid,fd_pixel,fd_cls,saturated\n");
    }
    for r in results {
        s.push_str(&format!(
            "{seed},{},{},{},{},{},{},{n},{},{},{},{},{:.5}\n",
            r.t,
            quoted(&r.row),
            r.solver,
            if r.learned_levels { "learned" } else { "edm" },
            if r.finetuned_weights {
                "finetuned"
            } else {
                "base"
            },
            r.nfe,
            opt(r.fid, 4),
            opt(r.kid, 6),
            opt(r.fd_pixel, 4),
            opt(r.fd_cls, 4),
            r.saturated,
        ));
    }
    s
}

/// The results as a Markdown table grouped by T, the best value of each metric per T in bold.
pub fn to_markdown(results: &[RowResult]) -> String {
    // The NLL column only for mixture bases, which have an exact density.
    let with_nll = results.iter().any(|r| r.nll.is_some());
    let with_fid = results.iter().any(|r| r.fid.is_some());
    let mut s = format!(
        "| T | row | NFE | trunc RMSE | vs base net |{} FD-pixel | FD-cls | accuracy |{} ms/image |\n\
         |---:|---|---:|---:|---:|{}---:|---:|---:|{}---:|\n",
        if with_fid {
            " FID | KID | at 255 |"
        } else {
            ""
        },
        if with_nll { " NLL |" } else { "" },
        if with_fid { "---:|---:|---:|" } else { "" },
        if with_nll { "---:|" } else { "" },
    );
    let mut ts: Vec<usize> = results.iter().map(|r| r.t).collect();
    ts.dedup();
    for t in ts {
        let rows: Vec<&RowResult> = results.iter().filter(|r| r.t == t).collect();
        let best = |f: &dyn Fn(&RowResult) -> Option<f64>, lower: bool| -> Option<f64> {
            rows.iter()
                .filter_map(|r| f(r))
                .fold(None, |acc, v| match acc {
                    None => Some(v),
                    Some(a) if (lower && v < a) || (!lower && v > a) => Some(v),
                    a => a,
                })
        };
        let b_trunc = best(&|r| Some(r.trunc_rmse), true);
        let b_fdp = best(&|r| r.fd_pixel, true);
        let b_fdc = best(&|r| r.fd_cls, true);
        let b_acc = best(&|r| r.accuracy, false);
        let b_fid = best(&|r| r.fid, true);
        let b_kid = best(&|r| r.kid, true);
        let cell = |v: Option<f64>, b: Option<f64>, digits: usize| match v {
            None => "".to_string(),
            Some(x) if Some(x) == b => format!("**{x:.digits$}**"),
            Some(x) => format!("{x:.digits$}"),
        };
        for r in rows {
            let rulers = if with_fid {
                format!(
                    " {} | {} | {:.2}% |",
                    cell(r.fid, b_fid, 2),
                    cell(r.kid.map(|k| k * 1000.0), b_kid.map(|k| k * 1000.0), 2),
                    r.saturated * 100.0
                )
            } else {
                String::new()
            };
            s.push_str(&format!(
                "| {} | {} | {} | {} | {:.4} |{rulers} {} | {} | {} |{} {:.1} |\n",
                r.t,
                r.row,
                r.nfe,
                cell(Some(r.trunc_rmse), b_trunc, 4),
                r.trunc_rmse_base,
                cell(r.fd_pixel, b_fdp, 2),
                cell(r.fd_cls, b_fdc, 3),
                cell(r.accuracy, b_acc, 3),
                if with_nll {
                    // Not ranked: samples collapsed toward the modes score below the
                    // mixture's entropy, so lower is not always better.
                    format!(" {} |", opt(r.nll, 2))
                } else {
                    String::new()
                },
                r.ms_per_image
            ));
        }
    }
    s
}

/// Draws the figures of the results into `out`: metrics against T (paper Fig. 2), the levels
/// of every row against EDM's (Fig. 3) and the lambda weights against EDM's weighting at the
/// same levels (Fig. 4). Returns the file names written.
pub fn plot_results(
    title: &str,
    results: &[RowResult],
    sigma_data: f64,
    out: &Path,
) -> Result<Vec<String>> {
    use crate::plots::{Series, line_chart};
    let mut rows: Vec<String> = Vec::new();
    for r in results {
        if !rows.contains(&r.row) {
            rows.push(r.row.clone());
        }
    }
    let mut written = Vec::new();
    // Errors span orders of magnitude (Heun with 2 levels diverges): log10 axes for them.
    type Metric<'a> = (
        &'a str,
        &'a str,
        bool,
        &'a dyn Fn(&RowResult) -> Option<f64>,
    );
    let metrics: [Metric; 5] = [
        ("fid", "FID (Inception-v3)", true, &|r| r.fid),
        (
            "trunc_rmse",
            "truncation RMSE vs the reference",
            true,
            &|r| Some(r.trunc_rmse),
        ),
        ("fd_pixel", "FD-pixel", true, &|r| r.fd_pixel),
        ("fd_cls", "FD-cls", true, &|r| r.fd_cls),
        ("accuracy", "classifier accuracy", false, &|r| r.accuracy),
    ];
    // A curve against T needs two values of T: an evaluation at one T (the learned rows of
    // one bundle) would draw lone points.
    let mut distinct_t: Vec<usize> = results.iter().map(|r| r.t).collect();
    distinct_t.sort_unstable();
    distinct_t.dedup();
    let metrics: &[Metric] = if distinct_t.len() < 2 { &[] } else { &metrics };
    for &(file, label, log, f) in metrics {
        let f = |r: &RowResult| f(r).map(|v| if log { v.max(1e-12).log10() } else { v });
        let series: Vec<Series> = rows
            .iter()
            .map(|row| Series {
                name: row.clone(),
                points: results
                    .iter()
                    .filter(|r| &r.row == row)
                    .filter_map(|r| f(r).map(|v| (r.t as f64, v)))
                    .collect(),
                dashed: !results.iter().any(|r| &r.row == row && r.solver == "Euler")
                    || row.contains("EDM"),
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        let name = format!("{file}_vs_t.png");
        line_chart(
            &out.join(&name),
            &format!("{title}: {label}"),
            "T (denoiser evaluations)",
            &if log {
                format!("log10 {label}")
            } else {
                label.to_string()
            },
            &series,
        )?;
        written.push(name);
    }

    // Levels: ln(sigma_i) against i / (T - 1), EDM's rho = 7 dashed, for each fine-tuned
    // row whose levels differ from it.
    let mut level_series = Vec::new();
    let mut weight_series = Vec::new();
    let mut ts: Vec<usize> = results.iter().map(|r| r.t).collect();
    ts.dedup();
    for &t in &ts {
        let Some(edm) = results
            .iter()
            .find(|r| r.t == t && r.row.starts_with("Euler, EDM"))
        else {
            continue;
        };
        let learned: Vec<&RowResult> = results
            .iter()
            .filter(|r| r.t == t && r.solver == "Euler" && r.sigmas != edm.sigmas)
            .collect();
        if learned.is_empty() {
            continue;
        }
        let levels = |s: &[f32]| -> Vec<(f64, f64)> {
            s.iter()
                .enumerate()
                .map(|(i, &v)| (i as f64 / (s.len() - 1) as f64, (v as f64).ln()))
                .collect()
        };
        level_series.push(Series {
            name: format!("EDM rho=7, T={t}"),
            points: levels(&edm.sigmas),
            dashed: true,
        });
        for r in &learned {
            level_series.push(Series {
                name: format!("{}, T={t}", r.row),
                points: levels(&r.sigmas),
                dashed: false,
            });
            // Lambda_i against ln s_i, normalized to sum 1, beside EDM's w(s) at the same
            // levels normalized the same way: the relative weight each loss puts on a level.
            let s64: Vec<f64> = r.sigmas.iter().map(|&v| v as f64).collect();
            let lambdas = Schedule::new(r.sigmas.clone())?.lambda_weights();
            let total: f64 = lambdas.iter().sum();
            weight_series.push(Series {
                name: format!("lambda, {}, T={t}", r.row),
                points: lambdas
                    .iter()
                    .zip(&s64)
                    .map(|(l, s)| (s.ln(), (l / total).log10()))
                    .collect(),
                dashed: false,
            });
            let w: Vec<f64> = s64[..s64.len() - 1]
                .iter()
                .map(|s| (s * s + sigma_data * sigma_data) / (s * s * sigma_data * sigma_data))
                .collect();
            let wt: f64 = w.iter().sum();
            weight_series.push(Series {
                name: format!("EDM w(s), same levels, T={t}"),
                points: w
                    .iter()
                    .zip(&s64)
                    .map(|(w, s)| (s.ln(), (w / wt).log10()))
                    .collect(),
                dashed: true,
            });
        }
    }
    if !level_series.is_empty() {
        line_chart(
            &out.join("schedules.png"),
            &format!("{title}: learned levels vs EDM rho=7"),
            "i / (T - 1)",
            "ln sigma_i",
            &level_series,
        )?;
        written.push("schedules.png".into());
        line_chart(
            &out.join("lambda_weights.png"),
            &format!("{title}: lambda_i vs EDM weighting (each normalized to sum 1)"),
            "ln sigma_i",
            "log10 relative weight",
            &weight_series,
        )?;
        written.push("lambda_weights.png".into());
    }
    Ok(written)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::run::slug;
    #[test]
    fn slugs_and_the_best_cell_per_t() {
        assert_eq!(
            slug("DPM-Solver++(2M), EDM rho=7"),
            "dpm-solver-2m-edm-rho-7"
        );
        let row = |name: &str, t: usize, trunc: f64, acc: Option<f64>| RowResult {
            row: name.into(),
            solver: "Euler",
            t,
            nfe: t,
            sigmas: vec![80.0, 0.002],
            trunc_rmse: trunc,
            trunc_rmse_base: trunc + 0.5,
            fd_pixel: None,
            fd_cls: None,
            accuracy: acc,
            fid: None,
            kid: None,
            saturated: 0.0,
            learned_levels: false,
            finetuned_weights: false,
            nll: None,
            ms_per_image: 1.0,
            grid: String::new(),
        };
        let mut tuned = row("two-stage, \"x\"", 8, 0.1, None);
        (tuned.fid, tuned.kid, tuned.saturated) = (Some(18.25), Some(0.0123), 0.001);
        (tuned.learned_levels, tuned.finetuned_weights) = (true, true);
        tuned.fd_pixel = Some(3.5);
        let csv = to_rulers_csv(1, 2000, &[tuned.clone()], true);
        assert_eq!(
            csv,
            "seed,T,row,solver,levels,weights,nfe,n,fid,kid,fd_pixel,fd_cls,saturated\n\
             1,8,\"two-stage, \"\"x\"\"\",Euler,learned,finetuned,8,2000,18.2500,0.012300,3.5000,,0.00100\n"
        );
        let md = to_markdown(&[tuned]);
        assert!(
            md.contains("FID | KID | at 255") && md.contains("**18.25**"),
            "{md}"
        );
        let md = to_markdown(&[
            row("a", 5, 0.3, Some(0.5)),
            row("b", 5, 0.2, Some(0.4)),
            row("a", 8, 0.1, None),
        ]);
        assert!(
            md.contains("| 5 | a | 5 | 0.3000 | 0.8000 |  |  | **0.500** |"),
            "{md}"
        );
        assert!(
            md.contains("| 5 | b | 5 | **0.2000** | 0.7000 |  |  | 0.400 |"),
            "{md}"
        );
        assert!(md.contains("| 8 | a | 8 | **0.1000** |"), "{md}");
        let csv = to_csv("d", &[row("a", 5, 0.3, None)]);
        assert_eq!(
            csv.lines().nth(1),
            // fd_pixel, fd_cls, accuracy, fid, kid empty; saturated 0; nll empty.
            Some("d,\"a\",Euler,5,5,0.300000,0.800000,,,,,,0.00000,,1.000,80 0.002")
        );
    }
}
