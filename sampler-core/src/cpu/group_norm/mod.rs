//! GroupNorm (+SiLU, + a per-channel shift) on burn's `flex` CPU backend: the kernel
//! ([`kernel`]), its backward pass registered with burn's autodiff, and the routing that
//! sends `f32` flex tensors here and everything else to burn's own `GroupNorm`.

pub(crate) mod kernel;

use alloc::vec::Vec;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::backend::{Dispatch, Flex};
use burn::nn::GroupNorm;
use burn::tensor::Tensor;

use self::kernel::NormGeom;
use super::ext::FastOps;
use super::{fast_path, tensor, values};

fn norm_geom(x: &FlexTensor, groups: usize) -> NormGeom {
    let xs = x.layout().shape();
    NormGeom {
        batch: xs[0],
        channels: xs[1],
        plane: xs[2..].iter().product(),
        groups,
    }
}

pub(super) fn norm_forward(
    x: &FlexTensor,
    shift: Option<&FlexTensor>,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    groups: usize,
    epsilon: f64,
    silu: bool,
) -> (FlexTensor, Vec<f32>, Vec<f32>) {
    let g = norm_geom(x, groups);
    let shift = shift.map(values);
    let (y, mean, rstd) = kernel::group_norm_forward(
        &g,
        &values(x),
        shift.as_deref(),
        &values(gamma),
        &values(beta),
        epsilon,
        silu,
    );
    (tensor(y, x.layout().shape().to_vec()), mean, rstd)
}

/// State of the GroupNorm backward pass.
#[derive(Clone, Debug)]
pub(super) struct NormState {
    pub(super) x: FlexTensor,
    pub(super) shift: Option<FlexTensor>,
    pub(super) gamma: FlexTensor,
    pub(super) beta: FlexTensor,
    pub(super) mean: Vec<f32>,
    pub(super) rstd: Vec<f32>,
    pub(super) groups: usize,
    pub(super) silu: bool,
}

/// Registers the gradients of a GroupNorm (shifted or not) at its parents.
fn norm_backward(
    s: NormState,
    dy: &FlexTensor,
    [node_x, node_shift, node_gamma, node_beta]: [Option<NodeId>; 4],
    grads: &mut Gradients,
) {
    let g = norm_geom(&s.x, s.groups);
    let shift = s.shift.as_ref().map(values);
    let (dx, dgamma, dbeta, dshift) = kernel::group_norm_backward(
        &g,
        &values(&s.x),
        shift.as_deref(),
        &values(&s.gamma),
        &values(&s.beta),
        &s.mean,
        &s.rstd,
        &values(dy),
        s.silu,
    );
    if let (Some(node), Some(ds)) = (node_shift, dshift) {
        grads.register::<Flex>(node, tensor(ds, alloc::vec![g.batch, g.channels]));
    }
    if let Some(node) = node_x {
        grads.register::<Flex>(node, tensor(dx, s.x.layout().shape().to_vec()));
    }
    if let Some(node) = node_gamma {
        grads.register::<Flex>(node, tensor(dgamma, alloc::vec![g.channels]));
    }
    if let Some(node) = node_beta {
        grads.register::<Flex>(node, tensor(dbeta, alloc::vec![g.channels]));
    }
}

#[derive(Debug)]
pub(super) struct NormBackward;

impl Backward<Flex, 3> for NormBackward {
    type State = NormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x, gamma, beta] = ops.parents.map(|p| p.map(|n| n.id));
        let dy = grads.consume::<Flex>(&ops.node);
        norm_backward(ops.state, &dy, [x, None, gamma, beta], grads);
    }
}

#[derive(Debug)]
pub(super) struct ShiftedNormBackward;

impl Backward<Flex, 4> for ShiftedNormBackward {
    type State = NormState;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        norm_backward(ops.state, &dy, ops.parents.map(|p| p.map(|n| n.id)), grads);
    }
}

/// `norm.forward(x + shift)` (`shift` `[B, C]` broadcast over the plane), then SiLU when
/// `silu`, fused on the fast path when it applies; otherwise `Err((x, shift))`.
///
/// # Shapes
/// `x`: `[B, C, H, W]`, `shift`: `[B, C]` -> `[B, C, H, W]`.
pub fn group_norm_shifted(
    norm: &GroupNorm,
    x: Tensor<4>,
    shift: Tensor<2>,
    silu: bool,
) -> Result<Tensor<4>, (Tensor<4>, Tensor<2>)> {
    match (&norm.gamma, &norm.beta) {
        (Some(gamma), Some(beta)) if fast_norm(norm, &x) && fast_path(&shift) => Ok(
            Tensor::from_dispatch(<Dispatch as FastOps>::fewstep_group_norm_shifted(
                x.into_dispatch(),
                shift.into_dispatch(),
                gamma.val().into_dispatch(),
                beta.val().into_dispatch(),
                norm.num_groups,
                norm.epsilon,
                silu,
            )),
        ),
        _ => Err((x, shift)),
    }
}

/// `norm.forward(x)`, then SiLU when `silu`, fused on the fast path when it applies;
/// otherwise `Err(x)`.
///
/// # Shapes
/// `x`: `[B, C, H, W]` -> `[B, C, H, W]`.
pub fn group_norm(norm: &GroupNorm, x: Tensor<4>, silu: bool) -> Result<Tensor<4>, Tensor<4>> {
    match (&norm.gamma, &norm.beta) {
        (Some(gamma), Some(beta)) if fast_norm(norm, &x) => Ok(Tensor::from_dispatch(
            <Dispatch as FastOps>::fewstep_group_norm(
                x.into_dispatch(),
                gamma.val().into_dispatch(),
                beta.val().into_dispatch(),
                norm.num_groups,
                norm.epsilon,
                silu,
            ),
        )),
        _ => Err(x),
    }
}

/// Whether `norm` of `x` takes the fast path.
fn fast_norm(norm: &GroupNorm, x: &Tensor<4>) -> bool {
    fast_path(x) && norm.num_groups > 0 && x.dims()[1].is_multiple_of(norm.num_groups)
}
