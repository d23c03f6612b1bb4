//! The residual MLP's hyper-parameters: the denoiser of low-dimensional data (the exact
//! mixtures' test problems), with the same noise and label embedding as the U-Net.

use alloc::string::String;
use serde::{Deserialize, Serialize};

/// Hyper-parameters of the residual MLP denoiser.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Dimension of one sample.
    pub dim: usize,
    /// Width of the hidden layers.
    pub hidden: usize,
    /// Number of residual blocks.
    pub depth: usize,
    /// Channels of the positional noise embedding.
    pub noise_channels: usize,
    /// Number of class labels, 0 = unconditional.
    pub label_dim: usize,
}

impl MlpConfig {
    /// The required sizes, every other field at its default.
    pub fn new(dim: usize) -> Self {
        MlpConfig {
            dim,
            hidden: 256,
            depth: 3,
            noise_channels: 64,
            label_dim: 0,
        }
    }
    /// Sets `hidden`.
    pub fn with_hidden(mut self, hidden: usize) -> Self {
        self.hidden = hidden;
        self
    }
    /// Sets `depth`.
    pub fn with_depth(mut self, depth: usize) -> Self {
        self.depth = depth;
        self
    }
    /// Sets `noise_channels`.
    pub fn with_noise_channels(mut self, noise_channels: usize) -> Self {
        self.noise_channels = noise_channels;
        self
    }
    /// Sets `label_dim`.
    pub fn with_label_dim(mut self, label_dim: usize) -> Self {
        self.label_dim = label_dim;
        self
    }
}

impl MlpConfig {
    /// See [`NetConfig::macs_per_evaluation`].
    pub fn macs_per_evaluation(&self) -> u64 {
        let m = |a: usize, b: usize| (a as u64).saturating_mul(b as u64);
        m(self.label_dim, self.noise_channels)
            .saturating_add(m(self.noise_channels, self.hidden))
            .saturating_add(m(self.dim, self.hidden).saturating_mul(2))
            .saturating_add(m(self.hidden, self.hidden).saturating_mul(self.depth as u64))
    }

    /// Checks the sizes.
    pub fn validate(&self) -> Result<(), String> {
        if self.dim == 0 || self.hidden == 0 {
            return Err("MLP dim and hidden width must be positive".into());
        }
        // Bounds before anything is built from these numbers (a hostile bundle could ask for
        // 2^26 layers); far above anything fewstep trains.
        for (name, value, max) in [
            ("dim", self.dim, 1 << 24),
            ("hidden", self.hidden, 1 << 16),
            ("depth", self.depth, 1 << 10),
            ("noise_channels", self.noise_channels, 1 << 14),
            ("label_dim", self.label_dim, 1 << 16),
        ] {
            if value > max {
                return Err(alloc::format!(
                    "MLP {name} {value} is above the limit {max}"
                ));
            }
        }
        if self.noise_channels < 4 || !self.noise_channels.is_multiple_of(2) {
            return Err("the noise embedding needs an even number of channels, at least 4".into());
        }
        Ok(())
    }

    /// An upper estimate of the bytes of activations one sample needs in a forward pass:
    /// input, output and a few hidden vectors per block, f32, doubled for temporaries.
    pub fn activation_bytes(&self) -> u64 {
        let (dim, hidden) = (self.dim as u64, self.hidden as u64);
        2 * 4 * (4 * dim + (4 + 2 * self.depth as u64) * hidden + 2 * self.noise_channels as u64)
    }
}
