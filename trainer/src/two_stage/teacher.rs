//! The targets `L_disc` is measured against (docs/method.md §4, "the target of `L_disc`";
//! §5 for the choice of teacher): the teacher pool, `teacher_pool` noises per round with the
//! many-step Heun solution of the network [`Teacher`] names, and the trajectory cache of the
//! paper gradient (`--traj-refresh`), the Euler states of every pool entry re-simulated a
//! share at a time. Both are checkpointed as values ([`ResumeState`]) so a resumed run is
//! bit-exact.

use anyhow::{Context, Result, bail};
use burn::tensor::{Tensor, TensorData};

use sampler_core::denoiser::one_hot;
use sampler_core::schedule::Schedule;
use sampler_core::solver::{Stop, heun};

use super::config::Teacher;
use super::state::{Finetune, PoolRows, Trajectories, purpose};
use crate::data::{noise, uniform_indices};
use crate::losses::euler_states;
use crate::model::Base;
use crate::run::{ResumeState, TrajectoryState};

impl Finetune {
    /// The teacher pool's targets and the trajectory cache, as values.
    pub(super) fn resume_state(&self) -> Result<ResumeState> {
        let values = |t: &Tensor<2>| -> Result<Vec<f32>> {
            // Converted: the device may compute in f64.
            t.clone()
                .try_into_vec_as::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))
        };
        let teacher_targets = match &self.pool {
            Some((round, _, target, _)) => Some((*round, values(target)?)),
            None => None,
        };
        let trajectories = match &self.trajectories {
            Some(tr) => Some(TrajectoryState {
                round: tr.round,
                states: tr
                    .states
                    .iter()
                    .chain(std::iter::once(&tr.last))
                    .map(values)
                    .collect::<Result<_>>()?,
                cursor: tr.cursor as u64,
            }),
            None => None,
        };
        Ok(ResumeState {
            teacher_targets,
            trajectories,
        })
    }

    /// Puts back what [`Finetune::resume_state`] saved, checking its shapes.
    pub(super) fn restore(&mut self, state: &ResumeState) -> Result<()> {
        let (n, d) = (self.config.teacher_pool, self.base.dim());
        let plain = self.device.clone().without_autodiff();
        let tensor = |v: &[f32]| -> Result<Tensor<2>> {
            if v.len() != n * d {
                bail!(
                    "the checkpoint's teacher pool has {} values, this run's needs {n} x {d}",
                    v.len()
                );
            }
            Ok(Tensor::from_data(
                TensorData::new(v.to_vec(), [n, d]),
                &plain,
            ))
        };
        if let Some((round, target)) = &state.teacher_targets {
            let (x0, labels) = self.pool_inputs(*round);
            self.pool = Some((*round, x0, tensor(target)?, labels));
        }
        if let Some(tr) = &state.trajectories {
            if tr.states.len() != self.config.t || tr.cursor as usize >= n.max(1) {
                bail!(
                    "the checkpoint's trajectory cache does not fit T = {}",
                    self.config.t
                );
            }
            let mut states = tr
                .states
                .iter()
                .map(|v| tensor(v))
                .collect::<Result<Vec<_>>>()?;
            let last = states.pop().context("empty trajectory cache")?;
            self.trajectories = Some(Trajectories {
                round: tr.round,
                states,
                last,
                cursor: tr.cursor as usize,
            });
        }
        Ok(())
    }

    /// (x_0, teacher target, labels) pool of `round`, computed with the network
    /// `config.teacher` names.
    pub fn teacher_pool(&mut self, round: u64) -> Result<PoolRows> {
        if let Some((r, x0, target, labels)) = &self.pool
            && *r == round
        {
            return Ok((x0.clone(), target.clone(), labels.clone()));
        }
        let (x0, labels) = self.pool_inputs(round);
        let target = self.teacher_solution(&x0, &labels)?;
        self.pool = Some((round, x0.clone(), target.clone(), labels.clone()));
        Ok((x0, target, labels))
    }

    /// The teacher pool's noises `x_0` (`[pool, d]`, times `s_max`) and labels of `round`,
    /// on the device without autodiff: a function of the seed and the round alone.
    pub(super) fn pool_inputs(&self, round: u64) -> (Tensor<2>, Option<Tensor<2>>) {
        let c = &self.config;
        let n = c.teacher_pool;
        let device = self.device.clone().without_autodiff();
        let x0 = noise(
            c.seed,
            purpose::POOL_NOISE,
            round,
            n,
            self.base.dim(),
            &device,
        )
        .mul_scalar(c.s_max);
        let label_count = self.data.label_count as usize;
        let labels = (label_count > 0).then(|| {
            let ks = uniform_indices(c.seed, purpose::POOL_LABELS, round, n, label_count);
            one_hot(ks.into_iter(), label_count, &device)
        });
        (x0, labels)
    }

    /// The teacher target of `x0`: the `teacher_steps`-level Heun solution of the network
    /// `config.teacher` names (the frozen base, or the weights being fine-tuned). The one
    /// place that choice is made, for the pool and for [`Finetune::objective`] alike.
    pub(super) fn teacher_solution(
        &self,
        x0: &Tensor<2>,
        labels: &Option<Tensor<2>>,
    ) -> Result<Tensor<2>> {
        let c = &self.config;
        let device = x0.device();
        let reference = Schedule::edm(c.teacher_steps, c.s_min, c.s_max)?.to_tensor(&device);
        let frozen = match c.teacher {
            Teacher::Shipped => None,
            Teacher::Base => Some(Base::from_bundle(&self.base_bundle, &self.device)?),
        };
        let n = x0.dims()[0];
        Ok(frozen.as_ref().unwrap_or(&self.base).with_shipped(|den| {
            // Chunks bound the memory of large networks.
            let mut parts = Vec::new();
            let chunk = 64;
            for start in (0..n).step_by(chunk) {
                let end = (start + chunk).min(n);
                let lab = labels.clone().map(|l| l.slice(start..end));
                parts.push(heun(
                    den,
                    x0.clone().slice(start..end),
                    reference.clone(),
                    lab,
                    Stop::Min,
                    |_| {},
                ));
            }
            Tensor::cat(parts, 0)
        }))
    }

    /// The `disc_batch` rows of the teacher pool drawn at `step`: their indices (on the
    /// pool's device, for the trajectory cache) and the (x_0, target, labels) rows moved to
    /// the training device.
    pub(super) fn pick_from_pool(
        &self,
        (x0, target, labels): PoolRows,
        step: u64,
    ) -> (Tensor<1, burn::tensor::Int>, PoolRows) {
        let c = &self.config;
        let pick = uniform_indices(
            c.seed,
            purpose::POOL_PICK,
            step,
            c.disc_batch,
            c.teacher_pool,
        );
        let idx = Tensor::<1, burn::tensor::Int>::from_data(
            TensorData::new(
                pick.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [pick.len()],
            ),
            &x0.device(),
        );
        let dev = &self.device;
        let rows = (
            x0.select(0, idx.clone()).to_device(dev),
            target.select(0, idx.clone()).to_device(dev),
            labels.map(|l| l.select(0, idx.clone()).to_device(dev)),
        );
        (idx, rows)
    }

    /// Brings the cached states up to date for a step of `round` under `sigmas` (the
    /// current levels): the whole pool at a round's first step, then `ceil(pool / N)` entries
    /// round robin, N = `traj_refresh`.
    pub(super) fn refresh_trajectories(&mut self, round: u64, sigmas: &Tensor<1>, pool: &PoolRows) {
        let n = self.config.teacher_pool;
        let plain = self.device.clone().without_autodiff();
        let sigmas = sigmas.clone().detach().to_device(&plain);
        let (px0, _, plabels) = pool;
        let simulate = |range: std::ops::Range<usize>| -> (Vec<Tensor<2>>, Tensor<2>) {
            self.base.with_shipped(|den| {
                euler_states(
                    den,
                    px0.clone().slice(range.clone()),
                    plabels.clone().map(|l| l.slice(range.clone())),
                    sigmas.clone(),
                )
            })
        };
        let fresh = match &self.trajectories {
            Some(tr) if tr.round == round => None,
            _ => Some(simulate(0..n)),
        };
        if let Some((states, last)) = fresh {
            self.trajectories = Some(Trajectories {
                round,
                states,
                last,
                cursor: 0,
            });
        } else {
            let share = (n as u64).div_ceil(self.config.traj_refresh.max(1)) as usize;
            let start = self.trajectories.as_ref().map_or(0, |tr| tr.cursor);
            // At most two contiguous ranges (the round robin wraps).
            let first = start..(start + share).min(n);
            let second = 0..(start + share).saturating_sub(n).min(start);
            for range in [first, second] {
                if range.is_empty() {
                    continue;
                }
                let (new, new_last) = simulate(range.clone());
                if let Some(tr) = self.trajectories.as_mut() {
                    for (state, part) in tr.states.iter_mut().zip(new) {
                        *state = state.clone().slice_assign(range.clone(), part);
                    }
                    tr.last = tr.last.clone().slice_assign(range.clone(), new_last);
                }
            }
            if let Some(tr) = self.trajectories.as_mut() {
                tr.cursor = (start + share) % n;
            }
        }
    }
}
