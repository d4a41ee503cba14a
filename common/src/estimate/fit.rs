//! A robust linear fit on a handful of columns: ridge-regularised least squares, reweighted
//! with Huber's weights so that a few odd trials (a host that swapped, a tool that hung until
//! its limit) do not drag the line.
//!
//! The system is at most a dozen unknowns, solved by Cholesky on its normal equations: a
//! linear-algebra crate would add a dozen crates to the build for this one solve.

// Index loops read plainest in the matrix code below.
#![allow(clippy::needless_range_loop)]

use serde::{Deserialize, Serialize};

/// Huber's tuning constant (95 % efficiency under normal errors).
const HUBER_K: f64 = 1.345;
/// Reweighting rounds.
const ROUNDS: usize = 8;
/// Ridge penalty on the standardised columns: a fixed prior of one row's weight plus a small
/// share per row. It keeps a column seen in few rows (a part family tried twice) near zero
/// instead of fitting those rows exactly, and barely bends a column seen in many.
const RIDGE_PRIOR: f64 = 1.0;
const RIDGE_PER_ROW: f64 = 0.002;

/// A fitted line `y ≈ b0 + Σ b_j (x_j − mean_j) / scale_j`, with the robust spread of its
/// residuals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    intercept: f64,
    coefficients: Vec<f64>,
    mean: Vec<f64>,
    scale: Vec<f64>,
    /// Robust standard deviation of the residuals (1.4826 × their median absolute value),
    /// widened for the number of unknowns.
    pub sigma: f64,
    /// Rows it was fitted on.
    pub n: usize,
}

impl Fit {
    /// Fits `ys` on `rows` (each row the same length). None for fewer than two rows.
    pub fn robust(rows: &[Vec<f64>], ys: &[f64]) -> Option<Fit> {
        let n = rows.len().min(ys.len());
        if n < 2 {
            return None;
        }
        let p = rows[0].len();
        let mut mean = vec![0.0; p];
        let mut scale = vec![0.0; p];
        for row in &rows[..n] {
            for (j, x) in row.iter().enumerate().take(p) {
                mean[j] += x / n as f64;
            }
        }
        for row in &rows[..n] {
            for (j, x) in row.iter().enumerate().take(p) {
                scale[j] += (x - mean[j]).powi(2) / n as f64;
            }
        }
        for s in &mut scale {
            *s = s.sqrt();
        }
        // Standardised columns; a constant column is left out (its coefficient stays zero).
        let z: Vec<Vec<f64>> = rows[..n]
            .iter()
            .map(|row| {
                (0..p)
                    .map(|j| {
                        if scale[j] > 1e-12 {
                            (row[j] - mean[j]) / scale[j]
                        } else {
                            0.0
                        }
                    })
                    .collect()
            })
            .collect();
        let mut weights = vec![1.0; n];
        let mut beta = vec![0.0; p + 1];
        let mut sigma = 0.0;
        for _ in 0..ROUNDS {
            beta = weighted_ridge(
                &z,
                &ys[..n],
                &weights,
                RIDGE_PRIOR + RIDGE_PER_ROW * n as f64,
            )?;
            let residuals: Vec<f64> = z
                .iter()
                .zip(&ys[..n])
                .map(|(row, y)| y - predict_z(&beta, row))
                .collect();
            let mad = median(residuals.iter().map(|r| r.abs()).collect());
            sigma = 1.4826 * mad;
            let cut = (HUBER_K * sigma).max(1e-9);
            for (w, r) in weights.iter_mut().zip(&residuals) {
                *w = if r.abs() <= cut { 1.0 } else { cut / r.abs() };
            }
        }
        let unknowns = 1 + scale.iter().filter(|s| **s > 1e-12).count();
        let widen = if n > unknowns {
            (n as f64 / (n - unknowns) as f64).sqrt()
        } else {
            2.0
        };
        Some(Fit {
            intercept: beta[0],
            coefficients: beta[1..].to_vec(),
            mean,
            scale,
            sigma: (sigma * widen).max(0.01),
            n,
        })
    }

    /// The fitted value at `row`.
    pub fn predict(&self, row: &[f64]) -> f64 {
        let mut y = self.intercept;
        for (j, b) in self.coefficients.iter().enumerate() {
            let x = row.get(j).copied().unwrap_or(self.mean[j]);
            if self.scale[j] > 1e-12 {
                y += b * (x - self.mean[j]) / self.scale[j];
            }
        }
        y
    }
}

fn predict_z(beta: &[f64], z: &[f64]) -> f64 {
    beta[0] + beta[1..].iter().zip(z).map(|(b, x)| b * x).sum::<f64>()
}

/// Solves `(ZᵀWZ + λI') β = ZᵀWy` with an unpenalised intercept.
fn weighted_ridge(z: &[Vec<f64>], ys: &[f64], w: &[f64], lambda: f64) -> Option<Vec<f64>> {
    let p = z.first().map_or(0, Vec::len) + 1;
    let mut a = vec![vec![0.0; p]; p];
    let mut b = vec![0.0; p];
    for ((row, y), wi) in z.iter().zip(ys).zip(w) {
        let x: Vec<f64> = std::iter::once(1.0).chain(row.iter().copied()).collect();
        for i in 0..p {
            b[i] += wi * x[i] * y;
            for j in 0..=i {
                a[i][j] += wi * x[i] * x[j];
            }
        }
    }
    for (i, row) in a.iter_mut().enumerate().skip(1) {
        row[i] += lambda.max(1e-9);
    }
    for i in 0..p {
        for j in 0..i {
            a[j][i] = a[i][j];
        }
    }
    cholesky_solve(a, b)
}

/// Solves `A x = b` for a symmetric positive-definite `A`.
fn cholesky_solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let p = b.len();
    for j in 0..p {
        let mut d = a[j][j];
        for k in 0..j {
            d -= a[j][k] * a[j][k];
        }
        if d <= 1e-12 {
            return None;
        }
        let d = d.sqrt();
        a[j][j] = d;
        for i in j + 1..p {
            let mut s = a[i][j];
            for k in 0..j {
                s -= a[i][k] * a[j][k];
            }
            a[i][j] = s / d;
        }
    }
    for i in 0..p {
        let mut s = b[i];
        for k in 0..i {
            s -= a[i][k] * b[k];
        }
        b[i] = s / a[i][i];
    }
    for i in (0..p).rev() {
        let mut s = b[i];
        for k in i + 1..p {
            s -= a[k][i] * b[k];
        }
        b[i] = s / a[i][i];
    }
    Some(b)
}

/// The median (0 for none).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn recovers_a_line_despite_outliers() {
        // y = 1 + 2 a − 0.5 b, with every tenth row far off.
        let mut rows = Vec::new();
        let mut ys = Vec::new();
        for i in 0..200 {
            let a = f64::from(i % 17) / 3.0;
            let b = f64::from(i % 7);
            rows.push(vec![a, b, 5.0]);
            let outlier = if i % 10 == 0 { 40.0 } else { 0.0 };
            ys.push(1.0 + 2.0 * a - 0.5 * b + outlier);
        }
        let fit = Fit::robust(&rows, &ys).unwrap();
        let at = fit.predict(&[3.0, 2.0, 5.0]);
        assert!((at - 6.0).abs() < 0.1, "{at}");
        assert!(fit.sigma < 0.5, "{}", fit.sigma);
    }

    #[test]
    fn solves_a_small_system() {
        let x = cholesky_solve(vec![vec![4.0, 2.0], vec![2.0, 3.0]], vec![2.0, 5.0]).unwrap();
        assert!(
            (x[0] + 0.5).abs() < 1e-12 && (x[1] - 2.0).abs() < 1e-12,
            "{x:?}"
        );
        assert!(cholesky_solve(vec![vec![0.0]], vec![1.0]).is_none());
    }
}
