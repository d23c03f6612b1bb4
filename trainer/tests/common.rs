//! Shared fixtures: a tiny network base bundle and its data.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sampler_core::bundle::{Bundle, ImageShape, ModelSpec, SolverKind};
use sampler_core::model::{MlpConfig, NetConfig, UNetConfig, weights_to_bytes};
use sampler_core::schedule::Schedule;
use trainer::data::Dataset;
use trainer::model::init_network;

/// A freshly initialized network as a bundle, and data of the same shape (mixture samples).
pub fn network_base(dir: &Path, config: NetConfig, shape: ImageShape) -> (PathBuf, Dataset) {
    let device = burn::tensor::Device::flex();
    let net = init_network(&config, 5, &device);
    let b = Bundle {
        name: "base".into(),
        description: String::new(),
        image: shape,
        label_count: 0,
        precond: Default::default(),
        schedule: Schedule::edm(8, 0.002, 80.0).unwrap(),
        solver: SolverKind::Euler,
        model: ModelSpec::Network {
            weights: weights_to_bytes(&net).unwrap(),
            config,
        },
        provenance: Default::default(),
    };
    let path = dir.join("base.bin");
    std::fs::write(&path, b.to_bytes().unwrap()).unwrap();
    let m = sampler_core::gmm::Mixture::random(3, shape.values(), 9);
    (path, Dataset::from_mixture(&m, 512, 1, shape))
}

pub fn mlp_base(dir: &Path) -> (PathBuf, Dataset) {
    let config = NetConfig::Mlp(
        MlpConfig::new(16)
            .with_hidden(32)
            .with_depth(2)
            .with_noise_channels(16),
    );
    network_base(
        dir,
        config,
        ImageShape {
            channels: 1,
            height: 1,
            width: 16,
        },
    )
}

pub fn unet_config() -> NetConfig {
    NetConfig::UNet(
        UNetConfig::new(8, 1, 1)
            .with_model_channels(8)
            .with_channel_mult(vec![1, 2])
            .with_num_blocks(1)
            .with_attn_resolutions(vec![4]),
    )
}

pub fn unet_base(dir: &Path) -> (PathBuf, Dataset) {
    let config = unet_config();
    network_base(
        dir,
        config,
        ImageShape {
            channels: 1,
            height: 8,
            width: 8,
        },
    )
}

/// Runs the `trainer` binary.
pub fn trainer(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()
        .expect("run trainer")
}

/// Its stdout, after asserting it succeeded (stdout and stderr shown otherwise).
pub fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every float parameter's values of `net`, in visiting order.
pub fn values(net: &sampler_core::model::Network) -> Vec<f32> {
    struct Values(Vec<f32>);
    impl burn::module::ModuleVisitor for Values {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            self.0
                .extend(param.val().into_data().try_to_vec::<f32>().unwrap());
        }
    }
    let mut v = Values(Vec::new());
    burn::module::Module::visit(net, &mut v);
    v.0
}
