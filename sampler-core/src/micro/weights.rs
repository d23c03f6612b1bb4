//! The network's layers bound to weights read in place from a version-2 bundle's weights
//! pack (`crate::pack`), which can sit in flash: f32, f16 or int8, dequantized a filter at
//! a time by whoever reads them (`super::ops`). The binding walks the same
//! [`UNetConfig::topology`] as burn's module, by burn's parameter paths.

use alloc::vec::Vec;

use crate::config::{BlockSpec, noise_frequency};
use crate::config::{MlpConfig, NetConfig, Resample, UNetConfig};
use crate::error::SamplerError;
use crate::pack::{PackView, Weight};

/// A Linear layer: weight `[in, out]`, bias `[out]`.
#[derive(Clone, Copy)]
pub(super) struct Lin<'a> {
    pub(super) w: Weight<'a>,
    pub(super) b: Weight<'a>,
    pub(super) inputs: usize,
    pub(super) outputs: usize,
}

/// A convolution: weight `[out, in, k, k]`, bias `[out]`.
#[derive(Clone, Copy)]
pub(super) struct Conv<'a> {
    pub(super) w: Weight<'a>,
    pub(super) b: Weight<'a>,
    pub(super) cin: usize,
    pub(super) cout: usize,
    pub(super) k: usize,
}

/// A GroupNorm: gamma, beta `[C]`.
#[derive(Clone, Copy)]
pub(super) struct Norm<'a> {
    pub(super) gamma: Weight<'a>,
    pub(super) beta: Weight<'a>,
    pub(super) channels: usize,
}

/// EDM's noise/label mapping: `map_label`, `map_layer0` and `map_layer1` (the U-Net's;
/// the MLP has no `map_layer1`).
pub(super) struct Embedding<'a> {
    /// Channels of the positional embedding of `c_noise`.
    pub(super) noise_channels: usize,
    /// Its `noise_channels / 2` frequencies ([`noise_frequency`]), computed once: each is
    /// an f64 power, ~1,000 instructions of soft float on the M4, and every evaluation of
    /// the network needs them all.
    pub(super) freqs: Vec<f32>,
    /// Channels of the output `emb`.
    pub(super) channels: usize,
    pub(super) map_label: Option<Lin<'a>>,
    pub(super) map_layer0: Lin<'a>,
    pub(super) map_layer1: Option<Lin<'a>>,
}

/// One `UNetBlock` (model::unet).
pub(super) struct Block<'a> {
    pub(super) cin: usize,
    pub(super) cout: usize,
    pub(super) resample: Resample,
    pub(super) takes_skip: bool,
    pub(super) norm0: Norm<'a>,
    pub(super) conv0: Conv<'a>,
    pub(super) affine: Lin<'a>,
    pub(super) norm1: Norm<'a>,
    pub(super) conv1: Conv<'a>,
    pub(super) skip: Option<Conv<'a>>,
    /// norm2, qkv, proj.
    pub(super) attention: Option<(Norm<'a>, Conv<'a>, Conv<'a>)>,
}

/// EDM's `SongUNet` (model::unet).
pub(super) struct UNet<'a> {
    pub(super) config: UNetConfig,
    pub(super) embedding: Embedding<'a>,
    pub(super) conv_in: Conv<'a>,
    pub(super) enc: Vec<Block<'a>>,
    pub(super) dec: Vec<Block<'a>>,
    pub(super) aux_norm: Norm<'a>,
    pub(super) aux_conv: Conv<'a>,
}

/// The residual MLP (model::mlp).
pub(super) struct Mlp<'a> {
    pub(super) config: MlpConfig,
    pub(super) embedding: Embedding<'a>,
    pub(super) input: Lin<'a>,
    pub(super) blocks: Vec<Lin<'a>>,
    pub(super) output: Lin<'a>,
}

/// The raw network F of a bundle.
// One per sampler: boxing the U-Net would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Net<'a> {
    UNet(UNet<'a>),
    Mlp(Mlp<'a>),
}

impl<'a> Net<'a> {
    /// Binds every layer of `config` to its tensors in `pack`, which
    /// [`NetConfig::check_pack`](crate::config::NetConfig::check_pack) has already
    /// matched (names and shapes) to `config`.
    pub(super) fn bind(config: &NetConfig, pack: &PackView<'a>) -> Result<Self, SamplerError> {
        let w = Weights { pack };
        Ok(match config {
            NetConfig::UNet(c) => Net::UNet(w.unet(c)?),
            NetConfig::Mlp(c) => Net::Mlp(w.mlp(c)?),
        })
    }
}

/// Looks tensors up by burn's path.
struct Weights<'p, 'a> {
    pack: &'p PackView<'a>,
}

impl<'a> Weights<'_, 'a> {
    fn get(&self, name: &str) -> Result<Weight<'a>, SamplerError> {
        self.pack
            .get(name)
            .map(|t| t.weight())
            .ok_or_else(|| SamplerError::Weights(alloc::format!("'{name}' is missing")))
    }

    fn lin(&self, name: &str, inputs: usize, outputs: usize) -> Result<Lin<'a>, SamplerError> {
        Ok(Lin {
            w: self.get(&alloc::format!("{name}.weight"))?,
            b: self.get(&alloc::format!("{name}.bias"))?,
            inputs,
            outputs,
        })
    }

    fn conv(
        &self,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
    ) -> Result<Conv<'a>, SamplerError> {
        Ok(Conv {
            w: self.get(&alloc::format!("{name}.weight"))?,
            b: self.get(&alloc::format!("{name}.bias"))?,
            cin,
            cout,
            k,
        })
    }

    fn norm(&self, name: &str, channels: usize) -> Result<Norm<'a>, SamplerError> {
        Ok(Norm {
            gamma: self.get(&alloc::format!("{name}.gamma"))?,
            beta: self.get(&alloc::format!("{name}.beta"))?,
            channels,
        })
    }

    /// The embedding of the network `net` (`UNet` or `Mlp`), `map_layer1` when `two_layers`.
    fn embedding(
        &self,
        net: &str,
        label_dim: usize,
        noise_channels: usize,
        channels: usize,
        two_layers: bool,
    ) -> Result<Embedding<'a>, SamplerError> {
        let layer = |name: &str, inputs, outputs| {
            self.lin(&alloc::format!("{net}.{name}"), inputs, outputs)
        };
        let half = noise_channels / 2;
        Ok(Embedding {
            noise_channels,
            freqs: (0..half).map(|i| noise_frequency(i, half)).collect(),
            channels,
            map_label: if label_dim > 0 {
                Some(layer("map_label", label_dim, noise_channels)?)
            } else {
                None
            },
            map_layer0: layer("map_layer0", noise_channels, channels)?,
            map_layer1: if two_layers {
                Some(layer("map_layer1", channels, channels)?)
            } else {
                None
            },
        })
    }

    /// The blocks `specs` of the U-Net's `part` (`enc` or `dec`).
    fn blocks(
        &self,
        part: &str,
        specs: &[BlockSpec],
        emb: usize,
    ) -> Result<Vec<Block<'a>>, SamplerError> {
        // Sized once: a doubling Vec of blocks would peak at twice the net on the heap.
        let mut out = Vec::with_capacity(specs.len());
        for (i, b) in specs.iter().enumerate() {
            let p = |f: &str| alloc::format!("UNet.{part}.{i}.{f}");
            out.push(Block {
                cin: b.cin,
                cout: b.cout,
                resample: b.resample,
                takes_skip: b.takes_skip,
                norm0: self.norm(&p("norm0"), b.cin)?,
                conv0: self.conv(&p("conv0"), b.cin, b.cout, 3)?,
                affine: self.lin(&p("affine"), emb, b.cout)?,
                norm1: self.norm(&p("norm1"), b.cout)?,
                conv1: self.conv(&p("conv1"), b.cout, b.cout, 3)?,
                skip: if b.has_skip() {
                    Some(self.conv(&p("skip"), b.cin, b.cout, 1)?)
                } else {
                    None
                },
                attention: if b.attention {
                    Some((
                        self.norm(&p("norm2"), b.cout)?,
                        self.conv(&p("qkv"), b.cout, 3 * b.cout, 1)?,
                        self.conv(&p("proj"), b.cout, b.cout, 1)?,
                    ))
                } else {
                    None
                },
            });
        }
        Ok(out)
    }

    fn unet(&self, c: &UNetConfig) -> Result<UNet<'a>, SamplerError> {
        let noise = c.model_channels * c.channel_mult_noise;
        let emb = c.model_channels * c.channel_mult_emb;
        let (enc, dec, head) = c.topology();
        Ok(UNet {
            config: c.clone(),
            embedding: self.embedding("UNet", c.label_dim, noise, emb, true)?,
            conv_in: self.conv("UNet.conv_in", c.in_channels, c.model_channels, 3)?,
            enc: self.blocks("enc", &enc, emb)?,
            dec: self.blocks("dec", &dec, emb)?,
            aux_norm: self.norm("UNet.aux_norm", head)?,
            aux_conv: self.conv("UNet.aux_conv", head, c.out_channels, 3)?,
        })
    }

    fn mlp(&self, c: &MlpConfig) -> Result<Mlp<'a>, SamplerError> {
        Ok(Mlp {
            config: c.clone(),
            embedding: self.embedding("Mlp", c.label_dim, c.noise_channels, c.hidden, false)?,
            input: self.lin("Mlp.input", c.dim, c.hidden)?,
            blocks: (0..c.depth)
                .map(|i| self.lin(&alloc::format!("Mlp.blocks.{i}"), c.hidden, c.hidden))
                .collect::<Result<Vec<_>, _>>()?,
            output: self.lin("Mlp.output", c.hidden, c.dim)?,
        })
    }
}
