//! The backend extension that lets the network's ops take this module's CPU paths: the
//! [`FastOps`] trait, in burn's backend-extension API. Its implementations, for `flex` and
//! for `flex` under autodiff, are in `super::backend`; the ops' modules dispatch through it.

use burn::backend::backend_extension;
use burn::backend::tensor::FloatTensor;

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
