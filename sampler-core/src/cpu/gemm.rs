//! The matrix product and the per-thread buffers every CPU kernel here stands on: gemm's
//! f32 product with its parallelism chosen by size, images split over threads in contiguous
//! chunks, and a reusable scratch buffer for unfolded (im2col) images.

use alloc::vec;
use alloc::vec::Vec;
use rayon::prelude::*;

/// `[start, end)` image ranges, one per worker thread.
pub(crate) fn chunks(batch: usize) -> Vec<(usize, usize)> {
    let n = rayon::current_num_threads().clamp(1, batch.max(1));
    let per = batch.div_ceil(n);
    (0..n)
        .map(|i| (i * per, ((i + 1) * per).min(batch)))
        .filter(|(a, b)| a < b)
        .collect()
}

/// `n` zeros, written by all threads: one thread zeroing a step's activations before the
/// parallel kernels overwrite them was a twentieth of a training step.
pub(crate) fn par_zeroed(n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.spare_capacity_mut()
        .par_chunks_mut(1 << 15)
        .for_each(|c| c.fill(core::mem::MaybeUninit::new(0.0)));
    // SAFETY: all n values were initialized just above.
    unsafe { v.set_len(n) };
    v
}

/// Whether one product is worth gemm's own threads (only used when the batch is not split).
pub(crate) fn parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    if rayon::current_num_threads() > 1 && m * n * k >= 1 << 21 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// A matrix in a slice: element `(i, j)` at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

/// `dst (+)= scale * lhs . rhs` for `dst` `[m, n]` in `dst` (row-major, or column-major when
/// `dst_col_major`), `lhs` `[m, k]`, `rhs` `[k, n]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    dst: &mut [f32],
    dst_col_major: bool,
    accumulate: bool,
    scale: f32,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    (m, n, k): (usize, usize, usize),
    par: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |mat: Mat<'_>, rows: usize, cols: usize| {
        (rows.max(1) - 1) * mat.rs + (cols.max(1) - 1) * mat.cs
    };
    assert!(dst.len() >= m * n, "matmul: destination too small");
    assert!(
        k == 0 || (last(lhs, m, k) < lhs.data.len() && last(rhs, k, n) < rhs.data.len()),
        "matmul: operand out of bounds"
    );
    let (dst_rs, dst_cs) = if dst_col_major { (1, m) } else { (n, 1) };
    // SAFETY: every index gemm touches, `i * rs + j * cs` for i, j below the dimensions, is
    // in bounds by the asserts above; `dst` is exclusively borrowed and does not alias the
    // operands (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

std::thread_local! {
    /// Per-thread unfolding buffer, reused across calls: reallocating (and faulting in) a
    /// megabyte per convolution cost more than the copy into it.
    static SCRATCH: core::cell::RefCell<Vec<f32>> = const { core::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer grown to at least `len` values (contents
/// unspecified: callers overwrite what they read).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (rayon work-stealing inside f): a buffer of its own.
        Err(_) => f(&mut vec![0.0; len]),
    })
}
