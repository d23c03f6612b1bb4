//! EDM's DDPM++ U-Net (`SongUNet` in NVlabs/edm training/networks.py, Song et al. 2021):
//! GroupNorm, SiLU, positional noise embedding, residual blocks with the embedding added
//! after the first convolution, 2x average-pool down and nearest up sampling (EDM's
//! `resample_filter = [1, 1]`), optional single-head self-attention at chosen resolutions,
//! optional class-label embedding. Field names are SongUNet's (`map_layer0`, `norm0`,
//! `conv0`, `affine`, `skip`, `qkv`, `proj`, `aux_norm`, `aux_conv`); the encoder and decoder
//! dictionaries become `enc`/`dec` vectors in SongUNet's insertion order.

use alloc::vec;
use alloc::vec::Vec;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use super::{
    UNetConfig, conv2d, conv2d_residual, embed, group_norm, group_norm_shifted, resample2,
    softmax_last,
};
use crate::config::{BlockSpec, GROUP_NORM_EPS, Resample, SKIP_SCALE, edm_groups};

impl UNetConfig {
    /// Builds the network. Call [`UNetConfig::validate`] first.
    pub fn init(&self, device: &Device) -> SongUNet {
        let emb_channels = self.model_channels * self.channel_mult_emb;
        let noise_channels = self.model_channels * self.channel_mult_noise;
        let (enc, dec, cout) = self.topology();
        let build = |b: &BlockSpec| {
            let mut block =
                UNetBlock::new(b.cin, b.cout, emb_channels, b.attention, b.resample, device);
            block.takes_skip = b.takes_skip;
            block
        };
        let conv_in = conv(self.in_channels, self.model_channels, 3, device);
        let enc = enc.iter().map(build).collect();
        let dec = dec.iter().map(build).collect();

        SongUNet {
            map_label: (self.label_dim > 0)
                .then(|| LinearConfig::new(self.label_dim, noise_channels).init(device)),
            map_layer0: LinearConfig::new(noise_channels, emb_channels).init(device),
            map_layer1: LinearConfig::new(emb_channels, emb_channels).init(device),
            conv_in,
            enc,
            dec,
            aux_norm: edm_group_norm(cout, device),
            aux_conv: conv(cout, self.out_channels, 3, device),
            noise_channels,
            img_resolution: self.img_resolution,
            in_channels: self.in_channels,
        }
    }
}

fn conv(cin: usize, cout: usize, kernel: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [kernel, kernel])
        .with_padding(PaddingConfig2d::Explicit(
            kernel / 2,
            kernel / 2,
            kernel / 2,
            kernel / 2,
        ))
        .init(device)
}

/// EDM's GroupNorm: at most 32 groups with at least 4 channels each, eps = 1e-6.
fn edm_group_norm(channels: usize, device: &Device) -> GroupNorm {
    GroupNormConfig::new(edm_groups(channels), channels)
        .with_epsilon(GROUP_NORM_EPS)
        .init(device)
}

fn resample(x: Tensor<4>, mode: Resample) -> Tensor<4> {
    match mode {
        Resample::None => x,
        Resample::Down => resample2(x, false),
        Resample::Up => resample2(x, true),
    }
}

/// EDM's `UNetBlock` with DDPM++ settings: `skip_scale = sqrt(1/2)`, `resample_proj`,
/// no adaptive scale, one attention head.
#[derive(Module, Debug)]
pub struct UNetBlock {
    /// GroupNorm before `conv0`.
    pub norm0: GroupNorm,
    /// First 3x3 convolution (after resampling).
    pub conv0: Conv2d,
    /// Projection of the embedding, added after `conv0`.
    pub affine: Linear,
    /// GroupNorm before `conv1`.
    pub norm1: GroupNorm,
    /// Second 3x3 convolution.
    pub conv1: Conv2d,
    /// 1x1 projection of the residual when channels or resolution change.
    pub skip: Option<Conv2d>,
    /// GroupNorm before attention.
    pub norm2: Option<GroupNorm>,
    /// 1x1 query/key/value projection.
    pub qkv: Option<Conv2d>,
    /// 1x1 output projection of attention.
    pub proj: Option<Conv2d>,
    #[module(skip)]
    resample: Resample,
    /// Whether the decoder concatenates a skip connection before this block.
    #[module(skip)]
    pub takes_skip: bool,
    /// Dropout probability before `conv1` (EDM's `dropout`; training only): a training
    /// setting, not part of the bundle, set by [`SongUNet::with_dropout`].
    #[module(skip)]
    pub dropout: f64,
}

impl UNetBlock {
    fn new(
        cin: usize,
        cout: usize,
        emb: usize,
        attention: bool,
        resample: Resample,
        device: &Device,
    ) -> Self {
        let needs_skip = cin != cout || resample != Resample::None;
        UNetBlock {
            norm0: edm_group_norm(cin, device),
            conv0: conv(cin, cout, 3, device),
            affine: LinearConfig::new(emb, cout).init(device),
            norm1: edm_group_norm(cout, device),
            conv1: conv(cout, cout, 3, device),
            skip: needs_skip.then(|| conv(cin, cout, 1, device)),
            norm2: attention.then(|| edm_group_norm(cout, device)),
            qkv: attention.then(|| conv(cout, 3 * cout, 1, device)),
            proj: attention.then(|| conv(cout, cout, 1, device)),
            resample,
            takes_skip: false,
            dropout: 0.0,
        }
    }

    /// # Shapes
    /// `x`: `[B, Cin, H, W]`, `emb`: `[B, E]` -> `[B, Cout, H', W']`.
    pub fn forward(&self, x: Tensor<4>, emb: Tensor<2>) -> Tensor<4> {
        let skip_scale = SKIP_SCALE;
        let orig = x.clone();
        let x = conv2d(
            &self.conv0,
            resample(group_norm(&self.norm0, x, true), self.resample),
        ); // [B, Cout, H', W']
        let [b, c, h, w] = x.dims();
        let params = self.affine.forward(emb); // [B, Cout]
        let x = group_norm_shifted(&self.norm1, x, params, true);
        // EDM applies dropout in training only; here that is a device that records
        // gradients, so sampling, teachers and exported weights never see it.
        let x = if self.dropout > 0.0 && x.device().is_autodiff() {
            let keep = 1.0 - self.dropout;
            let mask = x.random_like(burn::tensor::Distribution::Bernoulli(keep));
            (x * mask).div_scalar(keep)
        } else {
            x
        };
        let residual = match &self.skip {
            Some(skip) => conv2d(skip, resample(orig, self.resample)),
            None => orig,
        };
        let x = conv2d_residual(&self.conv1, x, residual, skip_scale);
        match (&self.norm2, &self.qkv, &self.proj) {
            (Some(norm2), Some(qkv), Some(proj)) => {
                // One head: q, k, v are [B, C, HW]; w = softmax_k(q^T k / sqrt(C)).
                let n = h * w;
                let qkv = conv2d(qkv, group_norm(norm2, x.clone(), false)).reshape([b, c, 3, n]);
                let q = qkv
                    .clone()
                    .slice([0..b, 0..c, 0..1, 0..n])
                    .reshape([b, c, n]);
                let k = qkv
                    .clone()
                    .slice([0..b, 0..c, 1..2, 0..n])
                    .reshape([b, c, n]);
                let v = qkv.slice([0..b, 0..c, 2..3, 0..n]).reshape([b, c, n]);
                let logits = q.swap_dims(1, 2).matmul(k).div_scalar(libm::sqrt(c as f64)); // [B, q, k]
                let attn = softmax_last(logits);
                let a = v.matmul(attn.swap_dims(1, 2)).reshape([b, c, h, w]); // [B, C, q]
                conv2d_residual(proj, a, x, skip_scale)
            }
            _ => x,
        }
    }
}

/// EDM's DDPM++ U-Net. Built by [`UNetConfig::init`].
#[derive(Module, Debug)]
pub struct SongUNet {
    /// Class-label embedding (`label_dim > 0`).
    pub map_label: Option<Linear>,
    /// First layer of the embedding MLP.
    pub map_layer0: Linear,
    /// Second layer of the embedding MLP.
    pub map_layer1: Linear,
    /// SongUNet's `enc['{res}x{res}_conv']`.
    pub conv_in: Conv2d,
    /// The remaining encoder blocks, in SongUNet's order.
    pub enc: Vec<UNetBlock>,
    /// The decoder blocks, in SongUNet's order.
    pub dec: Vec<UNetBlock>,
    /// `dec['{res}x{res}_aux_norm']` at the top resolution.
    pub aux_norm: GroupNorm,
    /// `dec['{res}x{res}_aux_conv']` at the top resolution.
    pub aux_conv: Conv2d,
    #[module(skip)]
    noise_channels: usize,
    #[module(skip)]
    img_resolution: usize,
    #[module(skip)]
    in_channels: usize,
}

impl SongUNet {
    /// The same network with dropout `p` before each block's second convolution (EDM's
    /// DDPM++ CIFAR-10 setting: 0.13). Active only on a device that records gradients; its
    /// masks come from the device's generator (`Device::seed`).
    pub fn with_dropout(mut self, p: f64) -> Self {
        for block in self.enc.iter_mut().chain(self.dec.iter_mut()) {
            block.dropout = p;
        }
        self
    }

    /// # Shapes
    /// `x`: `[B, C, H, W]`, `c_noise`: `[B]`, `labels`: `[B, L]` -> `[B, C_out, H, W]`.
    pub fn forward(
        &self,
        x: Tensor<4>,
        c_noise: Tensor<1>,
        labels: Option<Tensor<2>>,
    ) -> Tensor<4> {
        // 1. Embedding of the noise level (and label).
        let emb = embed(
            c_noise,
            labels,
            self.noise_channels,
            self.map_label.as_ref(),
            &self.map_layer0,
            Some(&self.map_layer1),
        ); // [B, E]
        // 2. Encoder, keeping every output for the skips.
        let mut x = conv2d(&self.conv_in, x);
        let mut skips = vec![x.clone()];
        for block in &self.enc {
            x = block.forward(x, emb.clone());
            skips.push(x.clone());
        }
        // 3. Decoder.
        for block in &self.dec {
            if block.takes_skip
                && let Some(s) = skips.pop()
            {
                x = Tensor::cat(vec![x, s], 1);
            }
            x = block.forward(x, emb.clone());
        }
        // 4. Output head.
        conv2d(&self.aux_conv, group_norm(&self.aux_norm, x, true))
    }

    /// [`SongUNet::forward`] on flattened samples `[B, C*H*W]`.
    pub fn forward_flat(
        &self,
        x: Tensor<2>,
        c_noise: Tensor<1>,
        labels: Option<Tensor<2>>,
    ) -> Tensor<2> {
        let b = x.dims()[0];
        let r = self.img_resolution;
        let y = self.forward(x.reshape([b, self.in_channels, r, r]), c_noise, labels);
        let d = y.dims()[1] * r * r;
        y.reshape([b, d])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Tensor, TensorData};

    #[test]
    fn validate_refuses_uneven_group_norms_and_accepts_what_init_can_run() {
        let bad = UNetConfig::new(8, 1, 1).with_model_channels(18);
        let err = bad.validate().unwrap_err();
        assert!(
            err.contains("GroupNorm") && err.contains("model_channels 18"),
            "{err}"
        );
        // One changed byte of face8.bin: channel_mult [1, 2] -> [1, 127] (above the bound),
        // or -> [1, 27] (432 channels in 32 groups).
        let edit = |m: usize| {
            UNetConfig::new(24, 1, 1)
                .with_model_channels(16)
                .with_channel_mult(vec![1, m])
                .validate()
                .unwrap_err()
        };
        assert!(
            edit(127).contains("channel_mult entry 127"),
            "{}",
            edit(127)
        );
        assert!(edit(27).contains("GroupNorm over 432"), "{}", edit(27));
        // A hostile block count is refused before anything walks it.
        let many = UNetConfig::new(8, 1, 1).with_num_blocks(usize::MAX);
        assert!(many.validate().unwrap_err().contains("num_blocks"));
        // Whatever validate accepts builds and runs (GroupNorm would panic otherwise).
        let device = Device::flex();
        let mut accepted = 0;
        for mc in 1..=20 {
            for mult in [vec![1], vec![1, 2], vec![1, 3], vec![2, 3]] {
                let c = UNetConfig::new(4, 1, 1)
                    .with_model_channels(mc)
                    .with_channel_mult(mult)
                    .with_num_blocks(1);
                if c.validate().is_err() {
                    continue;
                }
                accepted += 1;
                let net = c.init(&device);
                let x = Tensor::<4>::from_data(
                    TensorData::new(vec![0.5f32; 16], [1, 1, 4, 4]),
                    &device,
                );
                let c_noise = Tensor::<1>::from_data(TensorData::new(vec![0.1f32], [1]), &device);
                assert_eq!(net.forward(x, c_noise, None).dims(), [1, 1, 4, 4]);
            }
        }
        assert!(accepted >= 20, "only {accepted} configs accepted");
    }
}
