"""scvae.metrics and scvae.tl.evaluate: known answers, scib-metrics agreement, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from helpers import assert_adata_unchanged

import scvae
from scvae import metrics

# ---------------------------------------------------------------------------------- fixtures


def _blobs(seed: int = 0, n: int = 320) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Overlapping cell types with a partial batch shift, a batch-specific type, a tiny type."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(["T", "B", "NK", "Mono"], size=n, p=[0.35, 0.3, 0.2, 0.15])
    batches = rng.choice(["b1", "b2", "b3"], size=n)
    batches[labels == "Mono"] = "b1"  # a cell type seen in one batch only
    labels[:6] = "DC"  # a cell type with fewer than 10 cells
    centres = {"T": 0.0, "B": 2.5, "NK": 1.2, "Mono": 5.0, "DC": 3.5}
    shift = {"b1": 0.0, "b2": 0.6, "b3": -0.4}
    X = rng.normal(size=(n, 6))
    X[:, 0] += np.array([centres[c] for c in labels])
    X[:, 1] += np.array([shift[b] for b in batches])
    X[:, 2] += 0.8 * (labels == "NK")
    return X, labels, batches


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _blobs()


@pytest.fixture
def adata(blobs) -> AnnData:
    X, labels, batches = blobs
    out = AnnData(
        obs=pd.DataFrame(
            {"cell_type": pd.Categorical(labels), "batch": pd.Categorical(batches)},
            index=[f"c{i}" for i in range(len(labels))],
        )
    )
    out.obsm["X_emb"] = X
    out.obs["leiden"] = pd.Categorical(np.where(X[:, 0] > 1.5, "1", "0"))
    return out


def _separated(n_per: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two far-apart Gaussian blobs and their labels."""
    rng = np.random.default_rng(seed)
    X = np.r_[rng.normal(size=(n_per, 3)), rng.normal(size=(n_per, 3)) + 100.0]
    return X, np.repeat(["a", "b"], n_per)


# ----------------------------------------------------------------------------- known answers


def test_nmi_ari_of_identical_and_renamed_labelings_is_one() -> None:
    labels = np.array(list("aabbbcc"))
    renamed = np.array(list("xxyyyzz"))
    assert metrics.nmi_ari(labels, labels) == {"nmi": 1.0, "ari": 1.0}
    assert metrics.nmi_ari(labels, renamed) == pytest.approx({"nmi": 1.0, "ari": 1.0})
    assert metrics.nmi_ari(labels, np.zeros(7))["ari"] == pytest.approx(0.0)


def test_separated_labels_are_perfectly_conserved() -> None:
    X, labels = _separated()
    knn = metrics.nearest_neighbors(X, 30)
    assert metrics.clisi(knn, labels) == 1.0  # every neighbourhood of one type
    assert metrics.graph_connectivity(knn.subset(15), labels, connection="weak") == 1.0
    assert metrics.graph_connectivity(knn.subset(15), labels) > 0.95  # an outlier is its own
    assert metrics.silhouette_label(X, labels) > 0.98
    leiden = metrics.leiden_nmi_ari(knn.subset(15), labels)
    assert leiden["nmi"] == 1.0 and leiden["ari"] == 1.0
    gmm = metrics.gmm_nmi_ari(X, labels)
    assert gmm["ari"] == 1.0 and gmm["n_clusters"] == 2
    # the same blobs as batches: no mixing at all
    assert metrics.ilisi(knn, labels) == 0.0
    assert metrics.kbet(knn, labels)[0] == 0.0


def test_lisi_and_kbet_on_a_hand_made_perfectly_mixed_graph() -> None:
    # 8 cells, batches alternate; every cell's 6 other neighbours are 3 + 3 per batch, all at the
    # same distance: the Simpson index is exactly 1/2, LISI 2, scaled iLISI 1.
    batches = np.array([0, 1] * 4)
    indices = []
    for i in range(8):
        same = [j for j in range(8) if j != i and batches[j] == batches[i]]
        other = [j for j in range(8) if batches[j] != batches[i]][:3]
        indices.append([i, *same, *other])
    knn = metrics.Neighbors(np.array(indices), np.array([[0.0] + [1.0] * 6] * 8))
    np.testing.assert_allclose(metrics.lisi(knn, batches), 2.0)
    assert metrics.ilisi(knn, batches) == pytest.approx(1.0)
    assert metrics.clisi(knn, batches) == pytest.approx(0.0)
    # all 8 cells as each one's neighbourhood: composition = global, chi-square 0, all accepted
    full = metrics.Neighbors(
        np.array([[i, *[j for j in range(8) if j != i]] for i in range(8)]), np.ones((8, 8))
    )
    rate, statistic, p_values = metrics.kbet(full, batches)
    assert rate == 1.0 and np.all(statistic == 0) and np.all(p_values == 1)


def test_random_batches_in_one_blob_are_well_mixed() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 4))
    batches = rng.choice(["x", "y"], size=400)
    labels = np.where(X[:, 0] > 0, "p", "q")
    knn = metrics.nearest_neighbors(X, 90)
    assert metrics.ilisi(knn, batches) > 0.85
    assert metrics.silhouette_batch(X, labels, batches) > 0.95
    assert metrics.kbet(knn.subset(50), batches)[0] > 0.8
    assert metrics.kbet_per_label(knn.subset(50), batches, labels)[0] > 0.8


def test_a_split_cell_type_lowers_graph_connectivity() -> None:
    X, _ = _separated(n_per=50)
    labels = np.array(["a"] * 100)  # one type in two far-apart pieces of 50 cells
    labels = np.r_[labels, ["b"] * 50]
    X = np.r_[X, np.random.default_rng(2).normal(size=(50, 3)) + 200.0]
    knn = metrics.nearest_neighbors(X, 15)
    assert metrics.graph_connectivity(knn, labels) == pytest.approx((0.5 + 1.0) / 2)


def test_nearest_neighbors_puts_each_cell_first_even_with_duplicates() -> None:
    X = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    knn = metrics.nearest_neighbors(X, 3)
    np.testing.assert_array_equal(knn.indices[:, 0], np.arange(5))
    assert np.all(knn.distances[:, 0] == 0)
    assert all(len(set(row)) == 3 for row in knn.indices)


def test_pure_functions_refuse_missing_labels() -> None:
    with pytest.raises(ValueError, match="missing values"):
        metrics.nmi_ari(np.array(["a", None, "b"], dtype=object), np.array([0, 1, 1]))


# -------------------------------------------------------------------------- vs scib-metrics


@pytest.fixture
def scib(monkeypatch):
    """scib-metrics, with exact kNN in kBET's diffusion maps (it uses pynndescent there)."""
    scib_metrics = pytest.importorskip("scib_metrics")
    import scib_metrics.utils._diffusion_nn as diffusion
    from scib_metrics.nearest_neighbors import NeighborsResults

    def exact(X, n_neighbors, random_state=0, n_jobs=1):
        found = metrics.nearest_neighbors(X, n_neighbors)
        return NeighborsResults(indices=found.indices, distances=found.distances)

    monkeypatch.setattr(diffusion.nearest_neighbors, "pynndescent", exact)
    return scib_metrics, NeighborsResults


def test_native_metrics_match_scib_metrics_on_the_same_knn_graph(blobs, scib) -> None:
    scib_metrics, NeighborsResults = scib
    X, labels, batches = blobs
    knn = metrics.nearest_neighbors(X, 90)

    def theirs(k: int):
        sub = knn.subset(k)
        return NeighborsResults(indices=sub.indices, distances=sub.distances)

    np.testing.assert_allclose(
        metrics.fuzzy_connectivities(knn.subset(15)).toarray(),
        theirs(15).knn_graph_connectivities.toarray(),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        metrics.lisi(knn, batches), scib_metrics.lisi_knn(theirs(90), batches), rtol=1e-4
    )
    pairs = {
        "silhouette_label": (
            metrics.silhouette_label(X, labels),
            scib_metrics.silhouette_label(X, labels),
        ),
        "silhouette_batch": (
            metrics.silhouette_batch(X, labels, batches),
            scib_metrics.silhouette_batch(X, labels, batches),
        ),
        "ilisi": (metrics.ilisi(knn, batches), scib_metrics.ilisi_knn(theirs(90), batches)),
        "clisi": (metrics.clisi(knn, labels), scib_metrics.clisi_knn(theirs(90), labels)),
        "graph_connectivity": (
            metrics.graph_connectivity(knn.subset(15), labels),
            scib_metrics.graph_connectivity(theirs(15), labels),
        ),
        "kbet": (
            metrics.kbet(knn.subset(50), batches)[0],
            scib_metrics.kbet(theirs(50), batches)[0],
        ),
        "kbet_per_label": (
            metrics.kbet_per_label(knn.subset(50), batches, labels)[0],
            scib_metrics.kbet_per_label(theirs(50), batches, labels),
        ),
    }
    ours = metrics.leiden_nmi_ari(knn.subset(15), labels, seed=42)
    reference = scib_metrics.nmi_ari_cluster_labels_leiden(theirs(15), labels, seed=42)
    pairs["leiden_nmi"] = (ours["nmi"], reference["nmi"])
    pairs["leiden_ari"] = (ours["ari"], reference["ari"])
    assert 0.2 < ours["ari"] < 0.99  # overlapping types: the sweep has something to choose
    for name, (mine, ref) in pairs.items():
        assert mine == pytest.approx(float(ref), abs=1e-5), name


def test_evaluate_backends_agree(adata, scib) -> None:
    native = scvae.tl.evaluate(
        adata, use_rep="X_emb", label_key="cell_type", batch_key="batch", gmm=False
    )
    other = scvae.tl.evaluate(
        adata,
        use_rep="X_emb",
        label_key="cell_type",
        batch_key="batch",
        gmm=False,
        backend="scib-metrics",
    )
    assert list(native["metric"]) == list(other["metric"])
    np.testing.assert_allclose(native["value"], other["value"], atol=1e-5)


# ------------------------------------------------------------------------------ evaluate


def test_evaluate_returns_a_tidy_table_and_leaves_adata_alone(adata) -> None:
    before = adata.copy()
    table = scvae.tl.evaluate(
        adata, use_rep="X_emb", label_key="cell_type", batch_key="batch", cluster_key="leiden"
    )
    assert_adata_unchanged(before, adata)
    np.testing.assert_array_equal(adata.obsm["X_emb"], before.obsm["X_emb"])
    assert list(table.columns) == ["embedding", "group", "metric", "value"]
    assert set(table["embedding"]) == {"X_emb"}
    values = table.set_index("metric")["value"]
    expected = {
        "leiden_nmi", "leiden_ari", "silhouette_label", "clisi", "silhouette_batch", "ilisi",
        "kbet", "graph_connectivity", "gmm_nmi", "gmm_ari", "obs_leiden_nmi", "obs_leiden_ari",
        "bio_conservation", "batch_correction", "total",
    }  # fmt: skip
    assert expected <= set(values.index)
    scores = table.loc[table.group != "aggregate", "value"]
    assert np.all((scores >= 0) & (scores <= 1))
    bio = table.loc[table.group == "bio conservation", "value"].mean()
    batch = table.loc[table.group == "batch correction", "value"].mean()
    assert values["bio_conservation"] == pytest.approx(bio)
    assert values["total"] == pytest.approx(0.6 * bio + 0.4 * batch)
    given = metrics.nmi_ari(adata.obs["cell_type"], adata.obs["leiden"])
    clustering = table[table.group == "clustering"].set_index("metric")["value"]
    assert clustering["obs_leiden_ari"] == pytest.approx(given["ari"])
    assert np.isnan(table.attrs["kbet_per_label"]["Mono"])  # one batch only
    assert np.isnan(table.attrs["kbet_per_label"]["DC"])  # fewer than 10 cells


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"use_rep": "X_nope"}, KeyError, r"available keys: 'X_emb'"),
        ({"label_key": "celltype"}, KeyError, r"label_key='celltype'.*'cell_type', 'batch'"),
        ({"batch_key": "sample"}, KeyError, r"batch_key='sample'.*available columns"),
        ({"cluster_key": "louvain"}, KeyError, r"cluster_key='louvain'"),
        ({"model": object()}, ValueError, "Pass both model="),
        ({"backend": "jax"}, ValueError, "backend must be"),
        ({"n_neighbors": 1}, ValueError, "n_neighbors must be an integer >= 2"),
    ],
)
def test_evaluate_bad_input_names_the_key_and_leaves_adata_alone(
    adata, kwargs, error, match
) -> None:
    before = adata.copy()
    options = {"use_rep": "X_emb", "label_key": "cell_type", "batch_key": "batch", **kwargs}
    with pytest.raises(error, match=match):
        scvae.tl.evaluate(adata, **options)
    assert_adata_unchanged(before, adata)


def test_evaluate_refuses_nan_embeddings_and_missing_labels(adata) -> None:
    bad = adata.copy()
    bad.obsm["X_emb"] = bad.obsm["X_emb"].copy()
    bad.obsm["X_emb"][3, 1] = np.nan
    before = bad.copy()
    with pytest.raises(ValueError, match="NaN or infinite"):
        scvae.tl.evaluate(bad, use_rep="X_emb", label_key="cell_type")
    assert_adata_unchanged(before, bad)
    unlabeled = adata.copy()
    unlabeled.obs["cell_type"] = unlabeled.obs["cell_type"].cat.add_categories([])
    unlabeled.obs.loc[unlabeled.obs_names[:2], "cell_type"] = np.nan
    with pytest.raises(ValueError, match="2 missing values"):
        scvae.tl.evaluate(unlabeled, use_rep="X_emb", label_key="cell_type")


def test_evaluate_one_batch_gives_nan_batch_scores_with_a_warning(adata) -> None:
    one = adata.copy()
    one.obs["batch"] = "only"
    with pytest.warns(UserWarning, match="single batch"):
        table = scvae.tl.evaluate(one, use_rep="X_emb", label_key="cell_type", batch_key="batch")
    values = table.set_index("metric")["value"]
    assert table.loc[table.group == "batch correction", "value"].isna().all()
    assert np.isnan(values["batch_correction"]) and np.isnan(values["total"])
    assert np.isfinite(values["bio_conservation"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        no_batch = scvae.tl.evaluate(one, use_rep="X_emb", label_key="cell_type", gmm=False)
    assert no_batch.loc[no_batch.group == "batch correction", "value"].isna().all()


def test_heldout_log_likelihood_row(sim, trained) -> None:
    heldout = sim[:40].copy()
    expected = trained.marginal_log_likelihood(heldout, n_samples=5, seed=0).mean()
    value = metrics.heldout_log_likelihood(trained, heldout, n_samples=5)
    assert value == pytest.approx(expected)
    embedded = sim.copy()
    trained.write_latent(embedded)
    table = scvae.tl.evaluate(
        embedded,
        use_rep="X_zinbvae",
        label_key="cluster",
        gmm=False,
        model=trained,
        heldout=heldout,
        n_samples=5,
    )
    row = table[table.metric == "heldout_log_px"]
    assert list(row["group"]) == ["likelihood"]
    assert row["value"].item() == pytest.approx(expected)


def test_heldout_log_likelihood_is_exact_for_the_gmm(adata) -> None:
    gmm = scvae.GMM(adata, use_rep="X_emb", n_components=3).fit(seed=0)
    value = metrics.heldout_log_likelihood(gmm, adata[:20].copy())
    assert value == pytest.approx(gmm.marginal_log_likelihood(adata[:20].copy()).mean())
    with pytest.raises(TypeError, match="no marginal_log_likelihood"):
        metrics.heldout_log_likelihood(object(), adata)
