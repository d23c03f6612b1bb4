//! The network's six hot ops, each written once: the host's fast CPU path (`crate::cpu`,
//! std only) when it takes the tensors (`f32` on the flex device, supported shapes), burn's
//! own ops otherwise (GPUs, f64 gradient checks, builds without std). The U-Net and the MLP
//! call these, never `crate::cpu` directly.

use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

/// `conv.forward(x)`.
///
/// # Shapes
/// `x`: `[B, Cin, H, W]` -> `[B, Cout, H', W']`.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "std")]
    let x = match crate::cpu::conv2d(conv, x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    conv.forward(x)
}

/// `scale * (conv.forward(x) + residual)`: the convolution that closes a residual
/// connection (fused on the fast path).
///
/// # Shapes
/// `x`: `[B, Cin, H, W]`, `residual`: `[B, Cout, H', W']` -> `[B, Cout, H', W']`.
pub fn conv2d_residual(conv: &Conv2d, x: Tensor<4>, residual: Tensor<4>, scale: f64) -> Tensor<4> {
    #[cfg(feature = "std")]
    let (x, residual) = match crate::cpu::conv2d_residual(conv, x, residual, scale) {
        Ok(y) => return y,
        Err(inputs) => inputs,
    };
    (conv2d(conv, x) + residual).mul_scalar(scale)
}

/// `norm.forward(x + shift)` (`shift` `[B, C]` broadcast over the plane), then SiLU when
/// `silu`.
///
/// # Shapes
/// `x`: `[B, C, H, W]`, `shift`: `[B, C]` -> `[B, C, H, W]`.
pub fn group_norm_shifted(
    norm: &GroupNorm,
    x: Tensor<4>,
    shift: Tensor<2>,
    silu: bool,
) -> Tensor<4> {
    #[cfg(feature = "std")]
    let (x, shift) = match crate::cpu::group_norm_shifted(norm, x, shift, silu) {
        Ok(y) => return y,
        Err(inputs) => inputs,
    };
    let [b, c, _, _] = x.dims();
    group_norm(norm, x + shift.reshape([b, c, 1, 1]), silu)
}

/// `norm.forward(x)`, then SiLU when `silu`.
///
/// # Shapes
/// `x`: `[B, C, H, W]` -> `[B, C, H, W]`.
pub fn group_norm(norm: &GroupNorm, x: Tensor<4>, silu: bool) -> Tensor<4> {
    #[cfg(feature = "std")]
    let x = match crate::cpu::group_norm(norm, x, silu) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let y = norm.forward(x);
    if silu {
        burn::tensor::activation::silu(y)
    } else {
        y
    }
}

/// EDM's 2x resampling with `resample_filter = [1, 1]` in burn's ops: nearest up when `up`,
/// else the mean of each 2x2 block (burn's ops: the reference the fast CPU kernel is held
/// to).
///
/// # Shapes
/// `x`: `[B, C, H, W]` -> `[B, C, 2H, 2W]` or `[B, C, H/2, W/2]`.
pub fn resample2(x: Tensor<4>, up: bool) -> Tensor<4> {
    #[cfg(feature = "std")]
    let x = match crate::cpu::resample2(x, up) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let [b, c, h, w] = x.dims();
    if up {
        x.reshape([b, c, h, 1, w, 1])
            .expand([b, c, h, 2, w, 2])
            .reshape([b, c, 2 * h, 2 * w])
    } else {
        x.reshape([b, c, h / 2, 2, w / 2, 2])
            .mean_dim(5)
            .mean_dim(3)
            .reshape([b, c, h / 2, w / 2])
    }
}

/// Softmax over the last axis (attention's weights).
pub fn softmax_last(x: Tensor<3>) -> Tensor<3> {
    #[cfg(feature = "std")]
    let x = match crate::cpu::softmax_last(x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    burn::tensor::activation::softmax(x, 2)
}
