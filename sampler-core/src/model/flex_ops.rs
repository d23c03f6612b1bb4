//! The U-Net's convolutions and GroupNorm(+SiLU) on burn's `flex` CPU backend, forward and
//! backward, through burn's backend-extension API ([`FastOps`]): the network code calls
//! [`conv2d`] and [`group_norm`], which take these paths for `f32` tensors on the flex device
//! (with or without autodiff) and burn's own modules everywhere else (GPUs, f64 gradient
//! checks). The arithmetic is in [`super::kernels`]; tests hold both paths to each other.

use alloc::vec::Vec;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Dispatch, Flex, backend_extension};
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, PaddingConfig2d};
use burn::tensor::{DType, Device, Tensor, TensorData};

use super::kernels::{self, ConvGeom, NormGeom};

/// Custom ops of the fewstep U-Net. Implemented for [`Flex`] and its autodiff; callers go
/// through [`conv2d`] and [`group_norm`], which only route `f32` flex tensors here.
#[backend_extension(Flex, Autodiff)]
pub trait FastOps: burn::backend::Backend {
    /// Stride-1 convolution with a square kernel and `pad` zeros on each side.
    fn fewstep_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pad: usize,
    ) -> FloatTensor<Self>;

    /// `scale * (conv(x) + residual)`: a convolution closing a skip connection.
    fn fewstep_conv2d_residual(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        pad: usize,
        scale: f64,
    ) -> FloatTensor<Self>;

    /// GroupNorm of `x + shift` (`shift` `[B, C]`, one value per sample and channel) with
    /// affine parameters, followed by SiLU when `silu`.
    #[allow(clippy::too_many_arguments)]
    fn fewstep_group_norm_shifted(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> FloatTensor<Self>;

    /// EDM's 2x resampling of `[B, C, H, W]`: nearest up when `up`, else 2x2 averages.
    fn fewstep_resample(x: FloatTensor<Self>, up: bool) -> FloatTensor<Self>;

    /// Softmax over the last axis.
    fn fewstep_softmax(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// GroupNorm with affine parameters, followed by SiLU when `silu`.
    fn fewstep_group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> FloatTensor<Self>;
}

/// Contiguous `f32` values of a flex tensor (a copy only when it is a strided view).
fn values(t: &FlexTensor) -> alloc::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => alloc::borrow::Cow::Borrowed(s),
        None => alloc::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>().map_or_else(
            // as_slice only fails on a dtype other than f32, which `fast_path` rules out.
            || unreachable!("fast paths only see f32 tensors"),
            |s| s.to_vec(),
        )),
    }
}

fn tensor(data: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

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

fn norm_geom(x: &FlexTensor, groups: usize) -> NormGeom {
    let xs = x.layout().shape();
    NormGeom {
        batch: xs[0],
        channels: xs[1],
        plane: xs[2..].iter().product(),
        groups,
    }
}

/// The convolution, or `scale * (conv + residual)` when `residual` is given.
fn conv_forward(
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
        .map(|(r, scale)| kernels::Residual { r, scale: *scale });
    let y = kernels::conv_forward(&g, &values(x), &values(weight), &values(bias), res);
    tensor(y, alloc::vec![g.batch, g.cout, g.oh(), g.ow()])
}

fn norm_forward(
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
    let (y, mean, rstd) = kernels::group_norm_forward(
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

fn resample_forward(x: &FlexTensor, up: bool) -> FlexTensor {
    let shape = x.layout().shape().to_vec();
    let (h, w) = (shape[2], shape[3]);
    let y = kernels::resample2(&values(x), (h, w), up);
    let (oh, ow) = if up { (2 * h, 2 * w) } else { (h / 2, w / 2) };
    tensor(y, alloc::vec![shape[0], shape[1], oh, ow])
}

fn softmax_forward(x: &FlexTensor) -> FlexTensor {
    let shape = x.layout().shape().to_vec();
    let n = shape.last().copied().unwrap_or(1);
    tensor(kernels::softmax_rows(&values(x), n), shape)
}

impl FastOps for Flex {
    fn fewstep_resample(x: FlexTensor, up: bool) -> FlexTensor {
        resample_forward(&x, up)
    }

    fn fewstep_softmax(x: FlexTensor) -> FlexTensor {
        softmax_forward(&x)
    }

    fn fewstep_conv2d(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        pad: usize,
    ) -> FlexTensor {
        conv_forward(&x, &weight, &bias, None, pad)
    }

    fn fewstep_conv2d_residual(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        residual: FlexTensor,
        pad: usize,
        scale: f64,
    ) -> FlexTensor {
        conv_forward(&x, &weight, &bias, Some((&residual, scale)), pad)
    }

    fn fewstep_group_norm_shifted(
        x: FlexTensor,
        shift: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> FlexTensor {
        norm_forward(&x, Some(&shift), &gamma, &beta, groups, epsilon, silu).0
    }

    fn fewstep_group_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> FlexTensor {
        norm_forward(&x, None, &gamma, &beta, groups, epsilon, silu).0
    }
}

#[derive(Debug)]
struct ConvBackward;

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
    let (dx, dw, db) = kernels::conv_backward(&g, &values(x), &values(weight), dy, need);
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
struct ConvResidualBackward;

impl Backward<Flex, 4> for ConvResidualBackward {
    /// `(x, weight, pad, scale)`.
    type State = (FlexTensor, FlexTensor, usize, f64);

    /// `y = scale * (conv(x) + r)`: the convolution's gradients at `scale * dy`, which is
    /// also `dr`.
    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b, node_r] = ops.parents.map(|p| p.map(|n| n.id));
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, weight, pad, scale) = ops.state;
        let dr = kernels::scaled(&values(&dy), scale as f32);
        conv_backward(&x, &weight, pad, &dr, [node_x, node_w, node_b], grads);
        if let Some(node) = node_r {
            grads.register::<Flex>(node, tensor(dr, dy.layout().shape().to_vec()));
        }
    }
}

#[derive(Debug)]
struct ResampleBackward;

impl Backward<Flex, 1> for ResampleBackward {
    /// `(input height and width, up)`.
    type State = ((usize, usize), bool);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let ((h, w), up) = ops.state;
        if let Some(node) = node_x {
            let shape = dy.layout().shape().to_vec();
            let dx = kernels::resample2_backward(&values(&dy), (h, w), up);
            grads.register::<Flex>(node.id, tensor(dx, alloc::vec![shape[0], shape[1], h, w]));
        }
    }
}

#[derive(Debug)]
struct SoftmaxBackward;

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
            let dx = kernels::softmax_rows_backward(&values(&y), &values(&dy), n);
            grads.register::<Flex>(node.id, tensor(dx, shape));
        }
    }
}

/// State of the GroupNorm backward pass.
#[derive(Clone, Debug)]
struct NormState {
    x: FlexTensor,
    shift: Option<FlexTensor>,
    gamma: FlexTensor,
    beta: FlexTensor,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    groups: usize,
    silu: bool,
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
    let (dx, dgamma, dbeta, dshift) = kernels::group_norm_backward(
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
struct NormBackward;

impl Backward<Flex, 3> for NormBackward {
    type State = NormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x, gamma, beta] = ops.parents.map(|p| p.map(|n| n.id));
        let dy = grads.consume::<Flex>(&ops.node);
        norm_backward(ops.state, &dy, [x, None, gamma, beta], grads);
    }
}

#[derive(Debug)]
struct ShiftedNormBackward;

impl Backward<Flex, 4> for ShiftedNormBackward {
    type State = NormState;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        norm_backward(ops.state, &dy, ops.parents.map(|p| p.map(|n| n.id)), grads);
    }
}

impl<C: CheckpointStrategy> FastOps for Autodiff<Flex, C> {
    fn fewstep_resample(x: FloatTensor<Self>, up: bool) -> FloatTensor<Self> {
        let shape = x.primitive().layout().shape().to_vec();
        let state = ((shape[2], shape[3]), up);
        match ResampleBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = resample_forward(x.primitive(), up);
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(resample_forward(x.primitive(), up)),
        }
    }

    fn fewstep_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match SoftmaxBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = softmax_forward(x.primitive());
                prep.finish(y.clone(), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(softmax_forward(x.primitive())),
        }
    }

    fn fewstep_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pad: usize,
    ) -> FloatTensor<Self> {
        match ConvBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, weight, bias) = (
                    x.into_primitive(),
                    weight.into_primitive(),
                    bias.into_primitive(),
                );
                let y = conv_forward(&x, &weight, &bias, None, pad);
                prep.finish((x, weight, pad), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(conv_forward(
                x.primitive(),
                weight.primitive(),
                bias.primitive(),
                None,
                pad,
            )),
        }
    }

    fn fewstep_conv2d_residual(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        pad: usize,
        scale: f64,
    ) -> FloatTensor<Self> {
        match ConvResidualBackward
            .prepare::<C>([x.node(), weight.node(), bias.node(), residual.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, weight, bias, residual) = (
                    x.into_primitive(),
                    weight.into_primitive(),
                    bias.into_primitive(),
                    residual.into_primitive(),
                );
                let y = conv_forward(&x, &weight, &bias, Some((&residual, scale)), pad);
                prep.finish((x, weight, pad, scale), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(conv_forward(
                x.primitive(),
                weight.primitive(),
                bias.primitive(),
                Some((residual.primitive(), scale)),
                pad,
            )),
        }
    }

    fn fewstep_group_norm_shifted(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> FloatTensor<Self> {
        match ShiftedNormBackward
            .prepare::<C>([x.node(), shift.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, shift, gamma, beta) = (
                    x.into_primitive(),
                    shift.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                );
                let (y, mean, rstd) =
                    norm_forward(&x, Some(&shift), &gamma, &beta, groups, epsilon, silu);
                let state = NormState {
                    x,
                    shift: Some(shift),
                    gamma,
                    beta,
                    mean,
                    rstd,
                    groups,
                    silu,
                };
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(
                norm_forward(
                    x.primitive(),
                    Some(shift.primitive()),
                    gamma.primitive(),
                    beta.primitive(),
                    groups,
                    epsilon,
                    silu,
                )
                .0,
            ),
        }
    }

    fn fewstep_group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> FloatTensor<Self> {
        match NormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, gamma, beta) = (
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                );
                let (y, mean, rstd) = norm_forward(&x, None, &gamma, &beta, groups, epsilon, silu);
                let state = NormState {
                    x,
                    shift: None,
                    gamma,
                    beta,
                    mean,
                    rstd,
                    groups,
                    silu,
                };
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(
                norm_forward(
                    x.primitive(),
                    None,
                    gamma.primitive(),
                    beta.primitive(),
                    groups,
                    epsilon,
                    silu,
                )
                .0,
            ),
        }
    }
}

/// Runs `f` on a worker of the CPU thread pool, so that the parallel ops inside it split
/// their work by work-stealing instead of waking the pool from outside for every op (at
/// batch 1 that hand-off cost a third of the time).
pub fn on_cpu_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
        match POOL.get_or_init(|| rayon::ThreadPoolBuilder::new().build().ok()) {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }
}

/// Whether `x` takes the fast paths: `f32` on the flex device (with or without autodiff).
fn fast_path<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == DType::F32 && x.device().inner() == Device::flex()
}

/// `conv.forward(x)`, on the fast path when it applies (stride 1, no dilation or groups,
/// square kernel, symmetric padding, a bias).
///
/// # Shapes
/// `x`: `[B, Cin, H, W]` -> `[B, Cout, H', W']`.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    match (&conv.bias, fast_conv_padding(conv, &x)) {
        (Some(bias), Some(pad)) => Tensor::from_dispatch(<Dispatch as FastOps>::fewstep_conv2d(
            x.into_dispatch(),
            conv.weight.val().into_dispatch(),
            bias.val().into_dispatch(),
            pad,
        )),
        _ => conv.forward(x),
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
/// [`conv2d`]): the convolution that closes a residual connection.
///
/// # Shapes
/// `x`: `[B, Cin, H, W]`, `residual`: `[B, Cout, H', W']` -> `[B, Cout, H', W']`.
pub fn conv2d_residual(conv: &Conv2d, x: Tensor<4>, residual: Tensor<4>, scale: f64) -> Tensor<4> {
    match (&conv.bias, fast_conv_padding(conv, &x)) {
        (Some(bias), Some(pad)) if fast_path(&residual) => {
            Tensor::from_dispatch(<Dispatch as FastOps>::fewstep_conv2d_residual(
                x.into_dispatch(),
                conv.weight.val().into_dispatch(),
                bias.val().into_dispatch(),
                residual.into_dispatch(),
                pad,
                scale,
            ))
        }
        _ => (conv2d(conv, x) + residual).mul_scalar(scale),
    }
}

/// `norm.forward(x + shift)` (`shift` `[B, C]` broadcast over the plane), then SiLU when
/// `silu`; fused on the fast path when it applies.
///
/// # Shapes
/// `x`: `[B, C, H, W]`, `shift`: `[B, C]` -> `[B, C, H, W]`.
pub fn group_norm_shifted(
    norm: &GroupNorm,
    x: Tensor<4>,
    shift: Tensor<2>,
    silu: bool,
) -> Tensor<4> {
    match (&norm.gamma, &norm.beta) {
        (Some(gamma), Some(beta)) if fast_norm(norm, &x) && fast_path(&shift) => {
            Tensor::from_dispatch(<Dispatch as FastOps>::fewstep_group_norm_shifted(
                x.into_dispatch(),
                shift.into_dispatch(),
                gamma.val().into_dispatch(),
                beta.val().into_dispatch(),
                norm.num_groups,
                norm.epsilon,
                silu,
            ))
        }
        _ => {
            let [b, c, _, _] = x.dims();
            group_norm(norm, x + shift.reshape([b, c, 1, 1]), silu)
        }
    }
}

/// `norm.forward(x)`, then SiLU when `silu`; fused on the fast path when it applies.
///
/// # Shapes
/// `x`: `[B, C, H, W]` -> `[B, C, H, W]`.
pub fn group_norm(norm: &GroupNorm, x: Tensor<4>, silu: bool) -> Tensor<4> {
    match (&norm.gamma, &norm.beta) {
        (Some(gamma), Some(beta)) if fast_norm(norm, &x) => {
            Tensor::from_dispatch(<Dispatch as FastOps>::fewstep_group_norm(
                x.into_dispatch(),
                gamma.val().into_dispatch(),
                beta.val().into_dispatch(),
                norm.num_groups,
                norm.epsilon,
                silu,
            ))
        }
        _ => {
            let y = norm.forward(x);
            if silu {
                burn::tensor::activation::silu(y)
            } else {
                y
            }
        }
    }
}

/// EDM's 2x resampling (`resample_filter = [1, 1]`): nearest up when `up`, else 2x2 average
/// pooling; on the fast path when it applies.
///
/// # Shapes
/// `x`: `[B, C, H, W]` -> `[B, C, 2H, 2W]` or `[B, C, H/2, W/2]`.
pub fn resample2(x: Tensor<4>, up: bool) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    if fast_path(&x) && (up || (h % 2 == 0 && w % 2 == 0)) {
        return Tensor::from_dispatch(<Dispatch as FastOps>::fewstep_resample(
            x.into_dispatch(),
            up,
        ));
    }
    super::unet::resample2_burn(x, up)
}

/// Softmax over the last axis of `x`, on the fast path when it applies.
pub fn softmax_last(x: Tensor<3>) -> Tensor<3> {
    if fast_path(&x) {
        return Tensor::from_dispatch(<Dispatch as FastOps>::fewstep_softmax(x.into_dispatch()));
    }
    burn::tensor::activation::softmax(x, 2)
}

/// Whether `norm` of `x` takes the fast path.
fn fast_norm(norm: &GroupNorm, x: &Tensor<4>) -> bool {
    fast_path(x) && norm.num_groups > 0 && x.dims()[1].is_multiple_of(norm.num_groups)
}
