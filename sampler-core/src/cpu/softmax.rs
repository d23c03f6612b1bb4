//! Softmax over the last axis (attention's weights) on burn's `flex` CPU backend: the
//! kernel on rows, its backward pass, and the routing.

use alloc::vec::Vec;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::backend::{Dispatch, Flex};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::ext::FastOps;
use super::gemm::par_zeroed;
use super::simd::{lane_sum, simd, sum_and_dot};
use super::{fast_path, tensor, values};

/// Softmax over the last axis (rows of `n` values), rows in parallel. `exp` is libm's, as in
/// the micro runtime: attention logits are few next to SiLU's inputs, and the two engines
/// stay within 1e-5 of each other on the same network.
pub fn softmax_rows(x: &[f32], n: usize) -> Vec<f32> {
    let mut y = par_zeroed(x.len());
    y.par_chunks_mut(n.max(1))
        .zip(x.par_chunks(n.max(1)))
        .for_each(|(yr, xr)| {
            simd(
                #[inline(always)]
                || {
                    let max = xr.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                    for (o, &v) in yr.iter_mut().zip(xr) {
                        *o = libm::expf(v - max);
                    }
                    let inv = (1.0 / lane_sum(yr)) as f32;
                    for o in yr.iter_mut() {
                        *o *= inv;
                    }
                },
            )
        });
    y
}

/// Gradient of [`softmax_rows`] from its output `y`: `dx = y * (dy - sum(dy * y))` per row.
pub fn softmax_rows_backward(y: &[f32], dy: &[f32], n: usize) -> Vec<f32> {
    let mut dx = par_zeroed(y.len());
    dx.par_chunks_mut(n.max(1))
        .zip(y.par_chunks(n.max(1)).zip(dy.par_chunks(n.max(1))))
        .for_each(|(dxr, (yr, dyr))| {
            simd(
                #[inline(always)]
                || {
                    let (_, dot) = sum_and_dot(dyr, yr);
                    let dot = dot as f32;
                    for ((o, &yv), &d) in dxr.iter_mut().zip(yr).zip(dyr) {
                        *o = yv * (d - dot);
                    }
                },
            )
        });
    dx
}

pub(super) fn softmax_forward(x: &FlexTensor) -> FlexTensor {
    let shape = x.layout().shape().to_vec();
    let n = shape.last().copied().unwrap_or(1);
    tensor(softmax_rows(&values(x), n), shape)
}

#[derive(Debug)]
pub(super) struct SoftmaxBackward;

impl Backward<Flex, 1> for SoftmaxBackward {
    /// The output.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let y = ops.state;
        if let Some(node) = node_x {
            let shape = y.layout().shape().to_vec();
            let n = shape.last().copied().unwrap_or(1);
            let dx = softmax_rows_backward(&values(&y), &values(&dy), n);
            grads.register::<Flex>(node.id, tensor(dx, shape));
        }
    }
}

/// Softmax over the last axis of `x`, on the fast path when it applies; otherwise `Err(x)`.
pub fn softmax_last(x: Tensor<3>) -> Result<Tensor<3>, Tensor<3>> {
    if fast_path(&x) {
        return Ok(Tensor::from_dispatch(
            <Dispatch as FastOps>::fewstep_softmax(x.into_dispatch()),
        ));
    }
    Err(x)
}
