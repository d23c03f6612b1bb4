//! Inception-v3 as burn modules ([`InceptionV3`]): the folded convolutions of a loaded
//! [`Inception`], run block by block by the same [`Architecture`] as the host executor, on
//! any burn device.

use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::relu;
use burn::tensor::module::{avg_pool2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData};

use super::{Architecture, Inception, Op};

impl Inception {
    /// The burn modules of the network, on `device`.
    pub fn module(&self, device: &Device) -> InceptionV3 {
        let convs = self
            .convs
            .iter()
            .map(|c| {
                let [cout, cin, kh, kw] = c.dims;
                Conv2d {
                    weight: Param::from_tensor(Tensor::from_data(
                        TensorData::new(c.weight.clone(), [cout, cin, kh, kw]),
                        device,
                    )),
                    bias: Some(Param::from_tensor(Tensor::from_data(
                        TensorData::new(c.bias.clone(), [cout]),
                        device,
                    ))),
                    stride: [c.stride, c.stride],
                    kernel_size: [kh, kw],
                    dilation: [1, 1],
                    groups: 1,
                    padding: PaddingConfig2d::Explicit(c.pad.0, c.pad.1, c.pad.0, c.pad.1),
                }
            })
            .collect();
        InceptionV3 {
            convs,
            arch: self.arch.clone(),
        }
    }
}

/// Inception-v3 as burn modules: the folded convolutions, run by [`architecture`].
#[derive(Module, Debug)]
pub struct InceptionV3 {
    convs: Vec<Conv2d>,
    #[module(skip)]
    arch: Architecture,
}

impl InceptionV3 {
    fn apply(&self, op: Op, x: Tensor<4>) -> Tensor<4> {
        match op {
            Op::Conv(i) => relu(self.convs[i].forward(x)),
            Op::MaxPool { stride, pad } => max_pool2d(
                x,
                MaxPoolOptions::new([3, 3])
                    .with_stride([stride, stride])
                    .with_padding([pad, pad]),
            ),
            Op::AvgPool => avg_pool2d(
                x,
                AvgPoolOptions::new([3, 3])
                    .with_stride([1, 1])
                    .with_padding([1, 1])
                    .with_count_include_pad(false),
            ),
        }
    }

    /// The 2048-d features.
    ///
    /// # Shapes
    /// `x`: `[B, 3, H, W]` in [-1, 1], `H`, `W` >= 75 -> `[B, 2048]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let b = x.dims()[0];
        let mut x = x;
        for block in &self.arch.blocks {
            let mut inter: [Option<Tensor<4>>; 2] = [None, None];
            let mut cat = vec![];
            for br in block {
                let src = match br.from {
                    Some(i) => inter[i].clone().unwrap_or_else(|| x.clone()),
                    None => x.clone(),
                };
                let y = br.ops.iter().fold(src, |y, &op| self.apply(op, y));
                match br.to {
                    Some(i) => inter[i] = Some(y),
                    None => cat.push(y),
                }
            }
            x = Tensor::cat(cat, 1);
        }
        let [_, c, h, w] = x.dims();
        x.reshape([b, c, h * w]).mean_dim(2).reshape([b, c])
    }
}
