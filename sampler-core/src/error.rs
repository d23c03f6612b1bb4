//! [`SamplerError`], why sampling failed, in one module below both engines: burn's
//! `Sampler` (`crate::sampler`) and the micro runtime (`crate::micro`) return it, so
//! neither takes its error type from the other. It sits on `crate::bundle` only (a bundle
//! that does not decode is one of its causes).

use alloc::string::String;

use crate::bundle::BundleError;

/// Why sampling failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerError {
    /// The bundle is unreadable.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The weights do not fit the declared network.
    #[error("bundle weights do not match its network config: {0}")]
    Weights(String),
    /// A label outside `0..label_count`, or a label for an unconditional model.
    #[error("label {label} is out of range: {reason}")]
    Label {
        /// Requested label.
        label: u32,
        /// Why.
        reason: String,
    },
    /// The tensor backend returned data of an unexpected type.
    #[error("could not read the generated images back: {0}")]
    Readback(String),
    /// The micro runtime's arena is too small for this bundle.
    #[error(
        "the activation arena holds {have} bytes but this bundle needs {need}; give it a \
         larger arena (see MicroSampler::arena_words)"
    )]
    Arena {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// Sampling would need more memory than the caller allows (estimated from the config
    /// by [`Bundle::memory_bytes`](crate::Bundle::memory_bytes) before anything is
    /// allocated), so it is refused instead of aborting the process on a failed allocation.
    #[error(
        "this bundle needs about {need} bytes to sample {batch} image(s) at once, more than the \
         limit of {limit} bytes; sample fewer at a time or raise the limit"
    )]
    Memory {
        /// Estimated bytes.
        need: u64,
        /// The images asked for at once.
        batch: usize,
        /// The limit in force.
        limit: u64,
    },
    /// The model produced NaN or infinite values.
    #[error(
        "the model produced {0} NaN or infinite values; the bundle's weights or parameters are \
         broken (re-export it)"
    )]
    NonFinite(usize),
}
