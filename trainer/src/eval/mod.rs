//! Measurements of samplers (docs/method.md §6), behind `trainer eval`: for a base bundle
//! and its fine-tuned bundles, at several numbers of denoiser evaluations T, the truncation
//! error against the base network's many-step Heun solution from the same noise, Frechet
//! distances to held-out real images (pixels and a small classifier's features), the
//! classifier's accuracy on the requested labels, and wall time; then the table, CSV and
//! figures.
//!
//! Three layers, each using only the ones before it: [`measure`] holds the rulers
//! ([`evaluate_schedule`] is the truncation measurement for one schedule, plus the exact
//! log-likelihood when the model is an analytic mixture), [`run`] generates every row's
//! images and measures them, [`report`] writes what was measured.

pub mod measure;
pub mod report;
pub mod run;

pub use measure::{RealSet, ScheduleEval, evaluate_schedule};
pub use report::{
    Setting, plot_results, results_markdown, to_csv, to_markdown, to_rulers_csv, write_reports,
};
pub use run::{EvalConfig, EvalResults, RowResult, levels_for, run_eval, slug, solver_title};
