"""Bundled real data (no network), a seeded simulator of the model's own generative process and
a DE simulator built on real data."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

__all__ = ["data_path", "pbmc3k", "pbmc_3chemistries", "simulate", "simulate_de"]

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


# --------------------------------------------------------------------------- DE simulation
#: a DE gene's base expected count at the median library size must reach this (up genes) ...
_DE_MIN_COUNT_UP = 0.2
#: ... or this (down genes: a fourfold decrease still leaves about 0.1 UMI per cell)
_DE_MIN_COUNT_DOWN = 0.5
#: no gene that takes more than this share of the counts is made DE (MALAT1, ribosomal genes)
_DE_MAX_PROPORTION = 0.005
#: NB inverse dispersions estimated by the method of moments are clipped to this range
_THETA_RANGE = (0.5, 100.0)


def _counts_of(source: AnnData) -> sp.csr_matrix:
    """``layers["counts"]`` (or ``X``) of ``source`` as CSR float64, checked to be counts."""
    counts = source.layers["counts"] if "counts" in source.layers else source.X
    counts = sp.csr_matrix(counts, dtype=np.float64)
    data = counts.data
    if data.size and (not np.all(np.isfinite(data)) or data.min() < 0):
        raise ValueError("source must hold non-negative finite counts (X or layers['counts']).")
    if data.size and not np.array_equal(data, np.round(data)):
        raise ValueError(
            "source must hold raw integer counts (X or layers['counts']), not normalized values."
        )
    return counts


def _moment_thetas(counts: sp.csr_matrix, totals: np.ndarray, proportions: np.ndarray):
    """NB inverse dispersions by the method of moments, library sizes accounted for.

    With ``mu_ng = l_n p_g`` and ``Var x_ng = mu_ng + mu_ng^2 / theta_g``:
    ``theta_g = sum_n mu_ng^2 / sum_n ((x_ng - mu_ng)^2 - mu_ng)``, clipped to
    ``_THETA_RANGE`` (a gene with no excess variance gets the upper end).
    """
    mu2 = (totals**2).sum() * proportions**2  # (G,) sum_n mu_ng^2
    x2 = np.asarray(counts.multiply(counts).sum(axis=0)).ravel()  # (G,) sum_n x_ng^2
    xl = np.asarray(counts.T @ totals).ravel()  # (G,) sum_n x_ng l_n
    mu1 = totals.sum() * proportions  # (G,) sum_n mu_ng
    excess = x2 - 2.0 * proportions * xl + mu2 - mu1  # (G,) sum_n (x - mu)^2 - mu
    lo, hi = _THETA_RANGE
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = np.where(excess > 0, mu2 / excess, hi)
    return np.clip(theta, lo, hi)


def _largest_remainder(n: int, weights: np.ndarray) -> np.ndarray:
    """Integers summing to ``n`` proportional to ``weights`` (largest-remainder rounding)."""
    exact = n * weights / weights.sum()
    out = np.floor(exact).astype(np.int64)
    out[np.argsort(-(exact - out), kind="stable")[: n - out.sum()]] += 1
    return out


def _down_scale(down_mass: np.ndarray, magnitudes: np.ndarray, up_mass: float) -> float:
    """The ``c`` with ``sum_j down_mass_j (1 - 2^(-c m_j)) = up_mass``, by bisection."""

    def lost(c: float) -> float:
        return float((down_mass * (1.0 - 2.0 ** (-c * magnitudes))).sum())

    lo, hi = 0.0, 1.0
    while lost(hi) < up_mass:
        hi *= 2.0
        if hi > 64.0:
            raise ValueError(
                "cannot balance the up-regulated mass of a group with its down-regulated genes; "
                "lower de_fraction or lfc_range, or use more genes."
            )
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if lost(mid) < up_mass:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return 0.5 * (lo + hi)


def simulate_de(
    source: AnnData | None = None,
    *,
    n_cells: int = 4000,
    n_genes: int | None = 2000,
    group_proportions: tuple[float, ...] = (0.35, 0.25, 0.18, 0.12, 0.10),
    n_batches: int = 2,
    batch_effect: float = 0.5,
    de_fraction: float = 0.05,
    lfc_range: tuple[float, float] = (0.6, 2.0),
    seed: int = 0,
) -> AnnData:
    r"""Simulate groups of cells with known differentially expressed genes, from real data.

    The gene-level parameters come from the real counts of ``source``; the groups, batches and
    DE genes are drawn with known values, so that a DE method's calls and fold changes can be
    checked against the truth.

    Generative process (``G`` genes, ``K`` groups, ``S`` batches):

    1. **Genes and base profile.** Keep the ``n_genes`` genes of ``source`` with the highest
       mean count (all genes if ``n_genes`` is None). With ``t_m`` the total of source cell
       ``m`` over those genes, the base profile is ``rho0_g = sum_m x_mg / sum_m t_m``
       (``sum_g rho0_g = 1``).
    2. **Dispersions.** NB inverse dispersions by the method of moments with the library
       sizes accounted for: with ``mu_mg = t_m rho0_g``,
       ``theta_g = sum_m mu_mg^2 / sum_m ((x_mg - mu_mg)^2 - mu_mg)``, clipped to
       ``[0.5, 100]`` (100 where there is no excess variance). The source's cell-type
       structure inflates these estimates' variance; the floor keeps genes detectable.
    3. **Cells.** The cells are split as evenly as possible over the ``S`` batches. With
       ``r_k = 2k/(K-1) - 1`` and ``b_s = 2s/(S-1) - 1`` (both in ``[-1, 1]``; ``b = 0`` for
       one batch), batch ``s`` has groups in proportions
       ``pi_{s,k} ∝ pi_k 2^(b_s r_k)`` (``pi = group_proportions``, normalized), rounded to
       whole cells by largest remainders: with two batches the first group is weighted by 2
       in ``batch0`` and by 1/2 in ``batch1``, the last group the other way round (the
       default makes ``g0`` 2.6 times as frequent in ``batch0`` as in ``batch1``), so batch
       and group are partly confounded.
    4. **DE genes.** Each group ``k`` gets ``D = round(de_fraction * G)`` DE genes, disjoint
       from every other group's: ``floor(D/2)`` down and ``ceil(D/2)`` up. Only genes with
       ``rho0_g <= 0.5 %`` whose base expected count at the median library size,
       ``median(t) rho0_g``, is at least 0.2 (up genes) or 0.5 (down genes) can be DE, so
       that every DE gene is expressed enough to be detected. The down genes are drawn at
       random among those still free; the magnitudes ``|LFC|`` of every DE gene are
       ``U(lfc_range)``; the up genes are then chosen, one per down gene, as the free gene
       whose ``rho0`` is closest (in log) to the value that makes the pair's gained and lost
       proportions equal, ``rho0_d (1 - 2^-m_d) / (2^m_u - 1)``: down genes are therefore
       more highly expressed than up genes, as composition requires.
    5. **Balance.** Group ``k``'s profile is ``rho_{k,g} = rho0_g 2^(LFC_{k,g})`` with
       ``LFC_{k,g} = m_g`` for up genes, ``-c_k m_g`` for down genes and 0 otherwise, where
       the scale ``c_k`` (close to 1) is found by bisection so that the lost mass equals the
       gained mass: ``sum_g rho_{k,g} = 1`` with no renormalization, and the non-DE genes
       have exactly the base proportions in every group (zero log fold change in normalized
       expression). ``var["lfc_<group>"]`` is this ``LFC_{k,g}``.
    6. **Batch effects.** ``beta_{s,g} ~ N(0, batch_effect^2)``;
       ``rho_{k,s,g} = rho_{k,g} exp(beta_{s,g}) / Z_{k,s}`` with
       ``Z_{k,s} = sum_g rho_{k,g} exp(beta_{s,g})``. Within a batch the non-DE genes of two
       groups then differ by the common factor ``Z_{j,s} / Z_{k,s}`` (recorded, in log2, in
       ``uns["simulation"]["batch_log2_normalization"]``; a few hundredths).
    7. **Counts.** Library sizes ``l_n`` are drawn with replacement from the source totals
       ``t``; ``x_ng ~ NB(mean l_n rho_{k_n,s_n,g}, inverse dispersion theta_g)``, drawn as
       ``Poisson(Gamma(theta_g, rate theta_g / mean))``. A cell drawn without any count gets
       one count on a random gene.

    Parameters
    ----------
    source
        Real cells with raw counts in ``layers["counts"]`` or ``X``; default
        :func:`pbmc3k`.
    n_cells
        Cells to simulate.
    n_genes
        Genes to keep (those of highest mean count in ``source``); None keeps every gene.
    group_proportions
        Relative group sizes (at least two groups; normalized to sum to 1). The groups are
        named ``g0``, ``g1``, ...
    n_batches
        Batches, named ``batch0``, ``batch1``, ...
    batch_effect
        Standard deviation of the gene-wise log batch effects ``beta_{s,g}``.
    de_fraction
        Fraction of the genes that each group has as its own DE genes (at least 2 genes).
    lfc_range
        ``(low, high)`` range of the absolute log2 fold changes (before the down scale
        ``c_k``), ``0 < low <= high``.
    seed
        Seed of every draw.

    Returns
    -------
    AnnData
        Counts (CSR float32) in ``X`` and ``layers["counts"]``; ``obs["group"]`` and
        ``obs["batch"]`` (categorical strings); for each group ``k``: ``var["de_<k>"]``
        (bool, the group's DE genes) and ``var["lfc_<k>"]`` (true log2 fold change of the
        group's profile against the base profile); ``var["base_proportion"]`` (``rho0``) and
        ``var["theta"]``; ``uns["simulation"]``: the arguments, the group proportions per
        batch, the batch effects, the down scales ``c_k``, the thresholds and the source's
        shape.

    Raises
    ------
    TypeError
        ``source`` is not an AnnData.
    ValueError
        An argument out of range, a source without raw counts, or too few expressed genes for
        the requested DE genes.

    Examples
    --------
    >>> import scvae
    >>> adata = scvae.datasets.simulate_de(n_cells=500, n_genes=500, seed=1)  # doctest: +SKIP
    >>> int(adata.var["de_g0"].sum())  # doctest: +SKIP
    25
    """
    if source is None:
        source = pbmc3k()
    if not isinstance(source, AnnData):
        raise TypeError(f"source must be an AnnData or None, got {type(source).__name__}.")
    pi = np.asarray(group_proportions, dtype=np.float64)
    if pi.ndim != 1 or pi.size < 2 or not np.all(np.isfinite(pi)) or np.any(pi <= 0):
        raise ValueError(
            f"group_proportions must hold at least two positive numbers, got {group_proportions!r}."
        )
    n_groups = pi.size
    pi = pi / pi.sum()
    if int(n_batches) != n_batches or n_batches < 1:
        raise ValueError(f"n_batches must be a positive integer, got {n_batches!r}.")
    n_batches = int(n_batches)
    if int(n_cells) != n_cells or n_cells < 2 * n_groups * n_batches:
        raise ValueError(
            f"n_cells must be an integer of at least 2 * groups * batches = "
            f"{2 * n_groups * n_batches}, got {n_cells!r}."
        )
    n_cells = int(n_cells)
    if not np.isfinite(batch_effect) or batch_effect < 0:
        raise ValueError(f"batch_effect must be a non-negative number, got {batch_effect!r}.")
    if len(lfc_range) != 2 or not (0 < lfc_range[0] <= lfc_range[1] < np.inf):
        raise ValueError(f"lfc_range must be (low, high) with 0 < low <= high, got {lfc_range!r}.")
    if not (0 < de_fraction < 1.0 / n_groups):
        raise ValueError(
            f"de_fraction must be in (0, 1 / groups) = (0, {1.0 / n_groups:.3g}), "
            f"got {de_fraction!r}."
        )
    counts = _counts_of(source)
    if n_genes is None:
        n_genes = source.n_vars
    if int(n_genes) != n_genes or not (2 <= n_genes <= source.n_vars):
        raise ValueError(
            f"n_genes must be an integer from 2 to the source's {source.n_vars} genes (or None), "
            f"got {n_genes!r}."
        )
    n_genes = int(n_genes)
    n_de = round(de_fraction * n_genes)
    if n_de < 2:
        raise ValueError(
            f"de_fraction * n_genes = {de_fraction * n_genes:.3g} rounds to fewer than 2 DE genes "
            "per group; raise de_fraction or n_genes."
        )
    n_down, n_up = n_de // 2, n_de - n_de // 2
    rng = np.random.default_rng(seed)

    # 1-2: genes, base profile, dispersions
    means = np.asarray(counts.mean(axis=0)).ravel()  # (G_source,)
    genes = np.sort(np.argsort(-means, kind="stable")[:n_genes])  # (G,) source positions
    counts = counts[:, genes]
    totals = np.asarray(counts.sum(axis=1)).ravel()  # (M,)
    totals = totals[totals > 0]
    if totals.size == 0:
        raise ValueError("source has no counts on the selected genes.")
    counts = counts[np.asarray(counts.sum(axis=1)).ravel() > 0]
    rho0 = np.asarray(counts.sum(axis=0)).ravel() / totals.sum()  # (G,)
    theta = _moment_thetas(counts, totals, rho0)  # (G,)

    # 4-5: DE genes, fold changes, balance
    expected = np.median(totals) * rho0  # (G,) base expected count at the median library
    can_up = (expected >= _DE_MIN_COUNT_UP) & (rho0 <= _DE_MAX_PROPORTION)  # (G,)
    can_down = (expected >= _DE_MIN_COUNT_DOWN) & (rho0 <= _DE_MAX_PROPORTION)  # (G,)
    if can_down.sum() < n_groups * n_down or can_up.sum() < n_groups * n_de:
        raise ValueError(
            f"{n_groups} groups x {n_de} DE genes need {n_groups * n_down} genes with a base "
            f"expected count >= {_DE_MIN_COUNT_DOWN} at the median library size "
            f"({int(can_down.sum())} have it) and {n_groups * n_de} with >= {_DE_MIN_COUNT_UP} "
            f"({int(can_up.sum())} have it); lower de_fraction or use a deeper source."
        )
    free = np.ones(n_genes, dtype=bool)  # (G,) not yet DE in any group
    log_rho0 = np.log(rho0, where=rho0 > 0, out=np.full(n_genes, -np.inf))
    lfc = np.zeros((n_groups, n_genes))  # (K, G)
    down_scales = np.zeros(n_groups)
    for k in range(n_groups):
        down = rng.choice(np.flatnonzero(free & can_down), size=n_down, replace=False)
        free[down] = False
        m_down = rng.uniform(*lfc_range, size=n_down)  # (D_down,)
        m_up = rng.uniform(*lfc_range, size=n_up)  # (D_up,)
        partner = np.resize(np.arange(n_down), n_up)  # an odd up gene pairs with down gene 0
        target = rho0[down[partner]] * (1.0 - 2.0 ** -m_down[partner]) / (2.0**m_up - 1.0)
        up = np.empty(n_up, dtype=np.int64)
        for i in np.argsort(-target, kind="stable"):  # the largest targets choose first
            candidates = np.flatnonzero(free & can_up)
            up[i] = candidates[np.argmin(np.abs(log_rho0[candidates] - np.log(target[i])))]
            free[up[i]] = False
        gained = float((rho0[up] * (2.0**m_up - 1.0)).sum())
        c = _down_scale(rho0[down], m_down, gained)
        lfc[k, up] = m_up
        lfc[k, down] = -c * m_down
        down_scales[k] = c
    rho = rho0[None, :] * 2.0**lfc  # (K, G); exactly rho0 where lfc == 0

    # 3: cells per batch and group
    per_batch = _largest_remainder(n_cells, np.ones(n_batches))  # (S,)
    r = np.linspace(-1.0, 1.0, n_groups)  # (K,)
    b = np.linspace(-1.0, 1.0, n_batches) if n_batches > 1 else np.zeros(1)  # (S,)
    pi_sk = pi[None, :] * 2.0 ** (b[:, None] * r[None, :])  # (S, K)
    pi_sk /= pi_sk.sum(axis=1, keepdims=True)
    n_sk = np.stack([_largest_remainder(int(n), pi_sk[s]) for s, n in enumerate(per_batch)])
    batch = np.repeat(np.arange(n_batches), per_batch)  # (N,)
    group = np.concatenate([np.repeat(np.arange(n_groups), n_sk[s]) for s in range(n_batches)])
    order = rng.permutation(n_cells)
    batch, group = batch[order], group[order]

    # 6: batch effects
    beta = rng.normal(0.0, batch_effect, size=(n_batches, n_genes))  # (S, G)
    rho_ksg = rho[:, None, :] * np.exp(beta)[None, :, :]  # (K, S, G)
    z_ks = rho_ksg.sum(axis=2)  # (K, S)
    rho_ksg /= z_ks[:, :, None]

    # 7: counts
    library = rng.choice(totals, size=n_cells, replace=True)  # (N,)
    mu = library[:, None] * rho_ksg[group, batch]  # (N, G)
    x = rng.poisson(rng.gamma(shape=theta[None, :], scale=mu / theta[None, :]))  # (N, G)
    empty = x.sum(axis=1) == 0
    x[empty, rng.integers(n_genes, size=int(empty.sum()))] = 1

    names = [f"g{k}" for k in range(n_groups)]
    x_csr = sp.csr_matrix(x.astype(np.float32))
    obs = pd.DataFrame(
        {
            "group": pd.Categorical([names[k] for k in group], categories=names),
            "batch": pd.Categorical(
                [f"batch{s}" for s in batch], categories=[f"batch{s}" for s in range(n_batches)]
            ),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=pd.Index(np.asarray(source.var_names)[genes].astype(str)))
    var["base_proportion"] = rho0
    var["theta"] = theta
    for k, name in enumerate(names):
        var[f"de_{name}"] = lfc[k] != 0
        var[f"lfc_{name}"] = lfc[k]
    adata = AnnData(X=x_csr, obs=obs, var=var)
    adata.layers["counts"] = x_csr.copy()
    adata.uns["simulation"] = {
        "generator": "scvae.datasets.simulate_de",
        "seed": int(seed),
        "n_cells": n_cells,
        "n_genes": n_genes,
        "groups": np.asarray(names),
        "group_proportions": pi,
        "group_proportions_per_batch": pi_sk,
        "cells_per_batch_and_group": n_sk,
        "n_batches": n_batches,
        "batch_effect": float(batch_effect),
        "batch_effects": beta,
        "batch_log2_normalization": -np.log2(z_ks),
        "de_fraction": float(de_fraction),
        "n_de_per_group": int(n_de),
        "lfc_range": np.asarray(lfc_range, dtype=np.float64),
        "down_scales": down_scales,
        "min_expected_count_up": _DE_MIN_COUNT_UP,
        "min_expected_count_down": _DE_MIN_COUNT_DOWN,
        "max_base_proportion": _DE_MAX_PROPORTION,
        "theta_range": np.asarray(_THETA_RANGE),
        "median_library": float(np.median(totals)),
        "source_shape": np.asarray(source.shape),
    }
    return adata
