//! What a training run will need in memory, estimated from its config before anything of
//! that size is allocated, and checked against `--max-memory` (issue 11: a run must stay
//! within the limit it is given). Built on the sampler's per-sample activation estimate
//! ([`sampler_core::model::NetConfig::activation_bytes`]); `trainer/tests/memory.rs` holds
//! both above the measured peaks.

use anyhow::{Result, bail};
use burn::module::Module;
use sampler_core::fs::human_size;
use sampler_core::model::NetConfig;

use crate::pretrain::PretrainConfig;
use crate::two_stage::{DiscGrad, FinetuneConfig};

/// Autodiff keeps every forward activation and builds their gradients: three times the
/// inference activations of a sample.
const TRAINING_FACTOR: u64 = 3;

/// Bytes of a network's state in training: weights, EMA, two Adam moments, gradients, and
/// the serialized copies a checkpoint makes of weights, EMA and optimizer (f32).
fn network_state_bytes(net: &NetConfig) -> u64 {
    let params = net.init(&burn::tensor::Device::flex()).num_params() as u64; // lazy: no weights
    10 * 4 * params
}

/// Pre-training: the network's state and one batch of training activations.
pub fn pretrain_bytes(c: &PretrainConfig) -> u64 {
    network_state_bytes(&c.net)
        .saturating_add((c.batch as u64).saturating_mul(TRAINING_FACTOR * c.net.activation_bytes()))
}

/// Fine-tuning: the network's state, the larger of a stage-1 and a stage-2 step, the
/// teacher pool and (with `--traj-refresh`) the trajectory cache. `net` is `None` for an
/// analytic mixture (`dim` values per sample).
pub fn finetune_bytes(c: &FinetuneConfig, net: Option<&NetConfig>, dim: usize) -> u64 {
    let d = dim as u64;
    let t = c.t as u64;
    // One sample's activations in a denoiser call; a mixture's are a few vectors.
    let act = net.map_or(2 * 4 * 8 * d, |n| n.activation_bytes());
    let state = net.map_or(0, network_state_bytes);
    let (batch, disc) = (c.batch as u64, c.disc_batch as u64);
    let stage2 = batch * TRAINING_FACTOR * act;
    let stage1 = match c.disc_grad {
        // The whole unrolled sampler stays in the graph.
        DiscGrad::Exact => (batch + disc * t) * TRAINING_FACTOR * act,
        // One evaluation of each term, plus the states of a fresh trajectory.
        DiscGrad::Paper => (batch + disc) * TRAINING_FACTOR * act + disc * t * 4 * d,
    };
    let pool = c.teacher_pool as u64;
    // x_0, target, labels of the pool, and the chunks the Heun reference runs in.
    let teacher = 3 * pool * 4 * d + 64 * act;
    let cache = if c.traj_refresh > 0 {
        pool * t * 4 * d
    } else {
        0
    };
    // A mixture base draws its own data set.
    let samples = if net.is_none() {
        c.mixture_samples as u64 * 4 * d
    } else {
        0
    };
    state
        .saturating_add(stage1.max(stage2))
        .saturating_add(teacher)
        .saturating_add(cache)
        .saturating_add(samples)
}

/// Refuses a run that would need more than `limit` (with `data_bytes` already in memory),
/// and otherwise says on stderr what it will take.
pub fn check(need: u64, data_bytes: u64, limit: u64) -> Result<()> {
    let total = need.saturating_add(data_bytes);
    if total > limit {
        bail!(
            "this run needs about {} ({} for the data), more than --max-memory {}; lower \
             --batch/--disc-batch/--teacher-pool, use a smaller network, or raise --max-memory",
            human_size(total),
            human_size(data_bytes),
            human_size(limit)
        );
    }
    eprintln!(
        "memory: about {} of the --max-memory {}",
        human_size(total),
        human_size(limit)
    );
    Ok(())
}
