//! Network presets (`--preset`) and the U-Net's training dropout: the cifar10 preset is EDM's
//! DDPM++ CIFAR-10 network, dropout acts only where gradients are recorded and follows the
//! device's seed, and a pre-training run with dropout resumes bit-exactly.

mod common;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use sampler_core::bundle::ImageShape;
use sampler_core::model::{NetConfig, Network};
use sampler_core::precond::Precond;
use trainer::model::Preset;
use trainer::pretrain::PretrainConfig;
use trainer::run::RunDir;

#[test]
fn cifar10_preset_is_edms_ddpmpp_network() {
    let c = Preset::Cifar10.unet(32, 3, 0);
    assert_eq!(
        (
            c.model_channels,
            c.channel_mult.clone(),
            c.num_blocks,
            c.attn_resolutions.clone()
        ),
        (128, vec![2, 2, 2], 4, vec![16])
    );
    // NVlabs/edm's SongUNet(32, 3, 3) with these settings and augment_dim = 0 has this many
    // parameters (`scripts/torch_train_bench.py --count` prints it from EDM's networks.py).
    let params = NetConfig::UNet(c).init(&Device::flex()).num_params();
    assert_eq!(params, EDM_DDPMPP_CIFAR10_PARAMS);
    assert_eq!(Preset::Cifar10.dropout(), 0.13);
    assert_eq!(Preset::Mnist.dropout(), 0.0);
}

/// `EDMPrecond(32, 3, model_type="SongUNet", model_channels=128, channel_mult=[2,2,2],
/// augment_dim=0, ...)` of NVlabs/edm counted by PyTorch (`scripts/torch_train_bench.py
/// EDM_CHECKOUT --count`).
const EDM_DDPMPP_CIFAR10_PARAMS: usize = 55_732_739;

fn forward(net: &Network, device: &Device) -> Vec<f32> {
    let x = Tensor::<2>::from_data(
        TensorData::new((0..64).map(|i| (i as f32 * 0.37).sin()).collect(), [1, 64]),
        device,
    );
    let c_noise = Tensor::<1>::from_data(TensorData::new(vec![0.3f32], [1]), device);
    net.forward(x, c_noise, None)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

#[test]
fn dropout_acts_in_training_only_and_follows_the_seed() {
    let plain = Device::flex();
    let train = plain.clone().autodiff();
    let config = common::unet_config();
    let net = trainer::model::init_network(&config, 1, &train);
    let reference = forward(&net, &train);
    let dropped = net.clone().with_dropout(0.5);
    // Sampling (no autodiff) never drops.
    assert_eq!(
        forward(&dropped.valid(), &plain),
        forward(&net.valid(), &plain)
    );
    // Training drops: the output moves, the same seed gives the same masks, another seed
    // other masks.
    let (a, b, c) = {
        let _rng = trainer::model::device_rng_lock();
        train.seed(7);
        let a = forward(&dropped, &train);
        train.seed(7);
        let b = forward(&dropped, &train);
        train.seed(8);
        (a, b, forward(&dropped, &train))
    };
    assert_ne!(a, reference);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn pretraining_with_dropout_resumes_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (_, data) = common::unet_base(dir.path());
    let config = PretrainConfig {
        net: common::unet_config(),
        precond: Precond::default(),
        steps: 4,
        batch: 6,
        lr: 1e-3,
        ema_decay: 0.9,
        seed: 2,
        checkpoint_every: 1,
        dataset: "mixture".into(),
        image: ImageShape {
            channels: 1,
            height: 8,
            width: 8,
        },
        label_count: 0,
        dropout: 0.2,
    };
    let devices = [Device::flex().autodiff()];
    // Weight values (parameter ids are drawn afresh by every run, so not the bytes).
    let trained = |name: &str, config: &PretrainConfig, stops: &[u64]| -> Vec<f32> {
        let run = RunDir::create(&dir.path().join(name)).unwrap();
        for &stop in stops {
            trainer::pretrain::run(&run, config.clone(), &data, &devices, Some(stop), true)
                .unwrap();
        }
        let pt = trainer::pretrain::run(&run, config.clone(), &data, &devices, None, true).unwrap();
        // Still dropping after the optimizer's steps and a resume.
        let Network::UNet(unet) = pt.network() else {
            panic!("a U-Net")
        };
        assert!(
            unet.enc
                .iter()
                .chain(&unet.dec)
                .all(|b| b.dropout == config.dropout)
        );
        common::values(pt.network())
    };
    let whole = trained("whole", &config, &[]);
    let parts = trained("parts", &config, &[1, 3]);
    assert!(whole == parts, "the resumed run differs");
    // And dropout took part: without it the run lands elsewhere.
    let mut no_dropout = config.clone();
    no_dropout.dropout = 0.0;
    assert!(whole != trained("none", &no_dropout, &[]));
}
