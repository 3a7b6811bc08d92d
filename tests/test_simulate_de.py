"""scvae.datasets.simulate_de: sizes, disjoint balanced DE sets, recoverable fold changes."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData

import scvae


@pytest.fixture(scope="module")
def source() -> AnnData:
    return scvae.datasets.pbmc3k()


@pytest.fixture(scope="module")
def de(source: AnnData) -> AnnData:
    return scvae.datasets.simulate_de(source, n_cells=3000, n_genes=1500, seed=3)


def _group_profiles(adata: AnnData) -> np.ndarray:
    """The true (batch-free) group proportion vectors ``rho0 2^lfc``, (K, G)."""
    groups = list(adata.obs["group"].cat.categories)
    rho0 = adata.var["base_proportion"].to_numpy()
    return np.stack([rho0 * 2.0 ** adata.var[f"lfc_{g}"].to_numpy() for g in groups])


def test_sizes_types_and_layout(de: AnnData) -> None:
    assert de.shape == (3000, 1500)
    assert sp.issparse(de.X) and de.X.format == "csr" and de.X.dtype == np.float32
    assert (de.layers["counts"] != de.X).nnz == 0
    assert np.array_equal(de.X.data, np.round(de.X.data)) and de.X.data.min() > 0
    assert np.asarray(de.X.sum(axis=1)).min() > 0
    assert list(de.obs["group"].cat.categories) == ["g0", "g1", "g2", "g3", "g4"]
    assert list(de.obs["batch"].cat.categories) == ["batch0", "batch1"]
    counts = de.obs["group"].value_counts()
    assert counts["g0"] > counts["g1"] > counts["g4"]  # unequal sizes, as asked
    for g in ["g0", "g1", "g2", "g3", "g4"]:
        assert de.var[f"de_{g}"].dtype == bool
        assert de.var[f"de_{g}"].sum() == round(0.05 * 1500)
    sim = de.uns["simulation"]
    assert sim["seed"] == 3 and sim["n_batches"] == 2
    assert np.array_equal(sim["cells_per_batch_and_group"].sum(axis=1), [1500, 1500])


def test_group_composition_differs_between_batches(de: AnnData) -> None:
    table = de.obs.groupby(["batch", "group"], observed=False).size().unstack()
    share = table.div(table.sum(axis=1), axis=0)
    assert share.loc["batch0", "g0"] > 2 * share.loc["batch1", "g0"]
    assert share.loc["batch1", "g4"] > 2 * share.loc["batch0", "g4"]


def test_de_sets_are_disjoint_half_up_half_down_within_range(de: AnnData) -> None:
    masks = np.stack([de.var[f"de_{g}"].to_numpy() for g in de.obs["group"].cat.categories])
    assert masks.sum(axis=0).max() == 1
    sim = de.uns["simulation"]
    for k, g in enumerate(de.obs["group"].cat.categories):
        lfc = de.var[f"lfc_{g}"].to_numpy()
        assert np.array_equal(lfc != 0, masks[k])
        up, down = lfc[lfc > 0], lfc[lfc < 0]
        assert abs(up.size - down.size) <= 1
        assert up.min() >= 0.6 and up.max() <= 2.0
        c = sim["down_scales"][k]
        assert 0.8 < c < 1.3  # the balancing scale stays close to 1
        assert np.all((-down >= 0.6 * c - 1e-12) & (-down <= 2.0 * c + 1e-12))
        # detectable: every DE gene has a base expected count >= 0.2 at the median library
        expected = sim["median_library"] * de.var["base_proportion"].to_numpy()
        assert expected[masks[k]].min() >= 0.2


def test_profiles_are_balanced_and_non_de_genes_identical(de: AnnData) -> None:
    rho = _group_profiles(de)
    np.testing.assert_allclose(rho.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(de.var["base_proportion"].sum(), 1.0, rtol=1e-9)
    masks = np.stack([de.var[f"de_{g}"].to_numpy() for g in de.obs["group"].cat.categories])
    never = ~masks.any(axis=0)
    assert np.all(rho[:, never] == rho[0, never])  # exactly, not approximately
    # within a batch the renormalization shifts non-DE genes by a few hundredths of log2 only
    shift = de.uns["simulation"]["batch_log2_normalization"]  # (K, S)
    assert np.ptp(shift, axis=0).max() < 0.1


def test_empirical_fold_changes_of_well_expressed_de_genes(de: AnnData) -> None:
    X = de.X.toarray().astype(np.float64)
    library = X.sum(axis=1)
    groups = de.obs["group"].to_numpy()
    batches = de.obs["batch"].to_numpy()
    sim = de.uns["simulation"]
    expected = sim["median_library"] * de.var["base_proportion"].to_numpy()
    names = list(de.obs["group"].cat.categories)
    errors = []
    for k, g in enumerate(names):
        ref = names[(k + 1) % len(names)]  # another group: these genes are not DE there
        genes = de.var[f"de_{g}"].to_numpy() & (expected >= 2.0)
        assert genes.sum() >= 5
        for s, b in enumerate(de.obs["batch"].cat.categories):
            a = (groups == g) & (batches == b)
            r = (groups == ref) & (batches == b)
            pa = X[a][:, genes].sum(axis=0) / library[a].sum()
            pr = X[r][:, genes].sum(axis=0) / library[r].sum()
            norm = sim["batch_log2_normalization"][[k, names.index(ref)], s]
            truth = de.var.loc[genes, f"lfc_{g}"].to_numpy() + norm[0] - norm[1]
            errors.append(np.log2(pa / pr) - truth)
    errors = np.concatenate(errors)
    assert abs(np.mean(errors)) < 0.1
    assert np.median(np.abs(errors)) < 0.3


def test_seeded_reproducibility(source: AnnData) -> None:
    kw = {"n_cells": 400, "n_genes": 600, "seed": 7}
    a = scvae.datasets.simulate_de(source, **kw)
    b = scvae.datasets.simulate_de(source, **kw)
    c = scvae.datasets.simulate_de(source, **{**kw, "seed": 8})
    assert (a.X != b.X).nnz == 0
    assert a.obs.equals(b.obs) and a.var.equals(b.var)
    assert (a.X != c.X).nnz > 0 or not a.var.equals(c.var)


def test_other_shapes(source: AnnData) -> None:
    one = scvae.datasets.simulate_de(
        source, n_cells=300, n_genes=800, group_proportions=(1, 1, 2), n_batches=1, seed=0
    )
    assert list(one.obs["batch"].cat.categories) == ["batch0"]
    assert list(one.obs["group"].cat.categories) == ["g0", "g1", "g2"]
    assert one.obs["group"].value_counts()["g2"] == 150
    three = scvae.datasets.simulate_de(source, n_cells=300, n_genes=800, n_batches=3, seed=0)
    assert three.obs["batch"].nunique() == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"group_proportions": (1.0,)}, "at least two positive"),
        ({"group_proportions": (0.5, -0.1)}, "at least two positive"),
        ({"n_batches": 0}, "n_batches"),
        ({"n_cells": 5}, "n_cells"),
        ({"batch_effect": -1.0}, "batch_effect"),
        ({"de_fraction": 0.0}, "de_fraction"),
        ({"de_fraction": 0.3}, "de_fraction"),
        ({"lfc_range": (1.0, 0.5)}, "lfc_range"),
        ({"lfc_range": (0.0, 1.0)}, "lfc_range"),
        ({"n_genes": 10**6}, "n_genes"),
        ({"n_genes": 20}, "fewer than 2 DE genes"),
        ({"n_genes": 300, "de_fraction": 0.19}, "lower de_fraction"),
    ],
)
def test_bad_arguments_give_clear_errors(source: AnnData, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        scvae.datasets.simulate_de(source, **{"n_cells": 200, "n_genes": 500, **kwargs})


def test_bad_sources(source: AnnData) -> None:
    with pytest.raises(TypeError, match="AnnData"):
        scvae.datasets.simulate_de(np.ones((10, 10)))  # type: ignore[arg-type]
    small = source[:200, :600].copy()
    small.X = small.X.astype(np.float32) * 0.5
    with pytest.raises(ValueError, match="raw integer counts"):
        scvae.datasets.simulate_de(small, n_cells=100, n_genes=500)
