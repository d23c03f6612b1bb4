//! The host's fast CPU paths (std only): the U-Net's dominant ops on burn's `flex` backend,
//! each in its own module with its kernel on plain `f32` slices, its backward pass and the
//! routing that sends `f32` flex tensors to it (burn's own ops everywhere else: GPUs, f64
//! gradient checks); the trainer's Inception-v3 kernels for FID ([`inception`]); and the
//! thread pool they run on. Below the network (`crate::model` calls [`conv2d`],
//! [`group_norm`], ...), above nothing but burn: docs/performance.md says why each exists.

// The ops' entry points return `Err(inputs)` when the fast path declines them, handing the
// tensors back for burn's own op (`crate::model::ops`): a hand-over by value, not an error
// value that would be cheaper boxed.
#![allow(clippy::result_large_err)]

mod backend;
mod conv;
mod ext;
mod gemm;
mod group_norm;
pub mod inception;
mod resample;
mod simd;
mod softmax;

use alloc::vec::Vec;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Device, Tensor, TensorData};

pub use conv::{conv2d, conv2d_residual};
pub use ext::FastOps;
pub use group_norm::{group_norm, group_norm_shifted};
pub use resample::resample2;
pub use softmax::softmax_last;

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

/// Whether `x` takes the fast paths: `f32` on the flex device (with or without autodiff).
fn fast_path<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == DType::F32 && x.device().inner() == Device::flex()
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
