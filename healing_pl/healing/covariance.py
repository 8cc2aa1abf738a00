"""Covariance estimates with shrinkage, and the whitening matrix of a covariance.

Used by the Mahalanobis metrics: :mod:`healing_pl.healing.search` whitens with
:func:`whitening_matrix` (and estimates a missing covariance with
:func:`ledoit_wolf_covariance`), :mod:`healing_pl.healing.metrics._mahalanobis`
picks the estimator per metric.  This module imports neither of them.

With 784 pixels and a few hundred candidates the sample covariance is singular,
so it is shrunk towards a scaled identity: Ledoit-Wolf (the formula of
``sklearn.covariance.ledoit_wolf``) or a fixed shrinkage
(``sklearn.covariance.shrunk_covariance``).

Everything is computed in float64 on the device of its input (numpy goes to
the CPU); the input is read in row blocks, never copied whole to float64.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["ArrayLike", "ledoit_wolf_covariance", "shrunk_covariance", "whitening_matrix"]

ArrayLike = torch.Tensor | np.ndarray

#: Bytes of one float64 row block while accumulating a covariance.
_BLOCK_BYTES = 16 * 2**20


def _scatter(x: ArrayLike) -> tuple[torch.Tensor, int, torch.Tensor]:
    """``(X_c^T X_c, n, sum_i |x_c_i|^4)`` in float64, ``X_c`` the rows of ``x`` centred on their mean."""
    t = torch.as_tensor(x).detach()
    if t.ndim != 2 or t.shape[0] < 2:
        raise ValueError(f"a covariance needs a 2-D array of at least 2 rows, got shape {tuple(t.shape)}.")
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"vectors for the covariance must hold real numbers, got dtype {t.dtype}.")
    n, p = t.shape
    step = max(1, _BLOCK_BYTES // (8 * p))
    f64 = torch.float64
    mean = torch.zeros(p, dtype=f64, device=t.device)
    for r0 in range(0, n, step):
        block = t[r0 : r0 + step]
        if not bool(torch.isfinite(block).all()):
            raise ValueError("vectors for the covariance contain NaN or infinite values.")
        mean += block.sum(0, dtype=f64)
    mean /= n
    scatter = torch.zeros(p, p, dtype=f64, device=t.device)
    fourth = torch.zeros((), dtype=f64, device=t.device)  # sum_i ||x_i - mean||^4
    for r0 in range(0, n, step):
        xc = torch.sub(t[r0 : r0 + step], mean)  # a new float64 block: never writes into x
        scatter.addmm_(xc.t(), xc)
        fourth += xc.square_().sum(1).square_().sum()
    return scatter, n, fourth


def _shrink(emp: torch.Tensor, shrinkage: float) -> torch.Tensor:
    mu = float(torch.trace(emp)) / emp.shape[0]
    if mu <= 0.0:
        raise ValueError("all vectors are identical, so their covariance (and the Mahalanobis distance) is undefined.")
    cov = emp * (1.0 - shrinkage)
    cov.diagonal().add_(shrinkage * mu)
    return cov


def ledoit_wolf_covariance(x: ArrayLike, *, return_shrinkage: bool = False):
    """Ledoit-Wolf shrunk covariance of the rows of ``x`` (float64, ``(D, D)``, on the device of ``x``).

    Same formula as ``sklearn.covariance.ledoit_wolf`` (rows centred, empirical
    covariance with ``1/n``): ``(1 - s) S + s mu I`` with ``mu = trace(S)/D``
    and the optimal ``s``.  Positive definite whenever ``s > 0``, which is the
    case for ``n < D``.  With ``return_shrinkage=True`` returns ``(cov, s)``.
    """
    scatter, n, fourth = _scatter(x)
    p = scatter.shape[0]
    emp = scatter.div_(n)
    mu = float(torch.trace(emp)) / p
    delta_ = float((emp * emp).sum())  # ||S||_F^2
    beta_ = float(fourth)  # sum_i ||x_i||^4 = sum(X2^T X2)
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - p * mu * mu) / p  # ||S - mu I||_F^2 / p
    s = 0.0 if delta <= 0.0 else min(max(beta / delta, 0.0), 1.0)
    cov = _shrink(emp, s)
    return (cov, s) if return_shrinkage else cov


def shrunk_covariance(x: ArrayLike, shrinkage: float) -> torch.Tensor:
    """``(1 - shrinkage) S + shrinkage * mu I`` of the rows of ``x``, fixed ``shrinkage`` in ``(0, 1]``."""
    if not 0.0 < float(shrinkage) <= 1.0:
        raise ValueError(f"shrinkage must be in (0, 1], got {shrinkage}.")
    scatter, n, _ = _scatter(x)
    return _shrink(scatter.div_(n), float(shrinkage))


def whitening_matrix(covariance: ArrayLike, dim: int | None = None) -> torch.Tensor:
    """Return ``W`` (float64, lower triangular, on the device of ``covariance``) with ``W^T W = covariance^-1``.

    ``W = L^-1`` where ``covariance = L L^T`` is the Cholesky factorisation, so
    ``||W (x - y)||`` is the Mahalanobis distance between column vectors ``x``
    and ``y`` (for row vectors, ``x @ W.T``).

    Raises:
        ValueError: if the matrix is not square (of size ``dim``), not finite,
            not symmetric or not positive definite.
    """
    cov = torch.as_tensor(covariance).detach().to(dtype=torch.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"covariance must be a square matrix, got shape {tuple(cov.shape)}.")
    if dim is not None and cov.shape[0] != dim:
        raise ValueError(f"covariance is {cov.shape[0]}x{cov.shape[0]} but the vectors have {dim} dimensions.")
    if not bool(torch.isfinite(cov).all()):
        raise ValueError("covariance contains NaN or infinite values.")
    scale = float(cov.abs().max()) or 1.0
    if not torch.allclose(cov, cov.t(), rtol=1e-6, atol=1e-9 * scale):
        raise ValueError("covariance must be symmetric.")
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0:
        raise ValueError(
            "covariance is not positive definite; use a shrinkage estimate "
            "(ledoit_wolf_covariance or shrunk_covariance)."
        )
    eye = torch.eye(cov.shape[0], dtype=torch.float64, device=cov.device)
    return torch.linalg.solve_triangular(chol, eye, upper=False)
