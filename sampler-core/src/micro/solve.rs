//! The bundle's solver on one image, on slices of the arena's f32 scratch: the probability
//! flow ODE `dx/ds = (x - D(x, s)) / s` over the levels `s_0 > ... > s_{T-1}` (then
//! `s_T = 0`), docs/method.md §2. Each function mirrors the tensor solver of
//! `crate::solver` that it names, formula for formula, in f32; `tests/micro.rs` holds the
//! two to each other for every solver.
//!
//! `denoise(ctx, x, den, s)` writes `D(x, s)` into `den`; a dry run (planning the arena)
//! calls it and allocates as a real run does, but computes nothing.

use super::arena::{Buf, Ctx, Store, disjoint};
use crate::solver::SolverKind;

/// One solve on one image: the arena, the state `x` (holding `x_0`, at the end `x_T`), the
/// denoiser's output buffer `den`, the levels `s_0 > ... > s_{T-1}` and `D` itself.
pub(super) struct Solve<'c, 's, S, F> {
    pub(super) ctx: &'c mut Ctx<'s, S>,
    pub(super) x: Buf,
    pub(super) den: Buf,
    pub(super) sigmas: &'c [f32],
    pub(super) denoise: F,
}

impl<'s, S: Store, F: FnMut(&mut Ctx<'s, S>, Buf, Buf, f32)> Solve<'_, 's, S, F> {
    /// Runs the solver `kind` from `x_0` to `x_T`, in place in `x`.
    pub(super) fn run(self, kind: SolverKind) {
        match kind {
            SolverKind::Euler => self.euler(),
            SolverKind::DpmPp2m => self.dpmpp_2m(false),
            SolverKind::DpmPp2mLof => self.dpmpp_2m(true),
            SolverKind::Heun => self.heun(),
            SolverKind::Ipndm => self.ipndm(),
        }
    }

    /// The loop of the solvers with one evaluation per level: `D(x_i, s_i)` into `den`,
    /// then `step(scratch, i)` on the f32 scratch (skipped in a dry run).
    fn each_level(&mut self, mut step: impl FnMut(&mut [f32], usize)) {
        for (i, &s_i) in self.sigmas.iter().enumerate() {
            (self.denoise)(self.ctx, self.x, self.den, s_i);
            if !self.ctx.dry {
                step(&mut *self.ctx.f.data, i);
            }
        }
    }

    /// Mirrors `crate::solver::euler` (paper Eq. 7):
    /// `x_{i+1} = (s_{i+1}/s_i) x_i + (1 - s_{i+1}/s_i) D(x_i, s_i)`, and
    /// `x_T = D(x_{T-1}, s_{T-1})`.
    fn euler(mut self) {
        let (x, den, sigmas) = (self.x, self.den, self.sigmas);
        let t = sigmas.len();
        self.each_level(|data, i| {
            let [xs, ds] = disjoint(data, [x, den]);
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
        });
    }

    /// Mirrors `crate::solver::dpmpp_2m` (DPM-Solver++(2M), k-diffusion's
    /// `sample_dpmpp_2m`): Euler's step towards `D_hat = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}`
    /// from the second step on, `r = h_{i-1}/h_i`, `h_i = ln(s_i/s_{i+1})`; the step to
    /// `s_T = 0` is `x_T = D(x_{T-1}, s_{T-1})`. With `lower_order_final`
    /// (`SolverKind::DpmPp2mLof`), the step into `s_{T-1}` is first order too.
    fn dpmpp_2m(mut self, lower_order_final: bool) {
        let (x, den, sigmas) = (self.x, self.den, self.sigmas);
        let t = sigmas.len();
        let prev = self.ctx.f.alloc(x.len);
        self.each_level(|data, i| {
            let [xs, ds, ps] = disjoint(data, [x, den, prev]);
            if i + 1 == t {
                xs.copy_from_slice(ds);
                return;
            }
            let ratio = sigmas[i + 1] / sigmas[i];
            let rest = 1.0 - ratio;
            // From the second step: D_hat = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}.
            let second_order = crate::solver::dpmpp_2m_second_order(i, t, lower_order_final);
            let half_inv_r = if !second_order {
                0.0
            } else {
                let h = libm::logf(sigmas[i]) - libm::logf(sigmas[i + 1]);
                let h_last = libm::logf(sigmas[i - 1]) - libm::logf(sigmas[i]);
                h / (2.0 * h_last)
            };
            for ((xv, &mut dv), pv) in xs.iter_mut().zip(ds).zip(ps.iter_mut()) {
                // The first step never reads `prev`: its arena slot is unwritten, and NaN
                // left there by an earlier image or layer times 0 is still NaN.
                let target = if !second_order {
                    dv
                } else {
                    dv * (1.0 + half_inv_r) - *pv * half_inv_r
                };
                *xv = *xv * ratio + target * rest;
                *pv = dv;
            }
        });
    }

    /// Mirrors `crate::solver::heun` (EDM's Algorithm 1, deterministic): `d_i = (x_i -
    /// D(x_i, s_i)) / s_i`, the Euler guess `x' = x_i + (s_{i+1} - s_i) d_i`, then
    /// `x_{i+1} = x_i + (s_{i+1} - s_i) (d_i + d')/2` with
    /// `d' = (x' - D(x', s_{i+1})) / s_{i+1}`; the step to `s_T = 0` is
    /// `x_T = D(x_{T-1}, s_{T-1})`.
    fn heun(self) {
        let Solve {
            ctx,
            x,
            den,
            sigmas,
            mut denoise,
        } = self;
        let (t, d) = (sigmas.len(), x.len);
        let x_euler = ctx.f.alloc(d);
        let d_cur = ctx.f.alloc(d);
        for i in 0..t {
            denoise(ctx, x, den, sigmas[i]);
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
            denoise(ctx, x_euler, den, s_next);
            if !ctx.dry {
                let [xs, ds, es, cs] = disjoint(&mut *ctx.f.data, [x, den, x_euler, d_cur]);
                for k in 0..d {
                    let d_next = (es[k] - ds[k]) / s_next;
                    xs[k] += (cs[k] + d_next) * (h * 0.5);
                }
            }
        }
    }

    /// Mirrors `crate::solver::ipndm` (Zhang & Chen's improved PNDM):
    /// `x_{i+1} = x_i + (s_{i+1} - s_i) sum_j w_j d_{i-j}`, `d_i = (x_i - D(x_i, s_i)) / s_i`,
    /// with the weights of [`crate::solver::ipndm_weights`], down to `s_T = 0` with the
    /// same formula.
    fn ipndm(mut self) {
        let (x, den, sigmas) = (self.x, self.den, self.sigmas);
        let (t, d) = (sigmas.len(), x.len);
        // The newest derivative and the three before it, rotated through the buffers.
        let mut hist = [
            self.ctx.f.alloc(d),
            self.ctx.f.alloc(d),
            self.ctx.f.alloc(d),
            self.ctx.f.alloc(d),
        ];
        self.each_level(|data, i| {
            hist.rotate_right(1);
            let weights = crate::solver::ipndm_weights(i);
            let mut w = [0.0f32; 4];
            for (a, &b) in w.iter_mut().zip(weights) {
                *a = b as f32;
            }
            let h = if i + 1 < t { sigmas[i + 1] } else { 0.0 } - sigmas[i];
            let [xs, ds, h0, h1, h2, h3] =
                disjoint(data, [x, den, hist[0], hist[1], hist[2], hist[3]]);
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
        });
    }
}
