//! A residual MLP denoiser for low-dimensional data (Gaussian mixtures, tiny images):
//! the same noise/label embedding as the U-Net, added to the projected input, then
//! `h <- h + W_l silu(h)` blocks and a linear read-out.

use alloc::vec::Vec;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use super::{MlpConfig, embed};

impl MlpConfig {
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
