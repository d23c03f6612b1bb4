//! `NetConfig::macs_per_evaluation` (the firmware's instructions-per-MAC figure divides by
//! it) against counts made another way: from the built network's weight shapes, and by hand
//! from EDM's block structure.

use sampler_core::burn::module::{Module, ModuleVisitor, Param};
use sampler_core::burn::tensor::{Device, Tensor};
use sampler_core::model::{MlpConfig, NetConfig, UNetConfig};

/// Weights of linear layers (2-D) and convolutions (4-D) and their sizes; biases and
/// normalization parameters (1-D) are not multiplied with activations.
#[derive(Default)]
struct Weights {
    linear: u64,
    conv: u64,
}

impl ModuleVisitor for Weights {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let n = param.shape().num_elements() as u64;
        match D {
            2 => self.linear += n,
            4 => self.conv += n,
            _ => {}
        }
    }
}

fn weights(config: &NetConfig) -> Weights {
    let mut w = Weights::default();
    config.init(&Device::flex()).visit(&mut w);
    w
}

#[test]
fn an_mlp_multiplies_each_weight_once() {
    let config = NetConfig::Mlp(
        MlpConfig::new(20)
            .with_hidden(48)
            .with_depth(3)
            .with_noise_channels(8)
            .with_label_dim(10),
    );
    let w = weights(&config);
    assert_eq!(w.conv, 0);
    assert_eq!(config.macs_per_evaluation(), w.linear);
}

#[test]
fn a_single_resolution_unet_uses_each_conv_weight_once_per_pixel() {
    // Everything at 4x4 (one level), attention in the middle block: every convolution
    // weight meets all 16 output pixels, every linear weight one embedding, and attention
    // adds its two C N^2 products.
    let c = UNetConfig::new(4, 1, 1)
        .with_model_channels(4)
        .with_channel_mult(vec![1])
        .with_num_blocks(1)
        .with_label_dim(3);
    let config = NetConfig::UNet(c);
    let w = weights(&config);
    // One attention block (the middle `in0`), C = 4, N = 16.
    let attention = 2 * 4 * 16 * 16;
    assert_eq!(
        config.macs_per_evaluation(),
        w.conv * 16 + w.linear + attention
    );
    // By hand from EDM's DDPM++ blocks (E = 16 embedding channels): the embedding
    // 3*4 + 4*16 + 16*16 = 332; conv_in and aux_conv 576 each; the encoder block
    // 2*2304 + 64 = 4672; in0 4672 + 768 (qkv) + 2048 + 256 (proj) = 7744; in1 4672; two
    // decoder blocks on 8 input channels 4608 + 64 + 2304 + 512 (skip) = 7488 each.
    assert_eq!(
        config.macs_per_evaluation(),
        332 + 2 * 576 + 4672 + 7744 + 4672 + 2 * 7488
    );
}

#[test]
fn edms_cifar10_network_counts_what_pytorch_counts() {
    // NVlabs/edm's DDPM++ CIFAR-10 network run once through PyTorch's flop counter
    // (`scripts/torch_train_bench.py EDM_CHECKOUT --count`: 2 flops per MAC).
    let c = UNetConfig::new(32, 3, 3)
        .with_model_channels(128)
        .with_channel_mult(vec![2, 2, 2])
        .with_num_blocks(4)
        .with_attn_resolutions(vec![16]);
    // PyTorch also counts EDM's resampling, which NVlabs/edm runs as 2x2 depthwise
    // convolutions (`resample_filter = [1, 1]`) on the main and the skip path of the four
    // resampling blocks: 2 x 256 channels x 4 taps x (256 + 64 + 64 + 256) pixels. Both
    // engines here average and copy instead (no multiplies), so those are not MACs here.
    let resampling = 2 * 256 * 4 * (256 + 64 + 64 + 256);
    assert_eq!(
        NetConfig::UNet(c).macs_per_evaluation(),
        21_191_524_352 - resampling
    );
}
