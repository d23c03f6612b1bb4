//! The U-Net's convolutions and GroupNorm(+SiLU) on burn's `flex` CPU backend, forward and
//! backward, through burn's backend-extension API ([`FastOps`]): the network code calls
//! [`conv2d`] and [`group_norm`], which take these paths for `f32` tensors on the flex device
//! (with or without autodiff) and burn's own modules everywhere else (GPUs, f64 gradient
//! checks). The arithmetic is in [`super::kernels`]; tests hold both paths to each other.

use alloc::vec::Vec;
use burn::backend::autodiff::Autodiff;
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

fn conv_forward(x: &FlexTensor, weight: &FlexTensor, bias: &FlexTensor, pad: usize) -> FlexTensor {
    let g = conv_geom(x, weight, pad);
    let y = kernels::conv_forward(&g, &values(x), &values(weight), &values(bias));
    tensor(y, alloc::vec![g.batch, g.cout, g.oh(), g.ow()])
}

fn norm_forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    groups: usize,
    epsilon: f64,
    silu: bool,
) -> (FlexTensor, Vec<f32>, Vec<f32>) {
    let g = norm_geom(x, groups);
    let (y, mean, rstd) =
        kernels::group_norm_forward(&g, &values(x), &values(gamma), &values(beta), epsilon, silu);
    (tensor(y, x.layout().shape().to_vec()), mean, rstd)
}

impl FastOps for Flex {
    fn fewstep_conv2d(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        pad: usize,
    ) -> FlexTensor {
        conv_forward(&x, &weight, &bias, pad)
    }

    fn fewstep_group_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> FlexTensor {
        norm_forward(&x, &gamma, &beta, groups, epsilon, silu).0
    }
}

#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 3> for ConvBackward {
    /// `(x, weight, pad)`.
    type State = (FlexTensor, FlexTensor, usize);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, weight, pad) = ops.state;
        let g = conv_geom(&x, &weight, pad);
        let need = (node_x.is_some(), node_w.is_some(), node_b.is_some());
        let (dx, dw, db) =
            kernels::conv_backward(&g, &values(&x), &values(&weight), &values(&dy), need);
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, tensor(dx, x.layout().shape().to_vec()));
        }
        if let (Some(node), Some(dw)) = (node_w, dw) {
            grads.register::<Flex>(node.id, tensor(dw, weight.layout().shape().to_vec()));
        }
        if let (Some(node), Some(db)) = (node_b, db) {
            grads.register::<Flex>(node.id, tensor(db, alloc::vec![g.cout]));
        }
    }
}

/// State of the GroupNorm backward pass.
#[derive(Clone, Debug)]
struct NormState {
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    groups: usize,
    silu: bool,
}

#[derive(Debug)]
struct NormBackward;

impl Backward<Flex, 3> for NormBackward {
    type State = NormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let s = ops.state;
        let g = norm_geom(&s.x, s.groups);
        let (dx, dgamma, dbeta) = kernels::group_norm_backward(
            &g,
            &values(&s.x),
            &values(&s.gamma),
            &values(&s.beta),
            &s.mean,
            &s.rstd,
            &values(&dy),
            s.silu,
        );
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, tensor(dx, s.x.layout().shape().to_vec()));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, tensor(dgamma, alloc::vec![g.channels]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, tensor(dbeta, alloc::vec![g.channels]));
        }
    }
}

impl<C: CheckpointStrategy> FastOps for Autodiff<Flex, C> {
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
                let y = conv_forward(&x, &weight, &bias, pad);
                prep.finish((x, weight, pad), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(conv_forward(
                x.primitive(),
                weight.primitive(),
                bias.primitive(),
                pad,
            )),
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
                let (y, mean, rstd) = norm_forward(&x, &gamma, &beta, groups, epsilon, silu);
                let state = NormState {
                    x,
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
fn fast_path(x: &Tensor<4>) -> bool {
    x.dtype() == DType::F32 && x.device().inner() == Device::flex()
}

/// `conv.forward(x)`, on the fast path when it applies (stride 1, no dilation or groups,
/// square kernel, symmetric padding, a bias).
///
/// # Shapes
/// `x`: `[B, Cin, H, W]` -> `[B, Cout, H', W']`.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let [k0, k1] = conv.kernel_size;
    let pad = match conv.padding {
        PaddingConfig2d::Explicit(a, b, c, d) if a == b && b == c && c == d => Some(a),
        PaddingConfig2d::Valid => Some(0),
        _ => None,
    };
    match (&conv.bias, pad) {
        (Some(bias), Some(pad))
            if fast_path(&x)
                && k0 == k1
                && conv.stride == [1, 1]
                && conv.dilation == [1, 1]
                && conv.groups == 1 =>
        {
            Tensor::from_dispatch(<Dispatch as FastOps>::fewstep_conv2d(
                x.into_dispatch(),
                conv.weight.val().into_dispatch(),
                bias.val().into_dispatch(),
                pad,
            ))
        }
        _ => conv.forward(x),
    }
}

/// `norm.forward(x)`, then SiLU when `silu`; fused on the fast path when it applies.
///
/// # Shapes
/// `x`: `[B, C, H, W]` -> `[B, C, H, W]`.
pub fn group_norm(norm: &GroupNorm, x: Tensor<4>, silu: bool) -> Tensor<4> {
    match (&norm.gamma, &norm.beta) {
        (Some(gamma), Some(beta))
            if fast_path(&x)
                && norm.num_groups > 0
                && x.dims()[1].is_multiple_of(norm.num_groups) =>
        {
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
