//! fewstep's trainer: data sets, EDM pre-training, the two-stage schedule/weight
//! optimization of the paper (Algorithm 1), export to bundles, and a benchmark. Every
//! formula it optimizes (schedule, preconditioning, network, solvers) comes from
//! sampler-core, so what is trained is exactly what ships.

pub mod classifier;
pub mod cli;
pub mod data;
pub mod eval;
pub mod fid;
pub use fewstep_metrics::frechet;
pub mod inception;
pub mod interop;
pub mod losses;
pub mod memory;
pub mod model;
pub mod parallel;
pub mod plots;
pub mod pretrain;
pub mod run;
pub mod two_stage;

/// A progress bar on stderr for `total` steps (hidden when `quiet` or not a terminal).
pub fn progress(total: u64, quiet: bool) -> indicatif::ProgressBar {
    fewstep_host::progress(total, "{bar:30} {pos}/{len} {msg} eta {eta}", quiet)
}

/// The compute device named on the command line: `flex` (CPU, default), or `vulkan` /
/// `cuda` when built with those features; with autodiff for training.
pub fn device(name: &str) -> anyhow::Result<burn::tensor::Device> {
    let base = match name {
        "flex" | "cpu" => burn::tensor::Device::flex(),
        #[cfg(feature = "vulkan")]
        // wgpu's pick (high-power GPUs first); CUBECL_WGPU_DEFAULT_DEVICE overrides it, e.g.
        // `Cpu` for Mesa's lavapipe on a machine without a GPU.
        "vulkan" => burn::tensor::Device::vulkan(burn::tensor::DeviceKind::DefaultDevice),
        #[cfg(feature = "cuda")]
        "cuda" => burn::tensor::Device::cuda(0),
        #[cfg(not(feature = "vulkan"))]
        "vulkan" => anyhow::bail!(
            "this trainer was built without the 'vulkan' feature; rebuild with --features vulkan"
        ),
        #[cfg(not(feature = "cuda"))]
        "cuda" => anyhow::bail!(
            "this trainer was built without the 'cuda' feature; run `python3 scripts/fetch_llvm.py` \
             once (LLVM for its kernel compiler), then rebuild with --features cuda"
        ),
        other => anyhow::bail!("unknown device '{other}': expected flex, vulkan or cuda"),
    };
    if name != "flex" && name != "cpu" {
        answers(&base, name)?;
    }
    Ok(base.autodiff())
}

/// Whether a GPU device runs one tiny op. burn's GPU runtimes panic, from a worker thread
/// and with a page of library names, when the driver is missing (cudarc cannot load
/// libcuda); the user gets one line instead.
fn answers(device: &burn::tensor::Device, name: &str) -> anyhow::Result<()> {
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let ran = std::panic::catch_unwind(|| {
        burn::tensor::Tensor::<1>::zeros([1], device)
            .into_data()
            .try_to_vec::<f32>()
            .is_ok()
    });
    std::panic::set_hook(quiet);
    match ran {
        Ok(true) => Ok(()),
        _ => anyhow::bail!(
            "--device {name}: no usable GPU (the {} driver did not answer); check `nvidia-smi` \
             (CUDA) or `vulkaninfo` (Vulkan), or train on the CPU with --device flex",
            if name == "cuda" { "CUDA" } else { "Vulkan" }
        ),
    }
}

/// `count` devices of the kind `name` for data-parallel training (`--devices`): CUDA devices
/// 0 .. count, or the discrete GPUs 0 .. count through Vulkan. The CPU has one device, so on
/// `flex` the shards are replicas on it, differentiated one after the other: the same
/// arithmetic as separate devices, which is how CI tests data parallelism.
pub fn devices(name: &str, count: usize) -> anyhow::Result<Vec<burn::tensor::Device>> {
    if count == 0 {
        anyhow::bail!("--devices must be at least 1");
    }
    let first = device(name)?;
    if count == 1 {
        return Ok(vec![first]);
    }
    Ok(match name {
        #[cfg(feature = "cuda")]
        "cuda" => (0..count)
            .map(|i| burn::tensor::Device::cuda(i).autodiff())
            .collect(),
        #[cfg(feature = "vulkan")]
        "vulkan" => (0..count)
            .map(|i| {
                burn::tensor::Device::vulkan(burn::tensor::DeviceKind::DiscreteGpu(i)).autodiff()
            })
            .collect(),
        _ => vec![first; count],
    })
}
