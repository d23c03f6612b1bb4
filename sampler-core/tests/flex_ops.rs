//! The fast CPU paths of `sampler_core::cpu` against burn's own ops evaluated in float64:
//! convolution (3x3 padded, 1x1) and GroupNorm with and without SiLU, forward and every
//! gradient, on odd shapes and batch sizes 1 and 3; then a whole U-Net (attention, labels)
//! on the fast path against the same weights in float64 through burn's modules. The fused
//! ops (convolution closing a residual, GroupNorm of a shifted input, 2x resampling,
//! softmax) likewise, each against the unfused burn ops.

use burn::backend::Dispatch;
use burn::module::{Module, ModuleMapper, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Device, Tensor, TensorData};
use sampler_core::burn;
use sampler_core::cpu::FastOps;
use sampler_core::model::ops;
use sampler_core::model::{NetConfig, UNetConfig};
use sampler_core::rng;

fn device() -> Device {
    Device::flex().autodiff()
}

fn values(seed: u64, n: usize) -> Vec<f32> {
    rng::gaussian_vec(seed, n)
}

fn t32<const D: usize>(v: &[f32], shape: [usize; D]) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &device()).require_grad()
}

fn t64<const D: usize>(v: &[f32], shape: [usize; D]) -> Tensor<D> {
    let v: Vec<f64> = v.iter().map(|&a| a as f64).collect();
    Tensor::from_data(TensorData::new(v, shape), (&device(), DType::F64)).require_grad()
}

fn read<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.try_into_vec_as::<f64>().expect("readable")
}

/// max |a - b| / (1 + max |b|): f32 round-off of sums of tens of terms stays below 1e-5.
fn assert_close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = 1.0 + b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        err / scale < 2e-6,
        "{what}: max error {err:.3e} at scale {scale:.3}"
    );
    assert!(
        b.iter().any(|v| v.abs() > 1e-3),
        "{what}: reference is all zeros"
    );
}

fn conv_case(batch: usize, cin: usize, cout: usize, h: usize, w: usize, k: usize, pad: usize) {
    let what = format!("conv b{batch} {cin}->{cout} {h}x{w} k{k} p{pad}");
    let x = values(1, batch * cin * h * w);
    let wt = values(2, cout * cin * k * k);
    let b = values(3, cout);
    let oh = h + 2 * pad + 1 - k;
    let ow = w + 2 * pad + 1 - k;
    let r = values(4, batch * cout * oh * ow);

    let (x32, w32, b32) = (
        t32(&x, [batch, cin, h, w]),
        t32(&wt, [cout, cin, k, k]),
        t32(&b, [cout]),
    );
    let y32 = Tensor::<4>::from_dispatch(<Dispatch as FastOps>::fewstep_conv2d(
        x32.clone().into_dispatch(),
        w32.clone().into_dispatch(),
        b32.clone().into_dispatch(),
        pad,
    ));
    let (x64, w64, b64) = (
        t64(&x, [batch, cin, h, w]),
        t64(&wt, [cout, cin, k, k]),
        t64(&b, [cout]),
    );
    let options = ConvOptions::new([1, 1], [pad, pad], [1, 1], 1);
    let y64 = burn_conv2d(x64.clone(), w64.clone(), Some(b64.clone()), options);
    assert_close(
        &read(y32.clone()),
        &read(y64.clone()),
        &format!("{what}: forward"),
    );

    // Gradients of <y, r>.
    let g32 = (y32 * t32(&r, [batch, cout, oh, ow])).sum().backward();
    let g64 = (y64 * t64(&r, [batch, cout, oh, ow])).sum().backward();
    let grad = |t: &Tensor<4>, g| read(t.grad(g).expect("grad"));
    assert_close(&grad(&x32, &g32), &grad(&x64, &g64), &format!("{what}: dx"));
    assert_close(&grad(&w32, &g32), &grad(&w64, &g64), &format!("{what}: dw"));
    assert_close(
        &read(b32.grad(&g32).expect("grad")),
        &read(b64.grad(&g64).expect("grad")),
        &format!("{what}: db"),
    );
}

#[test]
fn convolution_matches_burn_in_f64() {
    conv_case(3, 5, 4, 7, 6, 3, 1);
    conv_case(1, 4, 6, 5, 5, 3, 1);
    conv_case(2, 3, 7, 4, 9, 1, 0);
    conv_case(1, 8, 2, 3, 3, 1, 0);
    // Larger than one gemm block, batch split over threads.
    conv_case(5, 32, 48, 14, 14, 3, 1);
    // Batch 1 large enough to be split into bands of output rows (on 2+ threads).
    conv_case(1, 16, 16, 13, 10, 3, 1);
    conv_case(1, 64, 64, 12, 12, 1, 0);
    // Images smaller than or as small as the kernel.
    conv_case(2, 3, 2, 2, 3, 3, 1);
    conv_case(1, 2, 2, 1, 1, 3, 1);
}

/// burn's GroupNorm (biased variance) composed from f64 ops, then SiLU.
fn group_norm_ref(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let g = x.reshape([b, groups, c / groups * h * w]);
    let mean = g.clone().mean_dim(2);
    let centered = g - mean;
    let var = centered.clone().square().mean_dim(2);
    let y = (centered / var.add_scalar(eps).sqrt()).reshape([b, c, h, w]);
    let y = y * gamma.reshape([1, c, 1, 1]) + beta.reshape([1, c, 1, 1]);
    if silu {
        burn::tensor::activation::silu(y)
    } else {
        y
    }
}

fn norm_case(batch: usize, c: usize, h: usize, w: usize, groups: usize, silu: bool) {
    let what = format!("group norm b{batch} c{c} {h}x{w} g{groups} silu={silu}");
    let n = batch * c * h * w;
    // Offset and scaled so the mean and variance matter.
    let x: Vec<f32> = values(5, n).iter().map(|v| 3.0 * v + 1.5).collect();
    let gamma: Vec<f32> = values(6, c).iter().map(|v| 1.0 + 0.3 * v).collect();
    let beta = values(7, c);
    let r = values(8, n);
    let eps = 1e-6;

    let (x32, g32, b32) = (t32(&x, [batch, c, h, w]), t32(&gamma, [c]), t32(&beta, [c]));
    let y32 = Tensor::<4>::from_dispatch(<Dispatch as FastOps>::fewstep_group_norm(
        x32.clone().into_dispatch(),
        g32.clone().into_dispatch(),
        b32.clone().into_dispatch(),
        groups,
        eps,
        silu,
    ));
    let (x64, g64, b64) = (t64(&x, [batch, c, h, w]), t64(&gamma, [c]), t64(&beta, [c]));
    let y64 = group_norm_ref(x64.clone(), g64.clone(), b64.clone(), groups, eps, silu);
    assert_close(
        &read(y32.clone()),
        &read(y64.clone()),
        &format!("{what}: forward"),
    );

    let gr32 = (y32 * t32(&r, [batch, c, h, w])).sum().backward();
    let gr64 = (y64 * t64(&r, [batch, c, h, w])).sum().backward();
    assert_close(
        &read(x32.grad(&gr32).expect("grad")),
        &read(x64.grad(&gr64).expect("grad")),
        &format!("{what}: dx"),
    );
    assert_close(
        &read(g32.grad(&gr32).expect("grad")),
        &read(g64.grad(&gr64).expect("grad")),
        &format!("{what}: dgamma"),
    );
    assert_close(
        &read(b32.grad(&gr32).expect("grad")),
        &read(b64.grad(&gr64).expect("grad")),
        &format!("{what}: dbeta"),
    );
}

#[test]
fn group_norm_and_silu_match_burn_in_f64() {
    for silu in [false, true] {
        norm_case(3, 8, 5, 4, 2, silu);
        norm_case(1, 12, 3, 3, 3, silu);
        norm_case(2, 16, 6, 6, 4, silu);
    }
}

#[test]
fn module_wrappers_agree_with_the_modules() {
    // The routing functions the network calls: same numbers as burn's modules on f32.
    let conv = Conv2dConfig::new([3, 5], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&device());
    let norm = burn::nn::GroupNormConfig::new(2, 6).init(&device());
    let x = t32(&values(9, 2 * 3 * 6 * 5), [2, 3, 6, 5]);
    let fast = ops::conv2d(&conv, x.clone());
    let plain = conv.forward(x);
    assert_close(&read(fast), &read(plain), "conv2d wrapper");
    let x2 = t32(&values(10, 2 * 6 * 6 * 5), [2, 6, 6, 5]);
    let fast2 = ops::group_norm(&norm, x2.clone(), true);
    let plain2 = burn::tensor::activation::silu(norm.forward(x2));
    assert_close(&read(fast2), &read(plain2), "group_norm wrapper");
}

/// Casts every parameter of a module to f64 (burn's path: the fast ops only take f32).
struct ToF64;
impl ModuleMapper for ToF64 {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| t.cast(DType::F64))
    }
}

#[test]
fn unet_on_the_fast_path_matches_burn_in_f64() {
    let config = NetConfig::UNet(
        UNetConfig::new(8, 3, 3)
            .with_model_channels(16)
            .with_channel_mult(vec![1, 2])
            .with_num_blocks(1)
            .with_label_dim(4)
            .with_attn_resolutions(vec![4]),
    );
    let dev = Device::flex();
    dev.seed(11);
    let net = config.init(&dev);
    let net64 = net.clone().map(&mut ToF64);
    let b = 3;
    let d = config.dim();
    let x = values(12, b * d);
    let c_noise = [-1.0f32, 0.3, 1.2];
    let labels: Vec<f32> = (0..b * 4).map(|i| (i % 5 == 0) as u32 as f32).collect();
    let run = |dtype: DType| {
        let t = |v: &[f32], shape: [usize; 2]| {
            let v: Vec<f64> = v.iter().map(|&a| a as f64).collect();
            Tensor::<2>::from_data(TensorData::new(v, shape), (&dev, dtype))
        };
        let c = Tensor::<1>::from_data(
            TensorData::new(c_noise.iter().map(|&a| a as f64).collect::<Vec<_>>(), [b]),
            (&dev, dtype),
        );
        let model = if dtype == DType::F64 { &net64 } else { &net };
        read(model.forward(t(&x, [b, d]), c, Some(t(&labels, [b, 4]))))
    };
    assert_close(&run(DType::F32), &run(DType::F64), "U-Net forward");
}

/// Gradients of `<y, r>` at each tensor of `inputs`, read as f64.
fn grads_of<const D: usize, const E: usize>(
    y: Tensor<D>,
    r: Tensor<D>,
    inputs: &[Tensor<E>],
) -> Vec<Vec<f64>> {
    let g = (y * r).sum().backward();
    inputs
        .iter()
        .map(|t| read(t.grad(&g).expect("grad")))
        .collect()
}

fn conv_residual_case(batch: usize, cin: usize, cout: usize, hw: usize, k: usize, scale: f64) {
    let what = format!("conv+residual b{batch} {cin}->{cout} {hw}x{hw} k{k} scale {scale}");
    let pad = k / 2;
    let x = values(21, batch * cin * hw * hw);
    let wt = values(22, cout * cin * k * k);
    let b = values(23, cout);
    let res = values(24, batch * cout * hw * hw);
    let r = values(25, batch * cout * hw * hw);
    let ys = [batch, cout, hw, hw];

    let (x32, w32, b32, res32) = (
        t32(&x, [batch, cin, hw, hw]),
        t32(&wt, [cout, cin, k, k]),
        t32(&b, [cout]),
        t32(&res, ys),
    );
    let y32 = Tensor::<4>::from_dispatch(<Dispatch as FastOps>::fewstep_conv2d_residual(
        x32.clone().into_dispatch(),
        w32.clone().into_dispatch(),
        b32.clone().into_dispatch(),
        res32.clone().into_dispatch(),
        pad,
        scale,
    ));
    let (x64, w64, b64, res64) = (
        t64(&x, [batch, cin, hw, hw]),
        t64(&wt, [cout, cin, k, k]),
        t64(&b, [cout]),
        t64(&res, ys),
    );
    let options = ConvOptions::new([1, 1], [pad, pad], [1, 1], 1);
    let y64 = (burn_conv2d(x64.clone(), w64.clone(), Some(b64.clone()), options.clone())
        + res64.clone())
    .mul_scalar(scale);
    assert_close(
        &read(y32.clone()),
        &read(y64.clone()),
        &format!("{what}: forward"),
    );
    let g = (y32 * t32(&r, ys)).sum().backward();
    let h = (y64 * t64(&r, ys)).sum().backward();
    let both = |a: Option<Tensor<4>>, b: Option<Tensor<4>>| {
        (read(a.expect("grad")), read(b.expect("grad")))
    };
    let (a, b) = both(x32.grad(&g), x64.grad(&h));
    assert_close(&a, &b, &format!("{what}: dx"));
    let (a, b) = both(res32.grad(&g), res64.grad(&h));
    assert_close(&a, &b, &format!("{what}: dresidual"));
    let (a, b) = both(w32.grad(&g), w64.grad(&h));
    assert_close(&a, &b, &format!("{what}: dw"));
    let (a, b) = (
        read(b32.grad(&g).expect("grad")),
        read(b64.grad(&h).expect("grad")),
    );
    assert_close(&a, &b, &format!("{what}: db"));
}

#[test]
fn convolution_with_residual_matches_burn_in_f64() {
    conv_residual_case(3, 5, 4, 6, 3, std::f64::consts::FRAC_1_SQRT_2);
    conv_residual_case(2, 3, 7, 5, 1, 0.5);
    // Batch 1 split into bands of output rows, each band reading its rows of the residual.
    conv_residual_case(1, 16, 16, 13, 3, 1.5);
}

fn shifted_norm_case(batch: usize, c: usize, hw: usize, groups: usize, silu: bool) {
    let what = format!("shifted group norm b{batch} c{c} {hw}x{hw} g{groups} silu={silu}");
    let shape = [batch, c, hw, hw];
    let n = batch * c * hw * hw;
    let x: Vec<f32> = values(31, n).iter().map(|v| 2.0 * v - 0.5).collect();
    // Shifts as large as x itself, different per sample and channel.
    let shift: Vec<f32> = values(32, batch * c).iter().map(|v| 3.0 * v).collect();
    let gamma: Vec<f32> = values(33, c).iter().map(|v| 1.0 + 0.3 * v).collect();
    let beta = values(34, c);
    let r = values(35, n);
    let eps = 1e-6;
    let (x32, s32, g32, b32) = (
        t32(&x, shape),
        t32(&shift, [batch, c]),
        t32(&gamma, [c]),
        t32(&beta, [c]),
    );
    let y32 = Tensor::<4>::from_dispatch(<Dispatch as FastOps>::fewstep_group_norm_shifted(
        x32.clone().into_dispatch(),
        s32.clone().into_dispatch(),
        g32.clone().into_dispatch(),
        b32.clone().into_dispatch(),
        groups,
        eps,
        silu,
    ));
    let (x64, s64, g64, b64) = (
        t64(&x, shape),
        t64(&shift, [batch, c]),
        t64(&gamma, [c]),
        t64(&beta, [c]),
    );
    let pre = x64.clone() + s64.clone().reshape([batch, c, 1, 1]);
    let y64 = group_norm_ref(pre, g64.clone(), b64.clone(), groups, eps, silu);
    assert_close(
        &read(y32.clone()),
        &read(y64.clone()),
        &format!("{what}: forward"),
    );
    let g = (y32 * t32(&r, shape)).sum().backward();
    let h = (y64 * t64(&r, shape)).sum().backward();
    assert_close(
        &read(x32.grad(&g).expect("grad")),
        &read(x64.grad(&h).expect("grad")),
        &format!("{what}: dx"),
    );
    assert_close(
        &read(s32.grad(&g).expect("grad")),
        &read(s64.grad(&h).expect("grad")),
        &format!("{what}: dshift"),
    );
    assert_close(
        &read(g32.grad(&g).expect("grad")),
        &read(g64.grad(&h).expect("grad")),
        &format!("{what}: dgamma"),
    );
    assert_close(
        &read(b32.grad(&g).expect("grad")),
        &read(b64.grad(&h).expect("grad")),
        &format!("{what}: dbeta"),
    );
}

#[test]
fn group_norm_of_a_shifted_input_matches_burn_in_f64() {
    for silu in [false, true] {
        shifted_norm_case(3, 8, 5, 2, silu);
        shifted_norm_case(2, 16, 6, 4, silu);
    }
}

#[test]
fn resampling_matches_burn_in_f64() {
    // The wrappers take burn's ops for f64 tensors: the reference.
    for (up, h, w) in [(false, 6, 8), (true, 3, 5), (false, 2, 2), (true, 1, 1)] {
        let what = format!("resample up={up} {h}x{w}");
        let (b, c) = (2, 3);
        let x = values(41, b * c * h * w);
        let (oh, ow) = if up { (2 * h, 2 * w) } else { (h / 2, w / 2) };
        let r = values(42, b * c * oh * ow);
        let (x32, x64) = (t32(&x, [b, c, h, w]), t64(&x, [b, c, h, w]));
        let y32 = ops::resample2(x32.clone(), up);
        let y64 = ops::resample2(x64.clone(), up);
        assert_eq!(y32.dims(), [b, c, oh, ow], "{what}: shape");
        assert_close(
            &read(y32.clone()),
            &read(y64.clone()),
            &format!("{what}: forward"),
        );
        let g32 = grads_of(y32, t32(&r, [b, c, oh, ow]), &[x32]);
        let g64 = grads_of(y64, t64(&r, [b, c, oh, ow]), &[x64]);
        assert_close(&g32[0], &g64[0], &format!("{what}: dx"));
    }
}

#[test]
fn softmax_matches_burn_in_f64() {
    for (b, q, k) in [(2, 5, 7), (1, 16, 16), (3, 1, 9)] {
        let what = format!("softmax {b}x{q}x{k}");
        // Spread logits: large enough that subtracting the row maximum matters.
        let x: Vec<f32> = values(51, b * q * k).iter().map(|v| 8.0 * v).collect();
        let r = values(52, b * q * k);
        let (x32, x64) = (t32(&x, [b, q, k]), t64(&x, [b, q, k]));
        let y32 = ops::softmax_last(x32.clone());
        let y64 = ops::softmax_last(x64.clone());
        assert_close(
            &read(y32.clone()),
            &read(y64.clone()),
            &format!("{what}: forward"),
        );
        let g32 = grads_of(y32, t32(&r, [b, q, k]), &[x32]);
        let g64 = grads_of(y64, t64(&r, [b, q, k]), &[x64]);
        assert_close(&g32[0], &g64[0], &format!("{what}: dx"));
    }
}
