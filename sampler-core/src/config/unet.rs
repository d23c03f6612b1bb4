//! The U-Net's hyper-parameters (EDM's DDPM++ `SongUNet`) and the one walk of its
//! architecture, [`UNetConfig::topology`]: the blocks, their channels and resolutions, which
//! the burn module, the micro runtime, the parameter list, the MAC count and the memory
//! estimates all follow.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Hyper-parameters of `SongUNet` (EDM's DDPM++ U-Net); defaults are EDM's DDPM++ CIFAR-10 settings scaled
/// down for CPUs where noted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    /// Image resolution (square images).
    pub img_resolution: usize,
    /// Number of color channels of the input.
    pub in_channels: usize,
    /// Number of color channels of the output (= `in_channels` for a denoiser).
    pub out_channels: usize,
    /// Number of class labels, 0 = unconditional.
    pub label_dim: usize,
    /// Base multiplier for the number of channels (EDM: 128).
    pub model_channels: usize,
    /// Per-resolution multipliers for the number of channels (EDM: [2, 2, 2]).
    pub channel_mult: Vec<usize>,
    /// Multiplier for the dimensionality of the embedding vector (EDM: 4).
    pub channel_mult_emb: usize,
    /// Number of residual blocks per resolution (EDM: 4).
    pub num_blocks: usize,
    /// Resolutions at which self-attention is applied (EDM: [16]).
    pub attn_resolutions: Vec<usize>,
    /// Multiplier for the noise embedding channels (EDM: 1).
    pub channel_mult_noise: usize,
}

impl UNetConfig {
    /// The required sizes, every other field at its default.
    pub fn new(img_resolution: usize, in_channels: usize, out_channels: usize) -> Self {
        UNetConfig {
            img_resolution,
            in_channels,
            out_channels,
            label_dim: 0,
            model_channels: 32,
            channel_mult: vec![1, 2, 2],
            channel_mult_emb: 4,
            num_blocks: 2,
            attn_resolutions: vec![],
            channel_mult_noise: 1,
        }
    }
    /// Sets `label_dim`.
    pub fn with_label_dim(mut self, label_dim: usize) -> Self {
        self.label_dim = label_dim;
        self
    }
    /// Sets `model_channels`.
    pub fn with_model_channels(mut self, model_channels: usize) -> Self {
        self.model_channels = model_channels;
        self
    }
    /// Sets `channel_mult`.
    pub fn with_channel_mult(mut self, channel_mult: Vec<usize>) -> Self {
        self.channel_mult = channel_mult;
        self
    }
    /// Sets `channel_mult_emb`.
    pub fn with_channel_mult_emb(mut self, channel_mult_emb: usize) -> Self {
        self.channel_mult_emb = channel_mult_emb;
        self
    }
    /// Sets `num_blocks`.
    pub fn with_num_blocks(mut self, num_blocks: usize) -> Self {
        self.num_blocks = num_blocks;
        self
    }
    /// Sets `attn_resolutions`.
    pub fn with_attn_resolutions(mut self, attn_resolutions: Vec<usize>) -> Self {
        self.attn_resolutions = attn_resolutions;
        self
    }
    /// Sets `channel_mult_noise`.
    pub fn with_channel_mult_noise(mut self, channel_mult_noise: usize) -> Self {
        self.channel_mult_noise = channel_mult_noise;
        self
    }
}

impl UNetConfig {
    /// Checks that the resolution halves cleanly at every level and channels are sane.
    pub fn validate(&self) -> Result<(), String> {
        let levels = self.channel_mult.len();
        if levels == 0 || self.model_channels == 0 || self.num_blocks == 0 {
            return Err(
                "channel_mult, model_channels and num_blocks must be non-empty/positive".into(),
            );
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.img_resolution == 0 {
            return Err("image resolution and channel counts must be positive".into());
        }
        // Bounds before anything is built from these numbers (a hostile bundle could ask for
        // 2^64 blocks); far above anything fewstep trains. Memory is checked separately.
        let bounds = [
            ("img_resolution", self.img_resolution, 4096),
            ("in_channels", self.in_channels, 64),
            ("out_channels", self.out_channels, 64),
            ("label_dim", self.label_dim, 1 << 16),
            ("model_channels", self.model_channels, 4096),
            ("number of levels (channel_mult)", levels, 10),
            ("channel_mult_emb", self.channel_mult_emb, 64),
            ("num_blocks", self.num_blocks, 64),
            (
                "number of attn_resolutions",
                self.attn_resolutions.len(),
                16,
            ),
            ("channel_mult_noise", self.channel_mult_noise, 64),
        ];
        for (name, value, max) in bounds.into_iter().chain(
            self.channel_mult
                .iter()
                .map(|&m| ("a channel_mult entry", m, 64)),
        ) {
            if value > max {
                return Err(alloc::format!(
                    "U-Net {name} {value} is above the limit {max}"
                ));
            }
        }
        if !self.img_resolution.is_multiple_of(1 << (levels - 1)) {
            return Err(alloc::format!(
                "resolution {} is not divisible by 2^{} ({} levels); resize the images",
                self.img_resolution,
                levels - 1,
                levels
            ));
        }
        if self.channel_mult.contains(&0)
            || self.channel_mult_emb == 0
            || self.channel_mult_noise == 0
        {
            return Err("channel multipliers must be positive".into());
        }
        let noise = self.model_channels.saturating_mul(self.channel_mult_noise);
        if noise < 4 || !noise.is_multiple_of(2) {
            return Err(alloc::format!(
                "the noise embedding has model_channels * channel_mult_noise = {noise} \
                 channels; it needs an even number, at least 4 (half sines, half cosines)"
            ));
        }
        // Every GroupNorm splits its channels into min(32, C/4) equal groups.
        let (enc, dec, head) = self.topology();
        let norms = enc
            .iter()
            .chain(&dec)
            .flat_map(|b| [b.cin, b.cout])
            .chain([head]);
        for c in norms {
            if !c.is_multiple_of(edm_groups(c)) {
                return Err(alloc::format!(
                    "model_channels {} with channel_mult {:?} gives a GroupNorm over {c} \
                     channels, which EDM's rule splits into {} groups unevenly; choose them so \
                     that every channel count, the decoder's sums with skip connections \
                     included, is a multiple of 4 (of 32 above 128)",
                    self.model_channels,
                    self.channel_mult,
                    edm_groups(c)
                ));
            }
        }
        Ok(())
    }

    /// The blocks of SongUNet in order, encoder then decoder: the one walk of the
    /// architecture that [`UNetConfig::init`] builds and [`UNetConfig::validate`] checks.
    /// Returns them with the channels of the output head.
    pub(crate) fn topology(&self) -> (Vec<BlockSpec>, Vec<BlockSpec>, usize) {
        let spec = |cin, cout, attention, resample, takes_skip, res, edm_name| BlockSpec {
            cin,
            cout,
            attention,
            resample,
            takes_skip,
            res,
            edm_name,
        };
        // Encoder, in SongUNet's order.
        let mut enc = Vec::new();
        let mut cout = self.model_channels;
        let mut skips = vec![cout];
        for (level, &mult) in self.channel_mult.iter().enumerate() {
            let res = self.img_resolution >> level;
            if level > 0 {
                let name = alloc::format!("{res}x{res}_down");
                enc.push(spec(cout, cout, false, Resample::Down, false, res, name));
                skips.push(cout);
            }
            for idx in 0..self.num_blocks {
                let cin = cout;
                cout = self.model_channels.saturating_mul(mult);
                let attn = self.attn_resolutions.contains(&res);
                let name = alloc::format!("{res}x{res}_block{idx}");
                enc.push(spec(cin, cout, attn, Resample::None, false, res, name));
                skips.push(cout);
            }
        }
        // Decoder.
        let mut dec = Vec::new();
        let levels = self.channel_mult.len();
        for (level, &mult) in self.channel_mult.iter().enumerate().rev() {
            let res = self.img_resolution >> level;
            if level + 1 == levels {
                let (in0, in1) = (
                    alloc::format!("{res}x{res}_in0"),
                    alloc::format!("{res}x{res}_in1"),
                );
                dec.push(spec(cout, cout, true, Resample::None, false, res, in0));
                dec.push(spec(cout, cout, false, Resample::None, false, res, in1));
            } else {
                let name = alloc::format!("{res}x{res}_up");
                dec.push(spec(cout, cout, false, Resample::Up, false, res, name));
            }
            for idx in 0..=self.num_blocks {
                let cin = cout.saturating_add(skips.pop().unwrap_or(0));
                cout = self.model_channels.saturating_mul(mult);
                let attn = idx == self.num_blocks && self.attn_resolutions.contains(&res);
                let name = alloc::format!("{res}x{res}_block{idx}");
                dec.push(spec(cin, cout, attn, Resample::None, true, res, name));
            }
        }
        (enc, dec, cout)
    }

    /// See [`NetConfig::macs_per_evaluation`].
    pub fn macs_per_evaluation(&self) -> u64 {
        let m = |a: usize, b: usize| (a as u64).saturating_mul(b as u64);
        let conv = |cin: usize, cout: usize, k: usize, res: usize| {
            m(cin, cout).saturating_mul(m(k * k, res.saturating_mul(res)))
        };
        let emb = self.model_channels.saturating_mul(self.channel_mult_emb);
        let noise = self.model_channels.saturating_mul(self.channel_mult_noise);
        let r = self.img_resolution;
        let (enc, dec, cout) = self.topology();
        let mut total = m(self.label_dim, noise)
            .saturating_add(m(noise, emb))
            .saturating_add(m(emb, emb))
            .saturating_add(conv(self.in_channels, self.model_channels, 3, r))
            .saturating_add(conv(cout, self.out_channels, 3, r));
        for b in enc.iter().chain(&dec) {
            let pixels = m(b.res, b.res);
            let mut block = conv(b.cin, b.cout, 3, b.res)
                .saturating_add(m(emb, b.cout))
                .saturating_add(conv(b.cout, b.cout, 3, b.res));
            if b.has_skip() {
                block = block.saturating_add(conv(b.cin, b.cout, 1, b.res));
            }
            if b.attention {
                let products = m(b.cout, 2).saturating_mul(pixels.saturating_mul(pixels));
                block = block
                    .saturating_add(conv(b.cout, 3 * b.cout, 1, b.res))
                    .saturating_add(products)
                    .saturating_add(conv(b.cout, b.cout, 1, b.res));
            }
            total = total.saturating_add(block);
        }
        total
    }

    /// Every layer of the network as (our path prefix, NVlabs/edm's `SongUNet` path prefix):
    /// `UNet.enc.3` is `enc.16x16_block0`, `UNet.conv_in` is `enc.32x32_conv`. What
    /// `trainer import` and `export --format safetensors` translate names with; the field
    /// names inside a layer are the same but GroupNorm's (`gamma`/`beta` against
    /// `weight`/`bias`). Call [`UNetConfig::validate`] first.
    pub fn edm_layer_names(&self) -> Vec<(String, String)> {
        let r = self.img_resolution;
        let (enc, dec, _) = self.topology();
        let mut out: Vec<(String, String)> = ["map_label", "map_layer0", "map_layer1"]
            .iter()
            .map(|n| (alloc::format!("UNet.{n}"), String::from(*n)))
            .collect();
        out.push(("UNet.conv_in".into(), alloc::format!("enc.{r}x{r}_conv")));
        for (part, blocks) in [("enc", &enc), ("dec", &dec)] {
            for (i, b) in blocks.iter().enumerate() {
                out.push((
                    alloc::format!("UNet.{part}.{i}"),
                    alloc::format!("{part}.{}", b.edm_name),
                ));
            }
        }
        out.push((
            "UNet.aux_norm".into(),
            alloc::format!("dec.{r}x{r}_aux_norm"),
        ));
        out.push((
            "UNet.aux_conv".into(),
            alloc::format!("dec.{r}x{r}_aux_conv"),
        ));
        out
    }

    /// An upper estimate of the bytes of activations one image needs in a forward pass
    /// without gradients (what the sampler allocates per image of a batch): every skip
    /// connection kept for the decoder, plus the largest block's working set (its input, the
    /// GroupNorm, convolution and residual outputs, the 3x3 unfolding) and attention's
    /// `n x n` weights twice over (logits and softmax), all f32, doubled for burn's
    /// temporaries. Call [`UNetConfig::validate`] first. A test holds it above the measured
    /// peak.
    pub fn activation_bytes(&self) -> u64 {
        let (enc, dec, _) = self.topology();
        let r = self.img_resolution as u64;
        let mut res = r;
        let mut skips = self.model_channels as u64 * r * r;
        let mut peak: u64 = 0;
        let block_cost = |b: &BlockSpec, res: u64| -> u64 {
            let n = res * res;
            let (cin, cout) = (b.cin as u64, b.cout as u64);
            let mut v = (3 * cin + 5 * cout + 9 * cin) * n;
            if b.attention {
                v += 5 * cout * n + 2 * n * n;
            }
            v
        };
        for b in &enc {
            if b.resample == Resample::Down {
                res /= 2;
            }
            let c = block_cost(b, res);
            peak = peak.max(c);
            skips += b.cout as u64 * res * res;
        }
        for b in &dec {
            if b.resample == Resample::Up {
                res *= 2;
            }
            peak = peak.max(block_cost(b, res));
        }
        2 * 4 * (skips + peak + 2 * self.in_channels as u64 * r * r)
    }
}

/// One block of [`UNetConfig::topology`].
pub(crate) struct BlockSpec {
    pub(crate) cin: usize,
    pub(crate) cout: usize,
    pub(crate) attention: bool,
    pub(crate) resample: Resample,
    pub(crate) takes_skip: bool,
    /// Resolution of the block's output (after its resampling).
    pub(crate) res: usize,
    /// The block's key in SongUNet's `enc`/`dec` dictionaries (`16x16_block0`).
    pub(crate) edm_name: String,
}

impl BlockSpec {
    /// Whether the residual path has a 1x1 projection (`skip`): channels or resolution
    /// change.
    pub(crate) fn has_skip(&self) -> bool {
        self.cin != self.cout || self.resample != Resample::None
    }
}

/// EDM's GroupNorm group count for `channels`: at most 32 groups of at least 4 channels.
pub(crate) fn edm_groups(channels: usize) -> usize {
    32.min(channels / 4).max(1)
}

/// Resampling applied before `conv0` and `skip` of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// None.
    None,
    /// 2x2 average pooling (EDM's `down` with filter [1, 1]).
    Down,
    /// 2x nearest-neighbour upsampling (EDM's `up` with filter [1, 1]).
    Up,
}
