//! A residual MLP denoiser for low-dimensional data (Gaussian mixtures, tiny images):
//! the same noise/label embedding as the U-Net, added to the projected input, then
//! `h <- h + W_l silu(h)` blocks and a linear read-out.

use alloc::string::String;
use alloc::vec::Vec;
use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use super::embed;

/// Hyper-parameters of [`Mlp`].
#[derive(Config, Debug, PartialEq)]
pub struct MlpConfig {
    /// Dimension of one sample.
    pub dim: usize,
    /// Width of the hidden layers.
    #[config(default = 256)]
    pub hidden: usize,
    /// Number of residual blocks.
    #[config(default = 3)]
    pub depth: usize,
    /// Channels of the positional noise embedding.
    #[config(default = 64)]
    pub noise_channels: usize,
    /// Number of class labels, 0 = unconditional.
    #[config(default = 0)]
    pub label_dim: usize,
}

impl MlpConfig {
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

    /// Builds the network.
    pub fn init(&self, device: &Device) -> Mlp {
        Mlp {
            map_label: (self.label_dim > 0)
                .then(|| LinearConfig::new(self.label_dim, self.noise_channels).init(device)),
            map_layer0: LinearConfig::new(self.noise_channels, self.hidden).init(device),
            input: LinearConfig::new(self.dim, self.hidden).init(device),
            blocks: (0..self.depth)
                .map(|_| LinearConfig::new(self.hidden, self.hidden).init(device))
                .collect(),
            output: LinearConfig::new(self.hidden, self.dim).init(device),
            noise_channels: self.noise_channels,
        }
    }
}

/// Residual MLP. Built by [`MlpConfig::init`].
#[derive(Module, Debug)]
pub struct Mlp {
    /// Class-label embedding.
    pub map_label: Option<Linear>,
    /// Embedding projection.
    pub map_layer0: Linear,
    /// Input projection.
    pub input: Linear,
    /// Residual blocks.
    pub blocks: Vec<Linear>,
    /// Read-out.
    pub output: Linear,
    #[module(skip)]
    noise_channels: usize,
}

impl Mlp {
    /// # Shapes
    /// `x`: `[B, d]`, `c_noise`: `[B]`, `labels`: `[B, L]` -> `[B, d]`.
    pub fn forward(
        &self,
        x: Tensor<2>,
        c_noise: Tensor<1>,
        labels: Option<Tensor<2>>,
    ) -> Tensor<2> {
        let emb = embed(
            c_noise,
            labels,
            self.noise_channels,
            self.map_label.as_ref(),
            &self.map_layer0,
            None,
        );
        let mut h = self.input.forward(x) + emb; // [B, hidden]
        for block in &self.blocks {
            h = h.clone() + block.forward(silu(h));
        }
        self.output.forward(silu(h))
    }
}
