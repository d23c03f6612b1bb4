//! EDM's 2x resampling (nearest up, 2x2 average down) on burn's `flex` CPU backend: the
//! kernel on slices, its backward pass, and the routing.

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
use super::{fast_path, tensor, values};

/// EDM's 2x resampling with `resample_filter = [1, 1]` on `[planes, H, W]` values: `up`
/// repeats each value over a 2x2 block (nearest), otherwise each 2x2 block is averaged
/// (`H` and `W` even), as `((a + b) / 2 + (c + d) / 2) / 2`: burn's two means, in order.
pub fn resample2_values(x: &[f32], (h, w): (usize, usize), up: bool) -> Vec<f32> {
    let (oh, ow) = if up { (2 * h, 2 * w) } else { (h / 2, w / 2) };
    let planes = x.len() / (h * w).max(1);
    let mut y = par_zeroed(planes * oh * ow);
    y.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(h * w))
        .for_each(|(yp, xp)| {
            for (oy, row) in yp.chunks_mut(ow).enumerate() {
                if up {
                    let src = &xp[(oy / 2) * w..(oy / 2 + 1) * w];
                    for (o, &v) in row.chunks_mut(2).zip(src) {
                        o.fill(v);
                    }
                } else {
                    let (r0, r1) = (&xp[2 * oy * w..], &xp[(2 * oy + 1) * w..]);
                    for (ox, o) in row.iter_mut().enumerate() {
                        let top = (r0[2 * ox] + r0[2 * ox + 1]) * 0.5;
                        let bottom = (r1[2 * ox] + r1[2 * ox + 1]) * 0.5;
                        *o = (top + bottom) * 0.5;
                    }
                }
            }
        });
    y
}

/// Gradient of [`resample2`] for `dy` (of the output's size; `(h, w)` the input's): the sum
/// over each 2x2 block when `up`, otherwise `dy / 4` spread over the block.
pub fn resample2_values_backward(dy: &[f32], (h, w): (usize, usize), up: bool) -> Vec<f32> {
    let (oh, ow) = if up { (2 * h, 2 * w) } else { (h / 2, w / 2) };
    let planes = dy.len() / (oh * ow).max(1);
    let mut dx = par_zeroed(planes * h * w);
    dx.par_chunks_mut(h * w)
        .zip(dy.par_chunks(oh * ow))
        .for_each(|(dxp, dyp)| {
            if up {
                for (iy, row) in dxp.chunks_mut(w).enumerate() {
                    let (r0, r1) = (&dyp[2 * iy * ow..], &dyp[(2 * iy + 1) * ow..]);
                    for (ix, o) in row.iter_mut().enumerate() {
                        *o = (r0[2 * ix] + r0[2 * ix + 1]) + (r1[2 * ix] + r1[2 * ix + 1]);
                    }
                }
            } else {
                for (iy, row) in dxp.chunks_mut(w).enumerate() {
                    let src = &dyp[(iy / 2) * ow..(iy / 2 + 1) * ow];
                    for (o, &v) in row.chunks_mut(2).zip(src) {
                        o.fill(v * 0.25);
                    }
                }
            }
        });
    dx
}

pub(super) fn resample_forward(x: &FlexTensor, up: bool) -> FlexTensor {
    let shape = x.layout().shape().to_vec();
    let (h, w) = (shape[2], shape[3]);
    let y = resample2_values(&values(x), (h, w), up);
    let (oh, ow) = if up { (2 * h, 2 * w) } else { (h / 2, w / 2) };
    tensor(y, alloc::vec![shape[0], shape[1], oh, ow])
}

#[derive(Debug)]
pub(super) struct ResampleBackward;

impl Backward<Flex, 1> for ResampleBackward {
    /// `(input height and width, up)`.
    type State = ((usize, usize), bool);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let ((h, w), up) = ops.state;
        if let Some(node) = node_x {
            let shape = dy.layout().shape().to_vec();
            let dx = resample2_values_backward(&values(&dy), (h, w), up);
            grads.register::<Flex>(node.id, tensor(dx, alloc::vec![shape[0], shape[1], h, w]));
        }
    }
}

/// EDM's 2x resampling (`resample_filter = [1, 1]`): nearest up when `up`, else 2x2 average
/// pooling, on the fast path when it applies; otherwise `Err(x)`.
///
/// # Shapes
/// `x`: `[B, C, H, W]` -> `[B, C, 2H, 2W]` or `[B, C, H/2, W/2]`.
pub fn resample2(x: Tensor<4>, up: bool) -> Result<Tensor<4>, Tensor<4>> {
    let [_, _, h, w] = x.dims();
    if fast_path(&x) && (up || (h % 2 == 0 && w % 2 == 0)) {
        return Ok(Tensor::from_dispatch(
            <Dispatch as FastOps>::fewstep_resample(x.into_dispatch(), up),
        ));
    }
    Err(x)
}
