//! The micro runtime: the sampler for microcontrollers, without burn. It runs exactly the
//! networks bundles hold (the U-Net and the MLP of `model`, walked through the same
//! [`UNetConfig`](crate::model::UNetConfig) topology), with the same preconditioning,
//! Euler solver and portable noise as the host, on plain slices:
//!
//! - weights are read in place from a version-2 bundle's weights pack (`crate::pack`), which
//!   can sit in flash: f32, f16 or int8, dequantized a filter at a time;
//! - activations live in one caller-provided arena of `u32` words whose size
//!   [`MicroSampler::arena_words`] computes before anything runs, by walking the network
//!   with the same code that computes it (a dry run), so the plan and the run cannot drift
//!   apart;
//! - activations are stored as f32 or, to halve the arena, as f16 ([`Activations`]); sums
//!   are always accumulated in f32, over bands of a few rows, so the arena holds the skip
//!   connections and the current block but never a full-size f32 accumulator.
//!
//! This is the one sanctioned second engine besides burn's modules: `tests/micro.rs` holds
//! it to burn on every shipped bundle, and the firmware to this code on the host.

use alloc::string::ToString;
use alloc::vec::Vec;

use crate::bundle::{Bundle, ModelSpec, SolverKind};
use crate::error::SamplerError;
use crate::model::config;
use crate::model::{MlpConfig, NetConfig, Resample, UNetConfig};
use crate::pack::{PackView, Weight, WeightDtype, f16_to_f32, f32_to_f16};
use crate::rng;

/// How activations are stored in the arena (arithmetic is f32 either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activations {
    /// 4 bytes a value: the host's numbers to float rounding.
    F32,
    /// 2 bytes a value (IEEE half): half the arena, ~3 decimal digits per stored value.
    F16,
}

/// An activation as stored: f32, or f16 bits.
trait Store: Copy + Default + bytemuck::Pod {
    fn load(self) -> f32;
    fn save(v: f32) -> Self;
}

impl Store for f32 {
    #[inline(always)]
    fn load(self) -> f32 {
        self
    }
    #[inline(always)]
    fn save(v: f32) -> Self {
        v
    }
}

impl Store for u16 {
    #[inline(always)]
    fn load(self) -> f32 {
        f16_to_f32(self)
    }
    #[inline(always)]
    fn save(v: f32) -> Self {
        f32_to_f16(v)
    }
}

/// Rows per band of the f32 accumulators.
const BAND_ROWS: usize = 4;
/// EDM's residual scale, rounded once to the f32 the runtime computes in.
const SKIP_SCALE: f32 = config::SKIP_SCALE as f32;
/// EDM's GroupNorm epsilon, rounded once to f32.
const NORM_EPS: f32 = config::GROUP_NORM_EPS as f32;

/// A Linear layer: weight `[in, out]`, bias `[out]`.
#[derive(Clone, Copy)]
struct Lin<'a> {
    w: Weight<'a>,
    b: Weight<'a>,
    inputs: usize,
    outputs: usize,
}

/// A convolution: weight `[out, in, k, k]`, bias `[out]`.
#[derive(Clone, Copy)]
struct Conv<'a> {
    w: Weight<'a>,
    b: Weight<'a>,
    cin: usize,
    cout: usize,
    k: usize,
}

/// A GroupNorm: gamma, beta `[C]`.
#[derive(Clone, Copy)]
struct Norm<'a> {
    gamma: Weight<'a>,
    beta: Weight<'a>,
    channels: usize,
}

struct Block<'a> {
    cin: usize,
    cout: usize,
    resample: Resample,
    takes_skip: bool,
    norm0: Norm<'a>,
    conv0: Conv<'a>,
    affine: Lin<'a>,
    norm1: Norm<'a>,
    conv1: Conv<'a>,
    skip: Option<Conv<'a>>,
    /// norm2, qkv, proj.
    attention: Option<(Norm<'a>, Conv<'a>, Conv<'a>)>,
}

struct UNet<'a> {
    config: UNetConfig,
    map_label: Option<Lin<'a>>,
    map_layer0: Lin<'a>,
    map_layer1: Lin<'a>,
    conv_in: Conv<'a>,
    enc: Vec<Block<'a>>,
    dec: Vec<Block<'a>>,
    aux_norm: Norm<'a>,
    aux_conv: Conv<'a>,
}

struct Mlp<'a> {
    config: MlpConfig,
    map_label: Option<Lin<'a>>,
    map_layer0: Lin<'a>,
    input: Lin<'a>,
    blocks: Vec<Lin<'a>>,
    output: Lin<'a>,
}

// One per sampler: boxing the U-Net would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Net<'a> {
    UNet(UNet<'a>),
    Mlp(Mlp<'a>),
}

/// Looks tensors up by burn's path; [`PackView::check_names`] has already matched every
/// name and shape against the config.
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
}

/// A bundle ready to sample on a microcontroller. See the module docs.
pub struct MicroSampler<'a> {
    bundle: Bundle,
    net: Net<'a>,
    weight_dtype: WeightDtype,
    weight_bytes: usize,
}

/// A region of one of the arena's two pools.
#[derive(Clone, Copy, Debug)]
struct Buf {
    off: usize,
    len: usize,
}

/// A bump allocator with stack discipline; in a dry run it only counts.
struct Pool<'s, T> {
    data: &'s mut [T],
    top: usize,
    peak: usize,
}

impl<T> Pool<'_, T> {
    fn alloc(&mut self, len: usize) -> Buf {
        let b = Buf { off: self.top, len };
        self.top += len;
        self.peak = self.peak.max(self.top);
        b
    }
    fn mark(&self) -> usize {
        self.top
    }
    fn release(&mut self, mark: usize) {
        self.top = mark;
    }
}

/// The arena of one run: f32 scratch (accumulator bands, rows, the sampler's state) and
/// stored activations.
struct Ctx<'s, S> {
    f: Pool<'s, f32>,
    s: Pool<'s, S>,
    dry: bool,
}

impl<S: Store> Ctx<'_, S> {
    fn fs(&mut self, b: Buf) -> &mut [f32] {
        &mut self.f.data[b.off..b.off + b.len]
    }
}

/// Per-channel `(scale, shift)` of a GroupNorm over `channels` values read by `value(c, i)`
/// (`n` per channel): `y = x * scale + shift` is `(x - mean) / sqrt(var + eps) * gamma + beta`.
fn norm_affine(
    norm: &Norm<'_>,
    n: usize,
    value: impl Fn(usize, usize) -> f32,
    out: &mut [(f32, f32)],
) {
    let c = norm.channels;
    let groups = config::edm_groups(c);
    let per = c / groups;
    let mut gamma = [0.0f32; 1];
    let mut beta = [0.0f32; 1];
    for g in 0..groups {
        let count = (per * n) as f32;
        let chans = g * per..(g + 1) * per;
        let (mut mean, mut var) = group_moments(&value, chans.clone(), n, count, 1.0);
        let mut unscale = 1.0f32;
        if !(mean.is_finite() && var.is_finite()) {
            // Finite activations whose f32 sums overflow (burn accumulates in f64 and
            // samples such a network): recompute on values scaled below 1 by a power of
            // two, then undo the scale on the mean and the standard deviation.
            let mut amax = 0.0f32;
            for ch in g * per..(g + 1) * per {
                for i in 0..n {
                    amax = amax.max(libm::fabsf(value(ch, i)));
                }
            }
            if amax.is_finite() && amax > 0.0 {
                let exponent = libm::ilogbf(amax) + 1;
                let scale = libm::ldexpf(1.0, -exponent);
                unscale = libm::ldexpf(1.0, exponent);
                (mean, var) = group_moments(&value, chans, n, count, scale);
                mean *= unscale;
            }
        }
        // sqrt(var_true + eps) with var_true = var * unscale^2, kept finite.
        let rstd = 1.0 / (unscale * libm::sqrtf(var + NORM_EPS / (unscale * unscale)));
        for (ch, o) in out.iter_mut().enumerate().skip(g * per).take(per) {
            norm.gamma.read(ch, &mut gamma);
            norm.beta.read(ch, &mut beta);
            let scale = gamma[0] * rstd;
            *o = (scale, beta[0] - mean * scale);
        }
    }
}

/// Mean and variance of `value * scale` over the channels `chans` (`n` values each);
/// `scale` a power of two, so scaling is exact and changes nothing while the sums stay
/// finite. Always inlined, so the common call with `scale = 1.0` multiplies by nothing
/// (a multiply there cost 3-8% of an image's instructions on the M4).
#[inline(always)]
fn group_moments(
    value: &impl Fn(usize, usize) -> f32,
    chans: core::ops::Range<usize>,
    n: usize,
    count: f32,
    scale: f32,
) -> (f32, f32) {
    let mut sum = 0.0f32;
    for ch in chans.clone() {
        for i in 0..n {
            sum += value(ch, i) * scale;
        }
    }
    let mean = sum / count;
    let mut sq = 0.0f32;
    for ch in chans {
        for i in 0..n {
            let d = value(ch, i) * scale - mean;
            sq += d * d;
        }
    }
    (mean, sq / count)
}

#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + libm::expf(-x))
}

/// `out = lin(x)` (+ bias), f32 vectors.
fn linear(l: &Lin<'_>, x: &[f32], out: &mut [f32], row: &mut [f32]) {
    l.b.read(0, out);
    for (i, &xi) in x.iter().enumerate().take(l.inputs) {
        l.w.read(i * l.outputs, &mut row[..l.outputs]);
        for (o, &w) in out.iter_mut().zip(row.iter()) {
            *o += w * xi;
        }
    }
}

/// The input of a block's convolution, as rows at the output resolution: channels of up to
/// two stored parts (the decoder's concatenation), each channel through an optional
/// per-channel affine (GroupNorm) and SiLU, then resampled.
struct Src<'t> {
    parts: [(Buf, usize); 2],
    res_in: usize,
    resample: Resample,
    affine: Option<&'t [(f32, f32)]>,
    silu: bool,
}

impl Src<'_> {
    fn res_out(&self) -> usize {
        match self.resample {
            Resample::None => self.res_in,
            Resample::Down => self.res_in / 2,
            Resample::Up => self.res_in * 2,
        }
    }

    /// Value `i` of channel `c` before resampling, after the affine and SiLU.
    #[inline(always)]
    fn at<S: Store>(&self, s: &View<'_, S>, c: usize, i: usize) -> f32 {
        let n = self.res_in * self.res_in;
        let (part, ch) = if c < self.parts[0].1 {
            (self.parts[0].0, c)
        } else {
            (self.parts[1].0, c - self.parts[0].1)
        };
        let mut v = s.get(part.off + ch * n + i).load();
        if let Some(a) = self.affine {
            v = v * a[c].0 + a[c].1;
        }
        if self.silu { silu(v) } else { v }
    }

    /// Row `y` (output resolution) of channel `c` into `out`; zeros outside the image.
    fn row<S: Store>(&self, s: &View<'_, S>, c: usize, y: isize, out: &mut [f32]) {
        let r = self.res_out();
        if y < 0 || y as usize >= r {
            out.iter_mut().for_each(|v| *v = 0.0);
            return;
        }
        let y = y as usize;
        let ri = self.res_in;
        match self.resample {
            Resample::None => {
                for (x, o) in out.iter_mut().enumerate() {
                    *o = self.at(s, c, y * ri + x);
                }
            }
            Resample::Up => {
                for (x, o) in out.iter_mut().enumerate() {
                    *o = self.at(s, c, (y / 2) * ri + x / 2);
                }
            }
            Resample::Down => {
                for (x, o) in out.iter_mut().enumerate() {
                    let i = 2 * y * ri + 2 * x;
                    let top = (self.at(s, c, i) + self.at(s, c, i + 1)) * 0.5;
                    let bottom = (self.at(s, c, i + ri) + self.at(s, c, i + ri + 1)) * 0.5;
                    *o = (top + bottom) * 0.5;
                }
            }
        }
    }
}

/// `acc[co][y - y0][x] += conv(src)[co][y][x]` for the rows `y0 .. y0 + rows` of a k x k
/// convolution (k = 1 or 3, zero padding), weights dequantized a filter at a time.
#[allow(clippy::too_many_arguments)]
fn conv_band<S: Store>(
    conv: &Conv<'_>,
    src: &Src<'_>,
    s: &View<'_, S>,
    y0: usize,
    rows: usize,
    acc: &mut [f32],
    in_rows: &mut [f32],
    filter: &mut [f32],
) {
    let r = src.res_out();
    let k = conv.k;
    let band = rows * r;
    // Input rows carry a zero column on each side (width r + 2), so the 3x3 taps of every
    // output column are in range without edge cases.
    let w2 = r + 2;
    for ci in 0..conv.cin {
        // The input rows y0 - pad .. y0 + rows + pad of channel ci.
        let pad = k / 2;
        for j in 0..rows + 2 * pad {
            let y = y0 as isize + j as isize - pad as isize;
            let row = &mut in_rows[j * w2..(j + 1) * w2];
            row[0] = 0.0;
            row[r + 1] = 0.0;
            src.row(s, ci, y, &mut row[1..r + 1]);
        }
        for co in 0..conv.cout {
            let f = &mut filter[..k * k];
            conv.w.read((co * conv.cin + ci) * k * k, f);
            let out = &mut acc[co * band..(co + 1) * band];
            if k == 3 {
                // All nine taps per output value: one load and store of the sum.
                let w = [f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]];
                for y in 0..rows {
                    let r0 = &in_rows[y * w2..(y + 1) * w2];
                    let r1 = &in_rows[(y + 1) * w2..(y + 2) * w2];
                    let r2 = &in_rows[(y + 2) * w2..(y + 3) * w2];
                    let dst = &mut out[y * r..(y + 1) * r];
                    for (x, d) in dst.iter_mut().enumerate() {
                        *d += w[0] * r0[x]
                            + w[1] * r0[x + 1]
                            + w[2] * r0[x + 2]
                            + w[3] * r1[x]
                            + w[4] * r1[x + 1]
                            + w[5] * r1[x + 2]
                            + w[6] * r2[x]
                            + w[7] * r2[x + 1]
                            + w[8] * r2[x + 2];
                    }
                }
            } else {
                // 1x1: the rows as they are (skipping the zero columns).
                let w = f[0];
                for y in 0..rows {
                    let src_row = &in_rows[y * w2 + 1..y * w2 + 1 + r];
                    let dst = &mut out[y * r..(y + 1) * r];
                    for (d, &v) in dst.iter_mut().zip(src_row) {
                        *d += w * v;
                    }
                }
            }
        }
    }
}

impl<'a> MicroSampler<'a> {
    /// Decodes a version-2 bundle whose bytes stay where they are (flash): the metadata is
    /// copied, the weights are not. Every tensor's name and shape is checked against the
    /// config first.
    pub fn new(bytes: &'a [u8]) -> Result<Self, SamplerError> {
        let (bundle, pack) = Bundle::from_bytes_in_place(bytes)?;
        let pack = match (&bundle.model, pack) {
            (ModelSpec::Network { .. }, Some(p)) => p,
            (ModelSpec::Network { .. }, None) => {
                return Err(SamplerError::Weights(
                    "this is a version-1 bundle (burnpack weights), which the micro runtime \
                     does not read; convert it with `trainer export --weights f32|f16|int8`"
                        .to_string(),
                ));
            }
            (ModelSpec::Mixture(_), _) => {
                return Err(SamplerError::Weights(
                    "mixture bundles have no network; the micro runtime samples networks"
                        .to_string(),
                ));
            }
        };
        let view = PackView::parse(pack).map_err(|e| SamplerError::Weights(e.to_string()))?;
        let config = match &bundle.model {
            ModelSpec::Network { config, .. } => config.clone(),
            ModelSpec::Mixture(_) => unreachable!("refused above"),
        };
        view.check_against(&config)
            .map_err(|e| SamplerError::Weights(e.to_string()))?;
        let weight_dtype = view
            .tensors()
            .iter()
            .find(|t| t.shape().len() > 1)
            .map_or(WeightDtype::F32, |t| t.dtype);
        let weight_bytes = view.stored_bytes();
        let w = Weights { pack: &view };
        let net = match &config {
            NetConfig::UNet(c) => Net::UNet(Self::unet(c, &w)?),
            NetConfig::Mlp(c) => Net::Mlp(Self::mlp(c, &w)?),
        };
        Ok(MicroSampler {
            bundle,
            net,
            weight_dtype,
            weight_bytes,
        })
    }

    fn unet(c: &UNetConfig, w: &Weights<'_, 'a>) -> Result<UNet<'a>, SamplerError> {
        let noise = c.model_channels * c.channel_mult_noise;
        let emb = c.model_channels * c.channel_mult_emb;
        let (enc, dec, head) = c.topology();
        let blocks = |part: &str, specs: &[crate::model::config::BlockSpec]| {
            // Sized once: a doubling Vec of blocks would peak at twice the net on the heap.
            let mut out = Vec::with_capacity(specs.len());
            for (i, b) in specs.iter().enumerate() {
                let p = |f: &str| alloc::format!("UNet.{part}.{i}.{f}");
                out.push(Block {
                    cin: b.cin,
                    cout: b.cout,
                    resample: b.resample,
                    takes_skip: b.takes_skip,
                    norm0: w.norm(&p("norm0"), b.cin)?,
                    conv0: w.conv(&p("conv0"), b.cin, b.cout, 3)?,
                    affine: w.lin(&p("affine"), emb, b.cout)?,
                    norm1: w.norm(&p("norm1"), b.cout)?,
                    conv1: w.conv(&p("conv1"), b.cout, b.cout, 3)?,
                    skip: if b.has_skip() {
                        Some(w.conv(&p("skip"), b.cin, b.cout, 1)?)
                    } else {
                        None
                    },
                    attention: if b.attention {
                        Some((
                            w.norm(&p("norm2"), b.cout)?,
                            w.conv(&p("qkv"), b.cout, 3 * b.cout, 1)?,
                            w.conv(&p("proj"), b.cout, b.cout, 1)?,
                        ))
                    } else {
                        None
                    },
                });
            }
            Ok::<_, SamplerError>(out)
        };
        Ok(UNet {
            config: c.clone(),
            map_label: if c.label_dim > 0 {
                Some(w.lin("UNet.map_label", c.label_dim, noise)?)
            } else {
                None
            },
            map_layer0: w.lin("UNet.map_layer0", noise, emb)?,
            map_layer1: w.lin("UNet.map_layer1", emb, emb)?,
            conv_in: w.conv("UNet.conv_in", c.in_channels, c.model_channels, 3)?,
            enc: blocks("enc", &enc)?,
            dec: blocks("dec", &dec)?,
            aux_norm: w.norm("UNet.aux_norm", head)?,
            aux_conv: w.conv("UNet.aux_conv", head, c.out_channels, 3)?,
        })
    }

    fn mlp(c: &MlpConfig, w: &Weights<'_, 'a>) -> Result<Mlp<'a>, SamplerError> {
        Ok(Mlp {
            config: c.clone(),
            map_label: if c.label_dim > 0 {
                Some(w.lin("Mlp.map_label", c.label_dim, c.noise_channels)?)
            } else {
                None
            },
            map_layer0: w.lin("Mlp.map_layer0", c.noise_channels, c.hidden)?,
            input: w.lin("Mlp.input", c.dim, c.hidden)?,
            blocks: (0..c.depth)
                .map(|i| w.lin(&alloc::format!("Mlp.blocks.{i}"), c.hidden, c.hidden))
                .collect::<Result<Vec<_>, _>>()?,
            output: w.lin("Mlp.output", c.hidden, c.dim)?,
        })
    }

    /// The bundle's metadata (its network weights empty: they stay in place).
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// How the matrices and kernels are stored (f32, f16 or int8).
    pub fn weight_dtype(&self) -> WeightDtype {
        self.weight_dtype
    }

    /// Bytes of the weights as stored (read in place, never copied).
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// The activation storage that suits the weights: f32 for f32 weights (the host's
    /// numbers), f16 for f16 and int8 weights (whose own error is larger than f16's).
    pub fn default_activations(&self) -> Activations {
        match self.weight_dtype {
            WeightDtype::F32 => Activations::F32,
            _ => Activations::F16,
        }
    }

    /// The arena one image needs, in `u32` words, computed by a dry run of the network.
    pub fn arena_words(&self, act: Activations) -> usize {
        self.arena_layout(act).1
    }

    /// The arena's f32 scratch words and its total words (the stored activations after
    /// the scratch), from one dry run.
    fn arena_layout(&self, act: Activations) -> (usize, usize) {
        let (f, s, bytes) = match act {
            Activations::F32 => {
                let (f, s) = self.plan::<f32>();
                (f, s, 4)
            }
            Activations::F16 => {
                let (f, s) = self.plan::<u16>();
                (f, s, 2)
            }
        };
        (f, f + (s * bytes).div_ceil(4))
    }

    fn plan<S: Store>(&self) -> (usize, usize) {
        let mut ctx = Ctx::<S> {
            f: Pool {
                data: &mut [],
                top: 0,
                peak: 0,
            },
            s: Pool {
                data: &mut [],
                top: 0,
                peak: 0,
            },
            dry: true,
        };
        self.sample_in(&mut ctx, 0, 0, None);
        (ctx.f.peak, ctx.s.peak)
    }

    /// The initial state `x_0 = s_max * eps` of image `index` of `seed`: the host's
    /// [`crate::Sampler::initial_noise`], bit for bit.
    pub fn initial_noise(&self, seed: u64, index: u64, out: &mut [f32]) {
        rng::fill_gaussian(rng::image_seed(seed, index), 0, out);
        let s_max = self.bundle.schedule.s_max();
        out.iter_mut().for_each(|v| *v *= s_max);
    }

    /// Generates image `index` of `seed` into `out` (C*H*W values in [-1, 1]), using `arena`
    /// for every intermediate value. `label`: as the host sampler (`None` cycles through
    /// the labels by image index). Fails if the arena is smaller than
    /// [`MicroSampler::arena_words`], the label is out of range or the output not finite.
    pub fn generate(
        &self,
        seed: u64,
        index: u64,
        label: Option<u32>,
        act: Activations,
        arena: &mut [u32],
        out: &mut [f32],
    ) -> Result<(), SamplerError> {
        let d = self.bundle.image.values();
        if out.len() != d {
            return Err(SamplerError::Readback(alloc::format!(
                "the output buffer holds {} values, an image {d}",
                out.len()
            )));
        }
        let l = self.bundle.label_count;
        let label = match (label, l) {
            (None, 0) => None,
            (Some(label), 0) => {
                return Err(SamplerError::Label {
                    label,
                    reason: "this bundle's model is unconditional; omit the label".to_string(),
                });
            }
            (Some(label), l) if label >= l => {
                return Err(SamplerError::Label {
                    label,
                    reason: alloc::format!("this bundle has labels 0..={}", l - 1),
                });
            }
            (label, l) => Some(label.unwrap_or((index % l as u64) as u32) as usize),
        };
        let (f_words, need) = self.arena_layout(act);
        if arena.len() < need {
            return Err(SamplerError::Arena {
                need: need * 4,
                have: arena.len() * 4,
            });
        }
        let (fw, sw) = arena.split_at_mut(f_words);
        let fdata: &mut [f32] = bytemuck::cast_slice_mut(fw);
        let x = match act {
            Activations::F32 => {
                let mut ctx = Ctx::<f32> {
                    f: Pool {
                        data: fdata,
                        top: 0,
                        peak: 0,
                    },
                    s: Pool {
                        data: bytemuck::cast_slice_mut(sw),
                        top: 0,
                        peak: 0,
                    },
                    dry: false,
                };
                let x = self.sample_in(&mut ctx, seed, index, label);
                ctx.f.data[x.off..x.off + x.len].to_vec()
            }
            Activations::F16 => {
                let mut ctx = Ctx::<u16> {
                    f: Pool {
                        data: fdata,
                        top: 0,
                        peak: 0,
                    },
                    s: Pool {
                        data: bytemuck::cast_slice_mut(sw),
                        top: 0,
                        peak: 0,
                    },
                    dry: false,
                };
                let x = self.sample_in(&mut ctx, seed, index, label);
                ctx.f.data[x.off..x.off + x.len].to_vec()
            }
        };
        let bad = x.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(SamplerError::NonFinite(bad));
        }
        for (o, v) in out.iter_mut().zip(x) {
            *o = v.clamp(-1.0, 1.0);
        }
        Ok(())
    }

    /// The bundle's solver (`crate::solver`) on one image; returns the f32 buffer of the
    /// result. The same formulas as the tensor solvers, on slices.
    fn sample_in<S: Store>(
        &self,
        ctx: &mut Ctx<'_, S>,
        seed: u64,
        index: u64,
        label: Option<usize>,
    ) -> Buf {
        let d = self.bundle.image.values();
        let x = ctx.f.alloc(d);
        let den = ctx.f.alloc(d);
        if !ctx.dry {
            self.initial_noise(seed, index, ctx.fs(x));
        }
        let sigmas = self.bundle.schedule.sigmas();
        let t = sigmas.len();
        match self.bundle.solver {
            SolverKind::Euler => {
                for i in 0..t {
                    self.denoise(ctx, x, den, sigmas[i], label);
                    if ctx.dry {
                        continue;
                    }
                    let [xs, ds] = disjoint(&mut *ctx.f.data, [x, den]);
                    if i + 1 < t {
                        // x_{i+1} = r x_i + (1 - r) D(x_i, s_i), r = s_{i+1}/s_i.
                        let ratio = sigmas[i + 1] / sigmas[i];
                        let rest = 1.0 - ratio;
                        for (xv, &mut dv) in xs.iter_mut().zip(ds) {
                            *xv = *xv * ratio + dv * rest;
                        }
                    } else {
                        xs.copy_from_slice(ds);
                    }
                }
            }
            SolverKind::DpmPp2m => {
                let prev = ctx.f.alloc(d);
                for i in 0..t {
                    self.denoise(ctx, x, den, sigmas[i], label);
                    if ctx.dry {
                        continue;
                    }
                    let [xs, ds, ps] = disjoint(&mut *ctx.f.data, [x, den, prev]);
                    if i + 1 == t {
                        xs.copy_from_slice(ds);
                        continue;
                    }
                    let ratio = sigmas[i + 1] / sigmas[i];
                    let rest = 1.0 - ratio;
                    // From the second step: D_hat = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}.
                    let half_inv_r = if i == 0 {
                        0.0
                    } else {
                        let h = libm::logf(sigmas[i]) - libm::logf(sigmas[i + 1]);
                        let h_last = libm::logf(sigmas[i - 1]) - libm::logf(sigmas[i]);
                        h / (2.0 * h_last)
                    };
                    for ((xv, &mut dv), pv) in xs.iter_mut().zip(ds).zip(ps.iter_mut()) {
                        // The first step never reads `prev`: its arena slot is unwritten, and
                        // NaN left there by an earlier image or layer times 0 is still NaN.
                        let target = if i == 0 {
                            dv
                        } else {
                            dv * (1.0 + half_inv_r) - *pv * half_inv_r
                        };
                        *xv = *xv * ratio + target * rest;
                        *pv = dv;
                    }
                }
            }
            SolverKind::Heun => {
                let x_euler = ctx.f.alloc(d);
                let d_cur = ctx.f.alloc(d);
                for i in 0..t {
                    self.denoise(ctx, x, den, sigmas[i], label);
                    if !ctx.dry && i + 1 == t {
                        let [xs, ds] = disjoint(&mut *ctx.f.data, [x, den]);
                        xs.copy_from_slice(ds);
                    }
                    if i + 1 == t {
                        continue;
                    }
                    let (s_cur, s_next) = (sigmas[i], sigmas[i + 1]);
                    let h = s_next - s_cur;
                    if !ctx.dry {
                        let [xs, ds, es, cs] = disjoint(&mut *ctx.f.data, [x, den, x_euler, d_cur]);
                        for k in 0..d {
                            cs[k] = (xs[k] - ds[k]) / s_cur;
                            es[k] = xs[k] + cs[k] * h;
                        }
                    }
                    self.denoise(ctx, x_euler, den, s_next, label);
                    if !ctx.dry {
                        let [xs, ds, es, cs] = disjoint(&mut *ctx.f.data, [x, den, x_euler, d_cur]);
                        for k in 0..d {
                            let d_next = (es[k] - ds[k]) / s_next;
                            xs[k] += (cs[k] + d_next) * (h * 0.5);
                        }
                    }
                }
            }
            SolverKind::Ipndm => {
                // The last three derivatives, newest first, rotated through the buffers.
                let mut hist = [
                    ctx.f.alloc(d),
                    ctx.f.alloc(d),
                    ctx.f.alloc(d),
                    ctx.f.alloc(d),
                ];
                for i in 0..t {
                    self.denoise(ctx, x, den, sigmas[i], label);
                    if ctx.dry {
                        continue;
                    }
                    hist.rotate_right(1);
                    let weights = crate::solver::ipndm_weights(i);
                    let mut w = [0.0f32; 4];
                    for (a, &b) in w.iter_mut().zip(weights) {
                        *a = b as f32;
                    }
                    let h = if i + 1 < t { sigmas[i + 1] } else { 0.0 } - sigmas[i];
                    let [xs, ds, h0, h1, h2, h3] = disjoint(
                        &mut *ctx.f.data,
                        [x, den, hist[0], hist[1], hist[2], hist[3]],
                    );
                    let s_i = sigmas[i];
                    for k in 0..d {
                        h0[k] = (xs[k] - ds[k]) / s_i;
                        let mut slope = h0[k] * w[0];
                        for (j, hj) in [&*h1, &*h2, &*h3]
                            .iter()
                            .enumerate()
                            .take(weights.len() - 1)
                        {
                            slope += hj[k] * w[j + 1];
                        }
                        xs[k] += slope * h;
                    }
                }
            }
        }
        x
    }

    /// `den = D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`.
    fn denoise<S: Store>(
        &self,
        ctx: &mut Ctx<'_, S>,
        x: Buf,
        den: Buf,
        sigma: f32,
        label: Option<usize>,
    ) {
        let c = self.bundle.precond.coeffs_of(sigma as f64);
        let [c_skip, c_out, c_in, c_noise] =
            [c.c_skip, c.c_out, c.c_in, c.c_noise].map(|v| v as f32);
        let mark = ctx.f.mark();
        let inp = ctx.f.alloc(x.len);
        if !ctx.dry {
            let [xs, is] = disjoint(&mut *ctx.f.data, [x, inp]);
            is.iter_mut()
                .zip(xs.iter())
                .for_each(|(o, &v)| *o = v * c_in);
        }
        match &self.net {
            Net::UNet(n) => n.forward(ctx, inp, c_noise, label, den),
            Net::Mlp(n) => n.forward(ctx, inp, c_noise, label, den),
        }
        if !ctx.dry {
            let [xs, ds] = disjoint(&mut *ctx.f.data, [x, den]);
            ds.iter_mut()
                .zip(xs.iter())
                .for_each(|(dv, &xv)| *dv = xv * c_skip + *dv * c_out);
        }
        ctx.f.release(mark);
    }
}

/// EDM's noise/label mapping into `emb` (f32): `silu(l1(silu(l0(pos(c_noise) + label))))`,
/// `l1` absent for the MLP.
#[allow(clippy::too_many_arguments)]
fn embed<S: Store>(
    ctx: &mut Ctx<'_, S>,
    c_noise: f32,
    label: Option<usize>,
    noise_channels: usize,
    map_label: Option<&Lin<'_>>,
    l0: &Lin<'_>,
    l1: Option<&Lin<'_>>,
    emb: Buf,
) {
    let mark = ctx.f.mark();
    let pos = ctx.f.alloc(noise_channels);
    let row = ctx.f.alloc(noise_channels.max(emb.len));
    let mid = ctx.f.alloc(emb.len);
    if !ctx.dry {
        let [e, p, r, m] = disjoint(&mut *ctx.f.data, [emb, pos, row, mid]);
        // EDM's PositionalEmbedding (endpoint) then SongUNet's flip: [sin | cos].
        let half = noise_channels / 2;
        let denom = (half.max(2) - 1) as f64;
        for i in 0..half {
            let freq = libm::pow(1.0 / config::MAX_POSITIONS, i as f64 / denom) as f32;
            let a = c_noise * freq;
            p[i] = libm::sinf(a);
            p[half + i] = libm::cosf(a);
        }
        if let (Some(ml), Some(y)) = (map_label, label) {
            // One-hot y scaled by sqrt(L): row y of the weight, times sqrt(L), plus bias.
            let scale = libm::sqrt(ml.inputs as f64) as f32;
            ml.w.read(y * ml.outputs, &mut r[..ml.outputs]);
            let mut b = [0.0f32; 1];
            for (k, pv) in p.iter_mut().enumerate() {
                ml.b.read(k, &mut b);
                *pv += r[k] * scale + b[0];
            }
        }
        match l1 {
            Some(l1) => {
                linear(l0, p, m, r);
                m.iter_mut().for_each(|v| *v = silu(*v));
                linear(l1, m, e, r);
            }
            None => linear(l0, p, e, r),
        }
        e.iter_mut().for_each(|v| *v = silu(*v));
    }
    ctx.f.release(mark);
}

/// Disjoint mutable views of live buffers of one pool (the bump allocator never hands out
/// overlapping live buffers), returned in the order asked.
fn disjoint<'d, T, const N: usize>(data: &'d mut [T], bufs: [Buf; N]) -> [&'d mut [T]; N] {
    let mut order: [usize; N] = core::array::from_fn(|i| i);
    order.sort_unstable_by_key(|&i| bufs[i].off);
    let mut out: [&'d mut [T]; N] = core::array::from_fn(|_| Default::default());
    let mut rest = data;
    let mut base = 0;
    for &i in &order {
        let b = bufs[i];
        let (_, tail) = core::mem::take(&mut rest).split_at_mut(b.off - base);
        let (mine, tail) = tail.split_at_mut(b.len);
        out[i] = mine;
        rest = tail;
        base = b.off + b.len;
    }
    out
}

impl Mlp<'_> {
    fn forward<S: Store>(
        &self,
        ctx: &mut Ctx<'_, S>,
        inp: Buf,
        c_noise: f32,
        label: Option<usize>,
        out: Buf,
    ) {
        let c = &self.config;
        let mark = ctx.f.mark();
        let h = ctx.f.alloc(c.hidden);
        embed(
            ctx,
            c_noise,
            label,
            c.noise_channels,
            self.map_label.as_ref(),
            &self.map_layer0,
            None,
            h,
        );
        let t = ctx.f.alloc(c.hidden);
        let u = ctx.f.alloc(c.hidden);
        let row = ctx.f.alloc(c.hidden.max(c.dim));
        if !ctx.dry {
            let [x, hv, tv, uv, rv, ov] = disjoint(&mut *ctx.f.data, [inp, h, t, u, row, out]);
            // h = input(x) + emb; h <- h + W silu(h); out = output(silu(h)).
            linear(&self.input, x, tv, rv);
            hv.iter_mut().zip(tv.iter()).for_each(|(a, b)| *a += b);
            for blk in &self.blocks {
                tv.iter_mut()
                    .zip(hv.iter())
                    .for_each(|(a, b)| *a = silu(*b));
                linear(blk, tv, uv, rv);
                hv.iter_mut().zip(uv.iter()).for_each(|(a, b)| *a += b);
            }
            tv.iter_mut()
                .zip(hv.iter())
                .for_each(|(a, b)| *a = silu(*b));
            linear(&self.output, tv, ov, rv);
        }
        ctx.f.release(mark);
    }
}

/// Read access to the stored activations while one region (`gap`) is being written.
struct View<'v, S> {
    below: &'v [S],
    above: &'v [S],
    gap_end: usize,
}

impl<S: Store> View<'_, S> {
    #[inline(always)]
    fn get(&self, i: usize) -> S {
        if i < self.below.len() {
            self.below[i]
        } else {
            self.above[i - self.gap_end]
        }
    }
}

/// Where [`run_conv`] writes: a stored activation or an f32 buffer.
#[derive(Clone, Copy)]
enum Dst {
    Stored(Buf),
    F32(Buf),
}

/// `dst = scale * (sum of terms + add[co])` at the output resolution of the terms' sources,
/// accumulated in f32 a band of rows at a time. A term is a convolution (with its bias) of
/// a source, or the source itself (an identity residual).
fn run_conv<S: Store>(
    ctx: &mut Ctx<'_, S>,
    terms: &[(Option<&Conv<'_>>, &Src<'_>)],
    cout: usize,
    add: Option<Buf>,
    scale: f32,
    dst: Dst,
) {
    let r = terms[0].1.res_out();
    let rows = BAND_ROWS.min(r);
    let mark = ctx.f.mark();
    let acc = ctx.f.alloc(cout * rows * r);
    let in_rows = ctx.f.alloc((rows + 2) * (r + 2));
    let filter = ctx.f.alloc(9);
    let bias = ctx.f.alloc(cout);
    if !ctx.dry {
        let n = r * r;
        let dummy = Buf { off: 0, len: 0 };
        let (add_buf, out_f) = (
            add.unwrap_or(dummy),
            match dst {
                Dst::F32(b) => b,
                Dst::Stored(_) => Buf {
                    off: bias.off + bias.len,
                    len: 0,
                },
            },
        );
        let [acc, in_rows, filter, bias_v, addv, out_f] = disjoint(
            &mut *ctx.f.data,
            [acc, in_rows, filter, bias, add_buf, out_f],
        );
        let sdata = &mut *ctx.s.data;
        let (view, out_s): (View<'_, S>, &mut [S]) = match dst {
            Dst::Stored(b) => {
                let (below, rest) = sdata.split_at_mut(b.off);
                let (mid, above) = rest.split_at_mut(b.len);
                (
                    View {
                        below,
                        above,
                        gap_end: b.off + b.len,
                    },
                    mid,
                )
            }
            Dst::F32(_) => (
                View {
                    below: sdata,
                    above: &[],
                    gap_end: usize::MAX,
                },
                &mut [],
            ),
        };
        let mut y0 = 0;
        while y0 < r {
            let rows_here = rows.min(r - y0);
            let band = rows_here * r;
            acc[..cout * band].iter_mut().for_each(|v| *v = 0.0);
            for (conv, src) in terms {
                match conv {
                    Some(cv) => {
                        cv.b.read(0, bias_v);
                        for co in 0..cout {
                            acc[co * band..(co + 1) * band]
                                .iter_mut()
                                .for_each(|v| *v += bias_v[co]);
                        }
                        conv_band(cv, src, &view, y0, rows_here, acc, in_rows, filter);
                    }
                    None => {
                        for co in 0..cout {
                            for y in 0..rows_here {
                                let row = &mut in_rows[..r];
                                src.row(&view, co, (y0 + y) as isize, row);
                                let a = &mut acc[co * band + y * r..co * band + (y + 1) * r];
                                a.iter_mut().zip(row.iter()).for_each(|(a, v)| *a += v);
                            }
                        }
                    }
                }
            }
            for co in 0..cout {
                let extra = if add.is_some() { addv[co] } else { 0.0 };
                let a = &acc[co * band..(co + 1) * band];
                let at = co * n + y0 * r;
                match dst {
                    Dst::Stored(_) => {
                        for (o, &v) in out_s[at..at + band].iter_mut().zip(a) {
                            *o = S::save((v + extra) * scale);
                        }
                    }
                    Dst::F32(_) => {
                        for (o, &v) in out_f[at..at + band].iter_mut().zip(a) {
                            *o = (v + extra) * scale;
                        }
                    }
                }
            }
            y0 += rows_here;
        }
    }
    ctx.f.release(mark);
}

/// The per-channel affine of `norm` over the channels of `src` (before resampling), into the
/// f32 buffer `aff` (`2 C` values: scale, shift).
fn stats<S: Store>(ctx: &mut Ctx<'_, S>, norm: &Norm<'_>, src: &Src<'_>, aff: Buf) {
    if ctx.dry {
        return;
    }
    let n = src.res_in * src.res_in;
    let view = View {
        below: &*ctx.s.data,
        above: &[],
        gap_end: usize::MAX,
    };
    let mut pairs: Vec<(f32, f32)> = alloc::vec![(0.0, 0.0); norm.channels];
    norm_affine(norm, n, |c, i| src.at(&view, c, i), &mut pairs);
    let out = &mut ctx.f.data[aff.off..aff.off + aff.len];
    for (c, (a, b)) in pairs.into_iter().enumerate() {
        out[2 * c] = a;
        out[2 * c + 1] = b;
    }
}

/// A stored activation with its channels and resolution.
#[derive(Clone, Copy)]
struct Act {
    buf: Buf,
    channels: usize,
    res: usize,
}

impl UNet<'_> {
    fn forward<S: Store>(
        &self,
        ctx: &mut Ctx<'_, S>,
        inp: Buf,
        c_noise: f32,
        label: Option<usize>,
        out: Buf,
    ) {
        let c = &self.config;
        let (fmark, smark) = (ctx.f.mark(), ctx.s.mark());
        let r = c.img_resolution;
        let emb = ctx.f.alloc(c.model_channels * c.channel_mult_emb);
        embed(
            ctx,
            c_noise,
            label,
            c.model_channels * c.channel_mult_noise,
            self.map_label.as_ref(),
            &self.map_layer0,
            Some(&self.map_layer1),
            emb,
        );
        // The network input as a stored activation, so conv_in reads it like any other.
        let x_in = ctx.s.alloc(inp.len);
        if !ctx.dry {
            let src = &ctx.f.data[inp.off..inp.off + inp.len];
            for (o, &v) in ctx.s.data[x_in.off..x_in.off + x_in.len]
                .iter_mut()
                .zip(src)
            {
                *o = S::save(v);
            }
        }
        let first = Act {
            buf: ctx.s.alloc(c.model_channels * r * r),
            channels: c.model_channels,
            res: r,
        };
        let src = Src {
            parts: [(x_in, c.in_channels), (x_in, 0)],
            res_in: r,
            resample: Resample::None,
            affine: None,
            silu: false,
        };
        run_conv(
            ctx,
            &[(Some(&self.conv_in), &src)],
            c.model_channels,
            None,
            1.0,
            Dst::Stored(first.buf),
        );
        // Encoder: every output stays as a skip connection.
        let mut skips: Vec<Act> = alloc::vec![first];
        let mut x = first;
        for b in &self.enc {
            let res = resampled(x.res, b.resample);
            let o = Act {
                buf: ctx.s.alloc(b.cout * res * res),
                channels: b.cout,
                res,
            };
            block(ctx, b, [(x.buf, x.channels), (x.buf, 0)], x.res, emb, o.buf);
            skips.push(o);
            x = o;
        }
        // Decoder: after each block the inputs that died (a consumed skip, a previous
        // output) are reclaimed by moving the output down over them.
        for b in &self.dec {
            let x_is_skip = skips.last().is_some_and(|s| s.buf.off == x.buf.off);
            let (parts, dead_from) = match (b.takes_skip, skips.last().copied()) {
                (true, Some(s)) if !x_is_skip => {
                    skips.pop();
                    ([(x.buf, x.channels), (s.buf, s.channels)], Some(s.buf.off))
                }
                _ => (
                    [(x.buf, x.channels), (x.buf, 0)],
                    (!x_is_skip).then_some(x.buf.off),
                ),
            };
            let res = resampled(x.res, b.resample);
            let mut o = Act {
                buf: ctx.s.alloc(b.cout * res * res),
                channels: b.cout,
                res,
            };
            block(ctx, b, parts, x.res, emb, o.buf);
            if let Some(off) = dead_from {
                if !ctx.dry {
                    ctx.s
                        .data
                        .copy_within(o.buf.off..o.buf.off + o.buf.len, off);
                }
                o.buf.off = off;
                ctx.s.release(off + o.buf.len);
            }
            x = o;
        }
        // Output head: conv(silu(GroupNorm(x))) into the f32 output.
        let aff = ctx.f.alloc(2 * x.channels);
        let mut src = Src {
            parts: [(x.buf, x.channels), (x.buf, 0)],
            res_in: x.res,
            resample: Resample::None,
            affine: None,
            silu: false,
        };
        stats(ctx, &self.aux_norm, &src, aff);
        let pairs = affine_pairs(ctx, aff);
        src.affine = pairs.as_deref();
        src.silu = true;
        run_conv(
            ctx,
            &[(Some(&self.aux_conv), &src)],
            c.out_channels,
            None,
            1.0,
            Dst::F32(out),
        );
        ctx.f.release(fmark);
        ctx.s.release(smark);
    }
}

/// The (scale, shift) pairs of an affine buffer, copied out of the arena (None in a dry
/// run). A block holds at most two of these at a time, `C` pairs each.
fn affine_pairs<S: Store>(ctx: &Ctx<'_, S>, aff: Buf) -> Option<Vec<(f32, f32)>> {
    (!ctx.dry).then(|| {
        ctx.f.data[aff.off..aff.off + aff.len]
            .chunks_exact(2)
            .map(|p| (p[0], p[1]))
            .collect()
    })
}

fn resampled(res: usize, r: Resample) -> usize {
    match r {
        Resample::None => res,
        Resample::Down => res / 2,
        Resample::Up => res * 2,
    }
}

/// One `UNetBlock` (model::unet) from the stored input `parts` (concatenated channels) at
/// `res_in` into the stored `out`, as burn computes it:
/// `h = conv0(resample(silu(norm0(x)))) + affine(emb)`, `h = conv1(silu(norm1(h)))`,
/// `out = (h + skip(resample(x))) / sqrt 2`, then attention when the block has it.
fn block<S: Store>(
    ctx: &mut Ctx<'_, S>,
    b: &Block<'_>,
    parts: [(Buf, usize); 2],
    res_in: usize,
    emb: Buf,
    out: Buf,
) {
    let (fmark, smark) = (ctx.f.mark(), ctx.s.mark());
    let res = resampled(res_in, b.resample);
    // 1. GroupNorm statistics of the input, the embedding's projection.
    let mut src_in = Src {
        parts,
        res_in,
        resample: b.resample,
        affine: None,
        silu: false,
    };
    let aff0 = ctx.f.alloc(2 * b.cin);
    stats(ctx, &b.norm0, &src_in, aff0);
    let add = ctx.f.alloc(b.cout);
    let row = ctx.f.alloc(b.cout);
    if !ctx.dry {
        let [e, a, r] = disjoint(&mut *ctx.f.data, [emb, add, row]);
        linear(&b.affine, e, a, r);
    }
    // 2. h = conv0(resample(silu(norm0(x)))) + affine(emb).
    let pairs0 = affine_pairs(ctx, aff0);
    src_in.affine = pairs0.as_deref();
    src_in.silu = true;
    let h = ctx.s.alloc(b.cout * res * res);
    run_conv(
        ctx,
        &[(Some(&b.conv0), &src_in)],
        b.cout,
        Some(add),
        1.0,
        Dst::Stored(h),
    );
    drop(pairs0);
    // 3. silu(norm1(h)), in place.
    let mut src_h = Src {
        parts: [(h, b.cout), (h, 0)],
        res_in: res,
        resample: Resample::None,
        affine: None,
        silu: false,
    };
    let aff1 = ctx.f.alloc(2 * b.cout);
    stats(ctx, &b.norm1, &src_h, aff1);
    if !ctx.dry {
        let n = res * res;
        let pairs = &ctx.f.data[aff1.off..aff1.off + aff1.len];
        let hv = &mut ctx.s.data[h.off..h.off + h.len];
        for c in 0..b.cout {
            let (a, s) = (pairs[2 * c], pairs[2 * c + 1]);
            for v in &mut hv[c * n..(c + 1) * n] {
                *v = S::save(silu(v.load() * a + s));
            }
        }
    }
    src_h.affine = None;
    // 4. out = (conv1(h) + skip(resample(x))) / sqrt 2 (the skip an identity when the shape
    // does not change).
    let src_x = Src {
        parts,
        res_in,
        resample: b.resample,
        affine: None,
        silu: false,
    };
    run_conv(
        ctx,
        &[(Some(&b.conv1), &src_h), (b.skip.as_ref(), &src_x)],
        b.cout,
        None,
        SKIP_SCALE,
        Dst::Stored(out),
    );
    ctx.s.release(smark);
    ctx.f.release(fmark);
    if let Some((norm2, qkv, proj)) = &b.attention {
        attention(ctx, norm2, qkv, proj, out, b.cout, res);
    }
}

/// Single-head self-attention on the stored `x` (`C` channels, `res x res`), in place:
/// `x <- (proj(v softmax(q^T k / sqrt C)) + x) / sqrt 2` with `q, k, v` interleaved in the
/// `qkv` output as SongUNet's reshape takes them (channel `3c + {0, 1, 2}`). Query `i` only
/// reads column `i` of `x` through `qkv`, computed beforehand, so column `i` is updated
/// as soon as it is done.
fn attention<S: Store>(
    ctx: &mut Ctx<'_, S>,
    norm2: &Norm<'_>,
    qkv: &Conv<'_>,
    proj: &Conv<'_>,
    x: Buf,
    c: usize,
    res: usize,
) {
    let (fmark, smark) = (ctx.f.mark(), ctx.s.mark());
    let n = res * res;
    let mut src = Src {
        parts: [(x, c), (x, 0)],
        res_in: res,
        resample: Resample::None,
        affine: None,
        silu: false,
    };
    let aff = ctx.f.alloc(2 * c);
    stats(ctx, norm2, &src, aff);
    let pairs = affine_pairs(ctx, aff);
    src.affine = pairs.as_deref();
    let qkv_buf = ctx.s.alloc(3 * c * n);
    run_conv(
        ctx,
        &[(Some(qkv), &src)],
        3 * c,
        None,
        1.0,
        Dst::Stored(qkv_buf),
    );
    drop(pairs);
    let logits = ctx.f.alloc(n);
    let q = ctx.f.alloc(c);
    let a = ctx.f.alloc(c);
    let wrow = ctx.f.alloc(c);
    let bias = ctx.f.alloc(c);
    if !ctx.dry {
        let [logits, q, a, wrow, bias] = disjoint(&mut *ctx.f.data, [logits, q, a, wrow, bias]);
        let (lo, hi) = ctx.s.data.split_at_mut(qkv_buf.off);
        let xs = &mut lo[x.off..x.off + x.len];
        let t = &hi[..qkv_buf.len];
        let inv_sqrt_c = libm::sqrt(c as f64) as f32;
        proj.b.read(0, bias);
        for i in 0..n {
            for (ch, qv) in q.iter_mut().enumerate() {
                *qv = t[3 * ch * n + i].load();
            }
            let mut max = f32::NEG_INFINITY;
            for (j, l) in logits.iter_mut().enumerate() {
                let mut dot = 0.0f32;
                for (ch, &qv) in q.iter().enumerate() {
                    dot += qv * t[(3 * ch + 1) * n + j].load();
                }
                *l = dot / inv_sqrt_c;
                max = max.max(*l);
            }
            let mut sum = 0.0f32;
            for l in logits.iter_mut() {
                *l = libm::expf(*l - max);
                sum += *l;
            }
            for (ch, av) in a.iter_mut().enumerate() {
                let mut acc = 0.0f32;
                for (j, &w) in logits.iter().enumerate() {
                    acc += t[(3 * ch + 2) * n + j].load() * w;
                }
                *av = acc / sum;
            }
            for co in 0..c {
                proj.w.read(co * c, wrow);
                let mut o = bias[co];
                for (w, av) in wrow.iter().zip(a.iter()) {
                    o += w * av;
                }
                let xv = &mut xs[co * n + i];
                *xv = S::save((o + xv.load()) * SKIP_SCALE);
            }
        }
    }
    ctx.f.release(fmark);
    ctx.s.release(smark);
}
