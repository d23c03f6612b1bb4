//! [`FastOps`] for burn's `flex` backend (inference) and for `flex` under autodiff
//! (training): each method runs its op's kernel, and under autodiff records the op's
//! backward pass (defined beside its kernel, in the op's module).

use burn::backend::Flex;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::ops::{Backward, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;

use super::conv::{ConvBackward, ConvResidualBackward, conv_forward};
use super::ext::FastOps;
use super::group_norm::{NormBackward, NormState, ShiftedNormBackward, norm_forward};
use super::resample::{ResampleBackward, resample_forward};
use super::softmax::{SoftmaxBackward, softmax_forward};

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
