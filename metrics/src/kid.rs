//! KID: the unbiased squared maximum mean discrepancy of two feature sets with the cubic
//! polynomial kernel `k(x, y) = (x.y / d + 1)^3` (Binkowski et al. 2018), over the full sets.

use nalgebra::DMatrix;
use rayon::prelude::*;

/// The kernel of KID for feature vectors of `dim` values, given their dot product.
pub fn kernel(dot: f64, dim: usize) -> f64 {
    (dot / dim as f64 + 1.0).powi(3)
}

/// `sum_ij k(a_i, b_j)` over the rows of `a` and `b` (`dim` values each), minus the diagonal
/// terms `k(a_i, a_i)` when `b` is `a` itself (`same`), in f64: rows of `a` in blocks spread
/// over the threads, each block one matrix product with `b`.
pub fn kernel_sum(a: &[f32], b: &[f32], dim: usize, same: bool) -> f64 {
    assert!(dim > 0, "kernel_sum: zero-length vectors");
    let to_mat = |rows: &[f32]| {
        DMatrix::from_row_iterator(rows.len() / dim, dim, rows.iter().map(|&v| v as f64))
    };
    let bt = to_mat(b).transpose();
    let total: f64 = a
        .par_chunks(256 * dim)
        .map(|rows| {
            let prod = to_mat(rows) * &bt;
            prod.iter().map(|&d| kernel(d, dim)).sum::<f64>()
        })
        .sum();
    if !same {
        return total;
    }
    let diag: f64 = a
        .chunks(dim)
        .map(|r| kernel(r.iter().map(|&v| v as f64 * v as f64).sum(), dim))
        .sum();
    total - diag
}

/// The mean of the kernel over distinct pairs of one set of `n >= 2` rows.
pub fn self_mean(a: &[f32], dim: usize) -> f64 {
    let n = (a.len() / dim) as f64;
    kernel_sum(a, a, dim, true) / (n * (n - 1.0))
}

/// The mean of the kernel over all pairs across two sets.
pub fn cross_mean(a: &[f32], b: &[f32], dim: usize) -> f64 {
    let (n, m) = ((a.len() / dim) as f64, (b.len() / dim) as f64);
    kernel_sum(a, b, dim, false) / (n * m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_the_pairwise_definition() {
        let dim = 3;
        let a = [0.5f32, -1.0, 2.0, 0.0, 1.5, 0.25, 3.0, 0.5, -0.5];
        let b = [1.0f32, 1.0, 1.0, -2.0, 0.0, 0.75];
        let rows = |s: &[f32]| -> Vec<Vec<f64>> {
            s.chunks(dim)
                .map(|r| r.iter().map(|&v| v as f64).collect())
                .collect()
        };
        let k = |x: &[f64], y: &[f64]| {
            let dot: f64 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            (dot / 3.0 + 1.0).powi(3)
        };
        let (ra, rb) = (rows(&a), rows(&b));
        let mut cross = 0.0;
        let mut within = 0.0;
        for (i, x) in ra.iter().enumerate() {
            for y in &rb {
                cross += k(x, y);
            }
            for (j, y) in ra.iter().enumerate() {
                if i != j {
                    within += k(x, y);
                }
            }
        }
        assert!((kernel_sum(&a, &b, dim, false) - cross).abs() < 1e-12 * cross);
        assert!((kernel_sum(&a, &a, dim, true) - within).abs() < 1e-12 * within);
        assert!((self_mean(&a, dim) - within / 6.0).abs() < 1e-12 * within);
        assert!((cross_mean(&a, &b, dim) - cross / 6.0).abs() < 1e-12 * cross);
    }
}
