"""k-means++ seeding and Lloyd's k-means: the initialisation of :func:`scvae.module.gmm.fit_gmm`.

Pure functions of dense ``(N, D)`` tensors on any device; the random draws come from a CPU
``torch.Generator`` so that results do not depend on the device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

__all__ = ["assign", "kmeans_plusplus", "lloyd", "row_slices", "squared_distances"]


def row_slices(n_rows: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks of ``chunk_size`` rows covering ``n_rows``."""
    for start in range(0, n_rows, chunk_size):
        yield start, min(n_rows, start + chunk_size)


def squared_distances(X: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """``||x_n - c_j||^2`` ``(n, J)``, clamped at zero."""
    d2 = (
        X.square().sum(dim=1, keepdim=True) - 2.0 * (X @ centers.mT) + centers.square().sum(dim=1)
    )  # (n, J)
    return d2.clamp_min_(0.0)


def kmeans_plusplus(
    X: torch.Tensor, n_components: int, *, generator: torch.Generator
) -> torch.Tensor:
    """Greedy k-means++ seeding (``2 + log K`` candidates per step), centres ``(K, D)``."""
    N = X.shape[0]
    n_local_trials = 2 + int(math.log(n_components))
    first = int(torch.randint(N, (1,), generator=generator))
    centers = [X[first]]
    closest = squared_distances(X, X[first : first + 1]).squeeze(1)  # (N,)
    for _ in range(1, n_components):
        cumulative = torch.cumsum(closest, dim=0)  # (N,)
        potential = cumulative[-1]
        if float(potential) <= 0.0:  # fewer distinct points than clusters: draw uniformly
            candidates = torch.randint(N, (n_local_trials,), generator=generator)
            candidates = candidates.to(X.device)
        else:
            u = torch.rand(n_local_trials, generator=generator, dtype=torch.float64)
            targets = u.to(device=X.device, dtype=X.dtype) * potential  # (trials,)
            candidates = torch.searchsorted(cumulative, targets).clamp_max_(N - 1)  # (trials,)
        candidate_d2 = torch.minimum(
            squared_distances(X, X[candidates]), closest.unsqueeze(1)
        )  # (N, trials)
        best = int(torch.argmin(candidate_d2.sum(dim=0)))
        centers.append(X[candidates[best]])
        closest = candidate_d2[:, best]
    return torch.stack(centers)  # (K, D)


def assign(X: torch.Tensor, centers: torch.Tensor, *, chunk_size: int) -> torch.Tensor:
    """Index of the nearest centre of every cell ``(N,)``."""
    labels = torch.empty(X.shape[0], dtype=torch.long, device=X.device)
    for start, stop in row_slices(X.shape[0], chunk_size):
        labels[start:stop] = squared_distances(X[start:stop], centers).argmin(dim=1)
    return labels


def lloyd(
    X: torch.Tensor,
    n_components: int,
    *,
    generator: torch.Generator,
    max_iter: int,
    chunk_size: int,
) -> torch.Tensor:
    """Lloyd's k-means from a k-means++ seeding; returns hard labels ``(N,)``."""
    centers = kmeans_plusplus(X, n_components, generator=generator)  # (K, D)
    labels = assign(X, centers, chunk_size=chunk_size)  # (N,)
    for _ in range(max_iter):
        sums = torch.zeros_like(centers).index_add_(0, labels, X)  # (K, D)
        counts = torch.bincount(labels, minlength=n_components).to(X.dtype)  # (K,)
        nonempty = counts > 0
        centers = torch.where(
            nonempty.unsqueeze(1), sums / counts.clamp_min(1.0).unsqueeze(1), centers
        )  # (K, D), empty clusters keep their centre
        new_labels = assign(X, centers, chunk_size=chunk_size)
        if bool((new_labels == labels).all()):
            break
        labels = new_labels
    return labels
