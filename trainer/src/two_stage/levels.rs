//! The levels stage 1 learns: the `T - 2` logits `v` of the softmax-increment
//! parameterization (docs/method.md §3, paper Eq. 13) as a burn module, so Adam can step
//! them. The map `v -> s_0..s_{T-1}` itself is sampler-core's
//! ([`sampler_core::schedule::sigmas_from_logits`]): what is learned here is what ships.

use burn::module::{Module, Param, ParamId};
use burn::tensor::{Device, Tensor, TensorData};
use sampler_core::schedule::{Warp, sigmas_from_logits};

/// Fixed id of the logits parameter (network ids are random and saved with the weights).
const SCHEDULE_PARAM_ID: u64 = 0x5C4E_D01E;

/// The learnable schedule: `T - 2` logits of the softmax-increment parameterization.
#[derive(Module, Debug)]
pub struct ScheduleLogits {
    /// `v`, `[T - 2]`.
    pub v: Param<Tensor<1>>,
}

impl ScheduleLogits {
    /// Logits `v` on `device` (an autodiff device makes them trainable), in the device's
    /// float type. The parameter id is fixed so a resumed optimizer finds its state.
    pub fn new(v: &[f64], device: &Device) -> Self {
        let t = Tensor::<1>::from_data(TensorData::new(v.to_vec(), [v.len()]), device);
        let mut v = Param::from_tensor(t);
        v.id = ParamId::from(SCHEDULE_PARAM_ID);
        ScheduleLogits { v }
    }

    /// The levels `s_0..s_{T-1}`, differentiable in `v`.
    pub fn sigmas(&self, s_min: f64, s_max: f64, warp: Warp) -> Tensor<1> {
        sigmas_from_logits(self.v.val(), s_min, s_max, warp)
    }

    /// Current logits as numbers.
    pub fn values(&self) -> Vec<f64> {
        self.v.val().try_into_vec_as::<f64>().unwrap_or_default()
    }
}
