"""Bundled real data (no network) and a seeded simulator of the model's own generative process."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

__all__ = ["data_path", "pbmc3k", "pbmc_3chemistries", "simulate"]

_PBMC3K = "pbmc3k_raw_annotated.h5ad"
_PBMC_3CHEMISTRIES = "pbmc_3chemistries_small.h5ad"


def data_path(filename: str) -> Path:
    """Locate a bundled data file.

    Looks in ``$SCVAE_DATA_DIR``, then inside the installed package (``scvae/_data``), then in
    the source tree's ``data/`` folder.

    Raises
    ------
    FileNotFoundError
        With the places searched.
    """
    here = Path(__file__).resolve().parent
    candidates = [here / "_data" / filename, here.parent / "data" / filename]
    if os.environ.get("SCVAE_DATA_DIR"):
        candidates.insert(0, Path(os.environ["SCVAE_DATA_DIR"]) / filename)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"Bundled file {filename} not found (searched {searched}). Reinstall scvae, or set "
        "SCVAE_DATA_DIR to the folder that holds it."
    )


def pbmc3k() -> AnnData:
    """10x PBMC 3k: 2,638 cells x 16,579 genes of raw UMI counts with published cell types.

    Loaded from the copy shipped with the package; nothing is downloaded. ``X`` holds raw
    counts (CSR, float32); ``obs["cell_type"]`` the Seurat tutorial's 9 labels;
    ``obs["batch"]`` a single batch ``"pbmc3k"``; ``uns["provenance"]`` the sources
    (10x Genomics, CC BY 4.0; Zheng et al. 2017).

    Returns
    -------
    AnnData
        A fresh object on every call.
    """
    return ad.read_h5ad(data_path(_PBMC3K))


pbmc = pbmc3k


def pbmc_3chemistries() -> AnnData:
    """PBMCs from three 10x chemistries: 1,200 cells x 1,767 genes, 3 batches, 9 cell types.

    A tiny batch-correction data set, loaded from the copy shipped with the package (nothing
    is downloaded): the Symphony package's subsample of the 10x PBMC data sets sequenced with
    the 3' v1, 3' v2 and 5' chemistries (10x Genomics, CC BY 4.0; cell types from Kang et al.
    2021, *Nat Commun* 12:5890; the three batches of the Harmony paper). ``X`` holds raw UMI
    counts (CSR, float32) of 1,767 variable genes only, a median 27 % of each cell's UMIs;
    ``obs["total_counts_all_genes"]`` has the library size over all genes.
    ``obs["batch"]``: ``"3pv1"`` (290 cells), ``"3pv2"`` (480), ``"5p"`` (430);
    ``obs["cell_type"]``: T_CD4, Mono_CD14, T_CD8, B, Mono_CD16, NK, DC, MK, HSC;
    ``uns["provenance"]`` the sources.

    Returns
    -------
    AnnData
        A fresh object on every call.
    """
    return ad.read_h5ad(data_path(_PBMC_3CHEMISTRIES))


def _softmax(a: np.ndarray) -> np.ndarray:
    a = a - a.max(axis=1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=1, keepdims=True)


def _draw_poisson(rng: np.random.Generator, mu: np.ndarray, theta, zi_logits) -> np.ndarray:
    """``x ~ Poisson(mu)``."""
    return rng.poisson(mu)


def _draw_nb(rng: np.random.Generator, mu: np.ndarray, theta, zi_logits) -> np.ndarray:
    """``w ~ Gamma(theta, rate theta / mu)``, ``x ~ Poisson(w)``."""
    w = rng.gamma(shape=theta, scale=mu / theta)  # (N, G)
    return rng.poisson(w)


def _draw_zinb(rng: np.random.Generator, mu: np.ndarray, theta, zi_logits) -> np.ndarray:
    """An NB draw set to zero where the gate ``h ~ Bernoulli(sigmoid(zi_logits))`` fires."""
    x = _draw_nb(rng, mu, theta, zi_logits)
    gate = rng.random(x.shape) < 1.0 / (1.0 + np.exp(-zi_logits))
    x[gate] = 0
    return x


_DRAWS = {"zinb": _draw_zinb, "nb": _draw_nb, "poisson": _draw_poisson}


def simulate(
    *,
    n_cells: int = 600,
    n_genes: int = 200,
    n_clusters: int = 3,
    n_batches: int = 1,
    n_latent: int = 2,
    likelihood: str = "zinb",
    library_mean: float = 1500.0,
    batch_effect: float = 0.5,
    seed: int = 0,
) -> AnnData:
    """Draw counts from scVI's generative process with known parameters and clusters.

    ``z_n = c_{k_n} + N(0, 0.3^2 I)`` around well-separated cluster centres ``c_k``;
    ``log l_n ~ N(log(library_mean) + shift_s, 0.2^2)``;
    ``rho_n = softmax(W z_n + b + beta_s)`` with a gene-wise batch effect ``beta_s``;
    ``x ~ Poisson(l rho)``, ``NB(l rho, theta_g)`` or ``ZINB(l rho, theta_g, pi_g)``.

    Parameters
    ----------
    n_cells, n_genes, n_clusters, n_batches, n_latent
        Sizes.
    likelihood
        ``"zinb"``, ``"nb"`` or ``"poisson"``.
    library_mean
        Typical total count per cell.
    batch_effect
        Standard deviation of the gene-wise log-scale batch shifts ``beta_s``.
    seed
        Seed of every draw.

    Returns
    -------
    AnnData
        Counts in ``X`` (CSR float32) and ``layers["counts"]``; ``obs["cluster"]``,
        ``obs["batch"]`` (categorical strings); the true latent in ``obsm["X_true_latent"]``;
        the true parameters (``theta``, ``zi_logits``, cluster ``centres``) in
        ``uns["simulation"]``.
    """
    if likelihood not in _DRAWS:
        raise ValueError(f"likelihood={likelihood!r} is not one of 'zinb', 'nb', 'poisson'.")
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 2.5, size=(n_clusters, n_latent))  # (K, L)
    cluster = rng.integers(n_clusters, size=n_cells)  # (N,)
    batch = rng.integers(n_batches, size=n_cells)  # (N,)
    z = centres[cluster] + rng.normal(0.0, 0.3, size=(n_cells, n_latent))  # (N, L)
    W = rng.normal(0.0, 1.0, size=(n_latent, n_genes))  # (L, G)
    b = rng.normal(0.0, 1.0, size=n_genes)  # (G,)
    beta = rng.normal(0.0, batch_effect, size=(n_batches, n_genes))  # (S, G)
    library_shift = rng.normal(0.0, 0.3, size=n_batches)  # (S,)
    log_l = rng.normal(np.log(library_mean) + library_shift[batch], 0.2)  # (N,)
    rho = _softmax(z @ W + b + beta[batch])  # (N, G)
    mu = np.exp(log_l)[:, None] * rho  # (N, G)
    theta = np.exp(rng.normal(np.log(5.0), 0.5, size=n_genes))  # (G,)
    zi_logits = rng.normal(-2.0, 0.5, size=n_genes)  # (G,)
    x = _DRAWS[likelihood](rng, mu, theta, zi_logits)  # (N, G)
    # keep every cell non-empty (a draw of all zeros is possible for tiny libraries)
    empty = x.sum(axis=1) == 0
    x[empty, rng.integers(n_genes, size=int(empty.sum()))] = 1
    counts = sp.csr_matrix(x.astype(np.float32))
    obs = pd.DataFrame(
        {
            "cluster": pd.Categorical([str(k) for k in cluster]),
            "batch": pd.Categorical([f"batch{s}" for s in batch]),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    adata = AnnData(X=counts, obs=obs, var=pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)]))
    adata.layers["counts"] = counts.copy()
    adata.obsm["X_true_latent"] = z.astype(np.float32)
    adata.uns["simulation"] = {
        "likelihood": likelihood,
        "theta": theta,
        "zi_logits": zi_logits,
        "centres": centres,
        "library_mean": library_mean,
        "seed": seed,
    }
    return adata
