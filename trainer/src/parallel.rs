//! Data parallelism (`--devices N`): a training step's batch is cut into one contiguous shard
//! per device, each shard's loss is differentiated on its own replica of the network (burn's
//! `Module::fork`), and the replicas' gradients are moved to the first device and summed with
//! burn's `GradientsAccumulator`: the pattern of burn-train's multi-device strategy, whose
//! optimizer steps once on the main device. Each shard's mean loss is weighted by its share
//! of the rows, so the sum is the gradient of the global batch's mean loss, equal to
//! single-device training within f32 round-off (`tests/parallel.rs`).
//!
//! burn 0.22 has no collective (all-reduce) for its CPU backend, and none across machines
//! (burn-collective was removed in 0.22); on CUDA its NCCL all-reduce would replace the
//! accumulation here, with the same result.

use std::ops::Range;

use anyhow::{Result, bail};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor};
use rayon::prelude::*;

use crate::run::scalar;

/// `rows` cut into at most `n` contiguous, non-empty shards whose sizes differ by at most one
/// (the longer ones first).
pub fn shards(rows: usize, n: usize) -> Vec<Range<usize>> {
    let n = n.clamp(1, rows.max(1));
    let (size, extra) = (rows / n, rows % n);
    let mut start = 0;
    (0..n)
        .map(|k| {
            let len = size + usize::from(k < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .filter(|r| !r.is_empty())
        .collect()
}

/// `devices` as the replicas of a run on `device`, which must come first: the weights and
/// the optimizer live there, and the shards' gradients are summed there.
pub fn replicas_of(device: &Device, devices: Vec<Device>) -> Result<Vec<Device>> {
    if devices.first() != Some(device) {
        bail!("the first of --devices must be the run's device");
    }
    Ok(devices)
}

/// The global batch's mean loss and its gradient with respect to `module`'s parameters, on
/// the first of `replicas`. `shard_loss(module, rows, device)` is the mean loss of the batch
/// rows `rows`, computed on `device` by `module` (a replica living there). With one device
/// this is exactly `shard_loss` over the whole batch and its backward pass.
pub fn loss_and_grads<M>(
    module: &M,
    replicas: &[Device],
    rows: usize,
    shard_loss: impl Fn(&M, Range<usize>, &Device) -> Result<Tensor<1>> + Sync,
) -> Result<(f64, GradientsParams)>
where
    M: Module + Send + Sync,
{
    let main = replicas
        .first()
        .ok_or_else(|| anyhow::anyhow!("no device to train on"))?;
    let parts = shards(rows, replicas.len());
    if parts.len() == 1 {
        let loss = shard_loss(module, 0..rows, main)?;
        let value = scalar(&loss);
        return Ok((value, GradientsParams::from_grads(loss.backward(), module)));
    }
    let shard = |(range, device): (Range<usize>, &Device)| -> Result<(f64, GradientsParams)> {
        let replica = module.clone().fork(device);
        let share = range.len() as f64 / rows as f64;
        let loss = shard_loss(&replica, range, device)?.mul_scalar(share);
        let value = scalar(&loss);
        let grads =
            GradientsParams::from_grads(loss.backward(), &replica).to_device(main, &replica);
        Ok((value, grads))
    };
    // Replicas on distinct devices run side by side. Replicas sharing one device (the CPU)
    // run one after the other: its ops already use every core, and random draws (dropout)
    // then come in a fixed order.
    let distinct = replicas
        .iter()
        .enumerate()
        .all(|(i, d)| !replicas[..i].contains(d));
    let per_shard: Vec<Result<(f64, GradientsParams)>> = if distinct {
        parts
            .into_par_iter()
            .zip(replicas.par_iter())
            .map(shard)
            .collect()
    } else {
        parts.into_iter().zip(replicas.iter()).map(shard).collect()
    };
    // Summed in shard order, so a step is reproducible whatever the threads' timing.
    let mut total = 0.0;
    let mut accumulator = GradientsAccumulator::<M>::new();
    for part in per_shard {
        let (value, grads) = part?;
        total += value;
        accumulator.accumulate(module, grads);
    }
    Ok((total, accumulator.grads()))
}

/// Rows `rows` of a batch tensor, moved to `device`.
pub fn rows_on<const D: usize>(t: &Tensor<D>, rows: Range<usize>, device: &Device) -> Tensor<D> {
    t.clone()
        .narrow(0, rows.start, rows.len())
        .to_device(device)
}
