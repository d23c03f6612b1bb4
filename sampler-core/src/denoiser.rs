//! The one interface every solver calls: a denoiser `D(x, s)` (docs/method.md §1), which the
//! preconditioned network (`crate::model`) and the exact Gaussian mixture (`crate::gmm`)
//! both implement. A ground module: it names no other part of the crate, so both the
//! denoisers and the solvers (`crate::solver`) can stand on it.

use alloc::vec;
use burn::tensor::{Device, Tensor, TensorData};

/// A denoiser `D(x, s)`: the network with its preconditioning, or an exact mixture.
pub trait Denoiser {
    /// Dimension `d` of one flattened sample.
    fn dim(&self) -> usize;

    /// The denoised estimate of `x` at noise level `sigma`.
    ///
    /// # Shapes
    /// `x`: `[B, d]`, `sigma`: `[B]`, `labels`: one-hot `[B, L]` -> `[B, d]`.
    fn denoise(&self, x: Tensor<2>, sigma: Tensor<1>, labels: Option<Tensor<2>>) -> Tensor<2>;
}

/// What a solver reports after each denoiser evaluation.
pub struct Step<'a> {
    /// Index `i` of the level just used (0-based).
    pub index: usize,
    /// Number of steps of the solve.
    pub steps: usize,
    /// The state `x_i` the denoiser was evaluated at.
    pub x: &'a Tensor<2>,
    /// `D(x_i, s_i)`.
    pub denoised: &'a Tensor<2>,
}

/// The class-label input of a conditional denoiser, `[B, L]`: row `i` is the one-hot vector
/// of `labels[i]` among `label_count` classes. The one encoding every caller (sampler,
/// trainer, evaluation) feeds the network's label embedding.
///
/// # Panics
/// If a label is `>= label_count` (callers check user-given labels first).
pub fn one_hot(
    labels: impl ExactSizeIterator<Item = usize>,
    label_count: usize,
    device: &Device,
) -> Tensor<2> {
    let rows = labels.len();
    let mut values = vec![0.0f32; rows * label_count];
    for (i, label) in labels.enumerate() {
        assert!(label < label_count, "label {label} of {label_count}");
        values[i * label_count + label] = 1.0;
    }
    Tensor::from_data(TensorData::new(values, [rows, label_count]), device)
}
