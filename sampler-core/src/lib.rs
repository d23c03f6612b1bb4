//! fewstep's deployable half: everything needed to turn a bundle into images, and the one
//! home of every definition the trainer shares (schedule, preconditioning, network).
//!
//! `no_std` + `alloc`; runs on a workstation CPU, a GPU (through burn's backends) and a
//! Cortex-M4. See docs/method.md for the formulas and docs/architecture.md for the layout.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod bundle;
pub mod config;
#[cfg(feature = "std")]
pub mod cpu;
#[cfg(feature = "burn")]
pub mod denoiser;
pub mod error;
#[cfg(feature = "std")]
pub mod fs;
pub mod gmm;
pub mod micro;
pub mod model;
pub mod pack;
pub mod precond;
pub mod rng;
pub mod sampler;
pub mod schedule;
pub mod solver;

pub use bundle::{Bundle, BundleError};
#[cfg(feature = "burn")]
pub use burn;
pub use error::SamplerError;
pub use sampler::Images;
#[cfg(feature = "burn")]
pub use sampler::Sampler;
pub use schedule::{Schedule, Warp};
