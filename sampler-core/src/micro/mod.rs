//! The micro runtime: the sampler for microcontrollers, without burn. It runs exactly the
//! networks bundles hold (the U-Net and the MLP of `model`, walked through the same
//! [`UNetConfig`](crate::config::UNetConfig) topology), with the same preconditioning
//! ([`Precond::coeffs_of`](crate::precond::Precond::coeffs_of)), solvers and portable
//! noise as the host, on plain slices:
//!
//! - weights are read in place from a version-2 bundle's weights pack (`crate::pack`), which
//!   can sit in flash: f32, f16 or int8, dequantized a filter at a time (`weights`);
//! - activations live in one caller-provided arena of `u32` words whose size
//!   [`MicroSampler::arena_words`] computes before anything runs, by walking the network
//!   with the same code that computes it (a dry run), so the plan and the run cannot drift
//!   apart (`arena`);
//! - activations are stored as f32, as f16 (half the arena), or as int8 rows with a scale
//!   each ([`Activations`]); sums are accumulated in f32 over bands of a few rows, so the
//!   arena holds the skip connections and the current block but never a full-size f32
//!   accumulator (`ops`, `net`), or, on the integer path for int8 weights, exactly in i32
//!   from 16-bit fixed-point inputs with the M4's `SMLAD` (`int`);
//! - the bundle's solver runs on slices, each beside the formula of the `crate::solver`
//!   function it mirrors (`solve`).
//!
//! This is the one sanctioned second engine besides burn's modules: `tests/micro.rs` holds
//! it to burn on every shipped bundle, and the firmware to this code on the host.

mod arena;
mod int;
mod net;
mod ops;
mod solve;
mod source;
mod weights;

use alloc::string::ToString;

use arena::{Buf, Ctx, IntF32, Store, disjoint};
use solve::Solve;
use weights::Net;

use crate::bundle::{Bundle, ModelSpec};
use crate::error::SamplerError;
use crate::pack::{PackView, WeightDtype};
use crate::rng;
use crate::schedule::Schedule;
use crate::solver::SolverKind;

/// The arena up to which int8 weights run on f32 rows by default
/// ([`MicroSampler::default_activations`]): digits8's is 25 KB (7.1 million instructions an
/// image on a Cortex-M4, 8.9 on int8 rows in 17 KB); mnist8's and face8's would not fit
/// 256 KiB.
pub const SMALL_ARENA_BYTES: usize = 32 * 1024;

/// How activations are stored in the arena, and with it how convolutions compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activations {
    /// 4 bytes a value, f32 arithmetic: the host's numbers to float rounding.
    F32,
    /// 2 bytes a value (IEEE half), f32 arithmetic: half the arena, ~3 decimal digits per
    /// stored value.
    F16,
    /// The integer path: 1 byte a value (int8 with a scale per row), and with int8 weights
    /// the convolutions and attention as exact integer dot products of 16-bit fixed-point
    /// inputs (`SMLAD` on a Cortex-M4; see `int`). A quarter of F32's arena.
    Int8,
    /// The integer path's convolutions and attention (as [`Activations::Int8`]) on
    /// activations stored as f32 between them: no row scales to make or apply and no
    /// rounding to 8 bits, for F32's stored activations. The fastest storage for small
    /// networks, whose arena is mostly staged inputs (digits8: 7.1 million instructions an
    /// image on a Cortex-M4 against Int8's 8.9, 45 KB of RAM against 37 KB); f32 and f16
    /// weights take the float path, as on F32.
    IntF32,
}

impl Activations {
    /// Every storage, widest first.
    pub const ALL: [Activations; 4] = [
        Activations::F32,
        Activations::F16,
        Activations::Int8,
        Activations::IntF32,
    ];

    /// The name on command lines and in the firmware's `FEWSTEP_ACTIVATIONS`.
    pub fn name(self) -> &'static str {
        match self {
            Activations::F32 => "f32",
            Activations::F16 => "f16",
            Activations::Int8 => "int8",
            Activations::IntF32 => "int-f32",
        }
    }
}

impl core::str::FromStr for Activations {
    type Err = alloc::string::String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Activations::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                alloc::format!("unknown activation storage '{s}': f32, f16, int8 or int-f32")
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
        config
            .check_pack(&view)
            .map_err(|e| SamplerError::Weights(e.to_string()))?;
        let weight_dtype = view
            .tensors()
            .iter()
            .find(|t| t.shape().len() > 1)
            .map_or(WeightDtype::F32, |t| t.dtype);
        let weight_bytes = view.stored_bytes();
        let net = Net::bind(&config, &view)?;
        Ok(MicroSampler {
            bundle,
            net,
            weight_dtype,
            weight_bytes,
        })
    }

    /// The bundle's metadata (its network weights empty: they stay in place).
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// Samples with `solver` over `schedule` instead of the bundle's (the host CLI's
    /// `--solver` and `--levels`); the arena is planned from them at each call.
    pub fn set_sampling(&mut self, solver: SolverKind, schedule: Schedule) {
        self.bundle.solver = solver;
        self.bundle.schedule = schedule;
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
    /// numbers), f16 for f16 weights (whose own error is larger than f16's), and for int8
    /// weights the integer path: on f32 rows when their arena is at most
    /// [`SMALL_ARENA_BYTES`] (a small network, whose arena is mostly staged inputs: there
    /// f32 rows are faster and closer to f32 for a few KB more), else on int8 rows (a
    /// quarter of the stored activations).
    pub fn default_activations(&self) -> Activations {
        match self.weight_dtype {
            WeightDtype::F32 => Activations::F32,
            WeightDtype::F16 => Activations::F16,
            WeightDtype::I8 if 4 * self.arena_words(Activations::IntF32) <= SMALL_ARENA_BYTES => {
                Activations::IntF32
            }
            WeightDtype::I8 => Activations::Int8,
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
            Activations::Int8 => {
                let (f, s) = self.plan::<i8>();
                (f, s, 1)
            }
            Activations::IntF32 => {
                let (f, s) = self.plan::<IntF32>();
                (f, s, 4)
            }
        };
        (f, f + (s * bytes).div_ceil(4))
    }

    /// The arena of [`MicroSampler::arena_words`] split into its two pools: peak f32
    /// scratch words (solver state, accumulators, staged rows) and peak storage units of
    /// the stored activations (values, plus a 2-byte scale per row for [`Activations::Int8`]).
    pub fn arena_pools(&self, act: Activations) -> (usize, usize) {
        match act {
            Activations::F32 => self.plan::<f32>(),
            Activations::F16 => self.plan::<u16>(),
            Activations::Int8 => self.plan::<i8>(),
            Activations::IntF32 => self.plan::<IntF32>(),
        }
    }

    /// Peak words of the f32 pool and values of the stored pool, from a dry run.
    fn plan<S: Store>(&self) -> (usize, usize) {
        let mut ctx = Ctx::<S>::new(&mut [], &mut [], true);
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
        // Where the result lies in the f32 scratch (read in place: a copy would take a
        // whole image of heap on the device).
        let x_off = match act {
            Activations::F32 => {
                let mut ctx = Ctx::<f32>::new(fdata, bytemuck::cast_slice_mut(sw), false);
                let x = self.sample_in(&mut ctx, seed, index, label);
                x.off
            }
            Activations::F16 => {
                let mut ctx = Ctx::<u16>::new(fdata, bytemuck::cast_slice_mut(sw), false);
                let x = self.sample_in(&mut ctx, seed, index, label);
                x.off
            }
            Activations::Int8 => {
                let mut ctx = Ctx::<i8>::new(fdata, bytemuck::cast_slice_mut(sw), false);
                let x = self.sample_in(&mut ctx, seed, index, label);
                x.off
            }
            Activations::IntF32 => {
                let mut ctx = Ctx::<IntF32>::new(fdata, bytemuck::cast_slice_mut(sw), false);
                let x = self.sample_in(&mut ctx, seed, index, label);
                x.off
            }
        };
        let fdata: &[f32] = bytemuck::cast_slice(&arena[..f_words]);
        let x = &fdata[x_off..x_off + d];
        let bad = x.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(SamplerError::NonFinite(bad));
        }
        for (o, v) in out.iter_mut().zip(x) {
            *o = v.clamp(-1.0, 1.0);
        }
        Ok(())
    }

    /// One image: `x_0` from the portable noise, then the bundle's solver (`solve`); returns
    /// the f32 buffer of the result.
    fn sample_in<'s, S: Store>(
        &self,
        ctx: &mut Ctx<'s, S>,
        seed: u64,
        index: u64,
        label: Option<usize>,
    ) -> Buf {
        let d = self.bundle.image.values();
        ctx.weights.buf = ctx.f.alloc(self.weight_cache_words::<S>());
        let x = ctx.f.alloc(d);
        let den = ctx.f.alloc(d);
        if !ctx.dry {
            self.initial_noise(seed, index, ctx.fs(x));
        }
        Solve {
            ctx,
            x,
            den,
            sigmas: self.bundle.schedule.sigmas(),
            denoise: |ctx: &mut Ctx<'s, S>, x, den, sigma| self.denoise(ctx, x, den, sigma, label),
        }
        .run(self.bundle.solver);
        x
    }

    /// The f32 words of [`Ctx::weights`]: what one evaluation's convolutions ask of it, from
    /// a dry run of one.
    fn weight_cache_words<S: Store>(&self) -> usize {
        let mut ctx = Ctx::<S>::new(&mut [], &mut [], true);
        let d = self.bundle.image.values();
        let (x, den) = (ctx.f.alloc(d), ctx.f.alloc(d));
        self.denoise(&mut ctx, x, den, 1.0, None);
        ctx.weights.at
    }

    /// `den = D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)` (docs/method.md §1), the
    /// coefficients evaluated in f64 and rounded once to f32.
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
        if ctx.dry {
            // Planning: the first evaluation walks the network, the others add its extent.
            let (f0, s0) = (mark, ctx.s.mark());
            if let Some((ef, es)) = ctx.dry_extent {
                ctx.f.peak = ctx.f.peak.max(f0 + ef);
                ctx.s.peak = ctx.s.peak.max(s0 + es);
                return;
            }
            let peaks = (ctx.f.peak, ctx.s.peak);
            (ctx.f.peak, ctx.s.peak) = (f0, s0);
            self.net.forward(ctx, x, c_in, c_noise, label, den);
            ctx.dry_extent = Some((ctx.f.peak - f0, ctx.s.peak - s0));
            ctx.f.peak = ctx.f.peak.max(peaks.0);
            ctx.s.peak = ctx.s.peak.max(peaks.1);
            ctx.f.release(mark);
            return;
        }
        ctx.weights.next_evaluation();
        // The network scales its input by c_in as it reads it (no image-sized copy).
        self.net.forward(ctx, x, c_in, c_noise, label, den);
        let [xs, ds] = disjoint(&mut *ctx.f.data, [x, den]);
        ds.iter_mut()
            .zip(xs.iter())
            .for_each(|(dv, &xv)| *dv = xv * c_skip + *dv * c_out);
        ctx.f.release(mark);
    }
}
