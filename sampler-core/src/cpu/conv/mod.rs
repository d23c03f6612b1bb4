//! The U-Net's convolutions on burn's `flex` CPU backend: the kernel ([`kernel`]), its
//! backward pass registered with burn's autodiff, and the routing that sends `f32` flex
//! tensors here and everything else (GPUs, f64 gradient checks) to burn's own `Conv2d`.

pub(crate) mod kernel;

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::backend::{Dispatch, Flex};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

use self::kernel::ConvGeom;
use super::ext::FastOps;
use super::{fast_path, tensor, values};

fn conv_geom(x: &FlexTensor, weight: &FlexTensor, pad: usize) -> ConvGeom {
    let xs = x.layout().shape();
    let ws = weight.layout().shape();
    ConvGeom {
        batch: xs[0],
        cin: xs[1],
        h: xs[2],
        w: xs[3],
        cout: ws[0],
        k: ws[2],
        pad,
    }
}

/// The convolution, or `scale * (conv + residual)` when `residual` is given.
pub(super) fn conv_forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    residual: Option<(&FlexTensor, f64)>,
    pad: usize,
) -> FlexTensor {
    let g = conv_geom(x, weight, pad);
    let r = residual.map(|(r, scale)| (values(r), scale as f32));
    let res = r
        .as_ref()
        .map(|(r, scale)| kernel::Residual { r, scale: *scale });
    let y = kernel::conv_forward(&g, &values(x), &values(weight), &values(bias), res);
    tensor(y, alloc::vec![g.batch, g.cout, g.oh(), g.ow()])
}

#[derive(Debug)]
pub(super) struct ConvBackward;

impl Backward<Flex, 3> for ConvBackward {
    /// `(x, weight, pad)`.
    type State = (FlexTensor, FlexTensor, usize);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, weight, pad) = ops.state;
        let parents = ops.parents.map(|p| p.map(|n| n.id));
        conv_backward(&x, &weight, pad, &values(&dy), parents, grads);
    }
}

/// Computes the gradients of a convolution for `dy` and registers them at its parents
/// `[x, weight, bias]`.
fn conv_backward(
    x: &FlexTensor,
    weight: &FlexTensor,
    pad: usize,
    dy: &[f32],
    [node_x, node_w, node_b]: [Option<NodeId>; 3],
    grads: &mut Gradients,
) {
    let g = conv_geom(x, weight, pad);
    let need = (node_x.is_some(), node_w.is_some(), node_b.is_some());
    let (dx, dw, db) = kernel::conv_backward(&g, &values(x), &values(weight), dy, need);
    if let (Some(node), Some(dx)) = (node_x, dx) {
        grads.register::<Flex>(node, tensor(dx, x.layout().shape().to_vec()));
    }
    if let (Some(node), Some(dw)) = (node_w, dw) {
        grads.register::<Flex>(node, tensor(dw, weight.layout().shape().to_vec()));
    }
    if let (Some(node), Some(db)) = (node_b, db) {
        grads.register::<Flex>(node, tensor(db, alloc::vec![g.cout]));
    }
}

#[derive(Debug)]
pub(super) struct ConvResidualBackward;

impl Backward<Flex, 4> for ConvResidualBackward {
    /// `(x, weight, pad, scale)`.
    type State = (FlexTensor, FlexTensor, usize, f64);

    /// `y = scale * (conv(x) + r)`: the convolution's gradients at `scale * dy`, which is
    /// also `dr`.
    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b, node_r] = ops.parents.map(|p| p.map(|n| n.id));
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, weight, pad, scale) = ops.state;
        let dr = kernel::scaled(&values(&dy), scale as f32);
        conv_backward(&x, &weight, pad, &dr, [node_x, node_w, node_b], grads);
        if let Some(node) = node_r {
            grads.register::<Flex>(node, tensor(dr, dy.layout().shape().to_vec()));
        }
    }
}

/// `conv.forward(x)` on the fast path, when it applies (stride 1, no dilation or groups,
/// square kernel, symmetric padding, a bias); otherwise `Err(x)` hands the input back for
/// burn's own op (`crate::model::ops::conv2d`).
///
/// # Shapes
/// `x`: `[B, Cin, H, W]` -> `[B, Cout, H', W']`.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Result<Tensor<4>, Tensor<4>> {
    match (&conv.bias, fast_conv_padding(conv, &x)) {
        (Some(bias), Some(pad)) => Ok(Tensor::from_dispatch(
            <Dispatch as FastOps>::fewstep_conv2d(
                x.into_dispatch(),
                conv.weight.val().into_dispatch(),
                bias.val().into_dispatch(),
                pad,
            ),
        )),
        _ => Err(x),
    }
}

/// The padding of `conv` when it and `x` take the fast path: stride 1, no dilation or groups,
/// a square kernel, symmetric padding.
fn fast_conv_padding(conv: &Conv2d, x: &Tensor<4>) -> Option<usize> {
    let [k0, k1] = conv.kernel_size;
    let pad = match conv.padding {
        PaddingConfig2d::Explicit(a, b, c, d) if a == b && b == c && c == d => Some(a),
        PaddingConfig2d::Valid => Some(0),
        _ => None,
    };
    pad.filter(|_| {
        fast_path(x)
            && k0 == k1
            && conv.stride == [1, 1]
            && conv.dilation == [1, 1]
            && conv.groups == 1
    })
}

/// `scale * (conv.forward(x) + residual)`, fused on the fast path when it applies (as for
/// [`conv2d`]); otherwise `Err((x, residual))`.
///
/// # Shapes
/// `x`: `[B, Cin, H, W]`, `residual`: `[B, Cout, H', W']` -> `[B, Cout, H', W']`.
#[allow(clippy::type_complexity)]
pub fn conv2d_residual(
    conv: &Conv2d,
    x: Tensor<4>,
    residual: Tensor<4>,
    scale: f64,
) -> Result<Tensor<4>, (Tensor<4>, Tensor<4>)> {
    match (&conv.bias, fast_conv_padding(conv, &x)) {
        (Some(bias), Some(pad)) if fast_path(&residual) => Ok(Tensor::from_dispatch(
            <Dispatch as FastOps>::fewstep_conv2d_residual(
                x.into_dispatch(),
                conv.weight.val().into_dispatch(),
                bias.val().into_dispatch(),
                residual.into_dispatch(),
                pad,
                scale,
            ),
        )),
        _ => Err((x, residual)),
    }
}
