"""Differential expression: the table, its statistics, scanpy's structure and bad input."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData
from helpers import assert_adata_unchanged, snapshot

import scvae
from scvae.models._de import estimate_delta, fdr_calls, posterior_fdr

matplotlib.use("Agg")

COLUMNS = [
    "proba_de",
    "proba_not_de",
    "bayes_factor",
    "lfc_mean",
    "lfc_median",
    "lfc_std",
    "scale1",
    "scale2",
    "raw_mean1",
    "raw_mean2",
    "non_zeros_proportion1",
    "non_zeros_proportion2",
    "is_de_fdr_0.05",
]
FAST = {"n_samples": 4}


def test_table_has_the_scvi_columns_and_consistent_values(trained, sim) -> None:
    df = trained.differential_expression(groupby="cluster", group1="0", **FAST)
    assert set(COLUMNS) <= set(df.columns)
    assert sorted(df.index) == sorted(sim.var_names)
    assert df["proba_de"].is_monotonic_decreasing  # best first
    np.testing.assert_allclose(df["proba_de"] + df["proba_not_de"], 1.0)
    np.testing.assert_allclose(df["scale1"].sum(), 1.0, rtol=1e-5)  # mean proportions
    in0 = (sim.obs["cluster"] == "0").to_numpy()
    x = sim.X.toarray()
    np.testing.assert_allclose(df.loc[sim.var_names, "raw_mean1"], x[in0].mean(0), rtol=1e-5)
    np.testing.assert_allclose(
        df.loc[sim.var_names, "non_zeros_proportion2"], (x[~in0] > 0).mean(0), rtol=1e-6
    )
    called = df["is_de_fdr_0.05"].to_numpy()
    assert called.any(), "clusters of the simulation differ in many genes"
    assert (1 - df["proba_de"][called]).mean() <= 0.05


def test_lfc_is_that_of_the_pooled_counts_and_shrunk(trained, sim) -> None:
    """Uncorrected, the raw LFC is that of the groups' pooled counts; the reported one is
    shrunk towards 0; the scales are the model's mean denoised proportions."""
    df = trained.differential_expression(
        groupby="cluster", group1="1", group2="2", batch_correction=False, **FAST
    )
    df = df.loc[sim.var_names]
    groups = sim.obs["cluster"].to_numpy()
    x = sim.X.toarray()

    def pooled(mask: np.ndarray) -> np.ndarray:
        return (x[mask].sum(0) + 0.5) / (x[mask].sum() + 0.5 * x.shape[1])

    direct = np.log2(pooled(groups == "1")) - np.log2(pooled(groups == "2"))
    assert np.corrcoef(direct, df["lfc_raw_mean"])[0, 1] > 0.99
    assert (df["lfc_mean"].abs() <= df["lfc_raw_mean"].abs() + 1e-9).mean() > 0.95
    rho = trained.get_normalized_expression(library_size=1.0)
    assert np.corrcoef(rho[groups == "1"].mean(0), df["scale1"])[0, 1] > 0.99


def test_every_group_against_the_rest_in_one_long_table(trained, sim) -> None:
    df = trained.differential_expression(groupby="cluster", **FAST)
    groups = sorted(sim.obs["cluster"].unique())
    assert list(df.columns[:3]) == ["group1", "group2", "comparison"]
    assert sorted(df["group1"].unique()) == groups
    assert set(df["group2"]) == {"rest"}
    assert set(df["comparison"]) == {f"{g} vs rest" for g in groups}
    assert len(df) == len(groups) * sim.n_vars


def test_seeded_and_reproducible(trained) -> None:
    a = trained.differential_expression(groupby="cluster", group1="0", seed=3, **FAST)
    b = trained.differential_expression(groupby="cluster", group1="0", seed=3, **FAST)
    c = trained.differential_expression(groupby="cluster", group1="0", seed=4, **FAST)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a.loc[c.index, "lfc_mean"], c["lfc_mean"])


def test_random_halves_of_one_group_have_no_differential_expression(trained, sim) -> None:
    rng = np.random.default_rng(0)
    one = np.flatnonzero(sim.obs["cluster"] == "0")
    halves = np.full(sim.n_obs, None, dtype=object)
    halves[one] = "a"
    halves[rng.permutation(one)[: len(one) // 2]] = "b"
    adata = sim.copy()
    adata.obs["half"] = pd.Categorical(halves)
    df = trained.differential_expression(adata, groupby="half", group1="a", group2="b", **FAST)
    assert df["is_de_fdr_0.05"].sum() <= 2


def test_batch_correction_removes_the_batch_effect(trained, sim) -> None:
    """Comparing the batches themselves: corrected, their counts differ less (the small
    model of the fixture captures part of the effect; on simulate_de the correction takes
    the observed FDR from 0.50 to 0.04, benchmarks/de.py)."""
    corrected = trained.differential_expression(groupby="batch", group1="batch0", **FAST)
    raw = trained.differential_expression(
        groupby="batch", group1="batch0", batch_correction=False, **FAST
    )
    assert corrected["is_de_fdr_0.05"].sum() < raw["is_de_fdr_0.05"].sum()
    assert corrected["lfc_raw_mean"].abs().mean() < 0.9 * raw["lfc_raw_mean"].abs().mean()
    named = trained.differential_expression(
        groupby="batch", group1="batch0", batches=["batch1"], **FAST
    )
    assert named["lfc_raw_mean"].abs().mean() < raw["lfc_raw_mean"].abs().mean()


def test_vanilla_mode_and_delta_from_the_data(trained) -> None:
    df = trained.differential_expression(groupby="cluster", group1="0", mode="vanilla", **FAST)
    np.testing.assert_allclose(df["proba_m1"] + df["proba_m2"], 1.0)
    assert df["bayes_factor"].abs().is_monotonic_decreasing
    assert df["delta"].isna().all()
    auto = trained.differential_expression(groupby="cluster", group1="0", delta=None, **FAST)
    assert auto["delta"].nunique() == 1 and auto["delta"].iloc[0] >= 0.1


def test_fdr_rule() -> None:
    p = np.array([1.0, 0.99, 0.97, 0.9, 0.5, 0.1])
    calls = fdr_calls(p, 0.05)
    # the top four have mean(1 - p) = 0.035; adding 0.5 makes it 0.128
    np.testing.assert_array_equal(calls, [True, True, True, True, False, False])
    q = posterior_fdr(p)
    np.testing.assert_array_equal(q <= 0.05, calls)
    assert np.all(np.diff(q) >= 0)
    assert not fdr_calls(np.array([0.5, 0.4]), 0.05).any()
    # ties at the threshold are kept together or dropped together
    np.testing.assert_array_equal(fdr_calls(np.array([1.0, 0.9, 0.9]), 0.05), [True, False, False])


def test_estimate_delta_finds_the_central_mode() -> None:
    rng = np.random.default_rng(0)
    lfc = np.concatenate(
        [rng.normal(0, 0.1, 2000), rng.normal(2, 0.3, 100), rng.normal(-2, 0.3, 100)]
    )
    assert 0.15 < estimate_delta(lfc) < 0.3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"groupby": "nope"}, KeyError, "not a column"),
        ({"groupby": "cluster", "group1": "9"}, KeyError, "not a group"),
        ({"groupby": "cluster", "group1": "0", "group2": "0"}, ValueError, "both '0'"),
        ({"groupby": "cluster", "group2": "0"}, ValueError, "needs group1"),
        ({"groupby": "cluster", "mode": "bayes"}, ValueError, "mode"),
        ({"groupby": "cluster", "group1": "0", "batches": ["batch7"]}, ValueError, "Unknown batch"),
        ({"groupby": "cluster", "n_samples": 0}, ValueError, "n_samples"),
    ],
)
def test_bad_input_is_refused(trained, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        trained.differential_expression(**kwargs)


def test_tiny_groups_and_models_without_batches_are_refused(trained, sim) -> None:
    adata = sim.copy()
    adata.obs["tiny"] = pd.Categorical(["small"] * 3 + ["big"] * (sim.n_obs - 3))
    before = snapshot(adata)
    with pytest.raises(ValueError, match=r"has 3 cells.*at least 5"):
        trained.differential_expression(adata, groupby="tiny", group1="small")
    assert_adata_unchanged(adata, before)
    single = scvae.ZINBVAE(sim, n_latent=2, n_hidden=16)
    single.fit(max_epochs=1, progress_bar=False)
    with pytest.raises(ValueError, match="without batch_key"):
        single.differential_expression(groupby="cluster", group1="0", batches=["batch0"])
    gaussian = scvae.GaussianVAE(sim, n_latent=2, n_hidden=16)
    gaussian.fit(max_epochs=1, progress_bar=False)
    with pytest.raises(ValueError, match="count model"):
        gaussian.differential_expression(groupby="cluster", group1="0")


def test_missing_group_labels_put_cells_in_no_group(trained, sim) -> None:
    adata = sim.copy()
    labels = adata.obs["cluster"].astype(object).to_numpy()
    labels[:50] = np.nan
    adata.obs["partial"] = pd.Categorical(labels)
    df = trained.differential_expression(adata, groupby="partial", group1="0", **FAST)
    in0 = (adata.obs["partial"] == "0").to_numpy()
    rest = adata.obs["partial"].notna().to_numpy() & ~in0
    np.testing.assert_allclose(
        df.loc[sim.var_names, "raw_mean2"], sim.X.toarray()[rest].mean(0), rtol=1e-5
    )


def test_rank_genes_groups_is_read_by_scanpy(trained, sim) -> None:
    adata = sim.copy()
    before = snapshot(adata)
    scvae.tl.rank_genes_groups(adata, trained, "cluster", **FAST)
    result = adata.uns["rank_genes_groups"]
    assert result["params"]["groupby"] == "cluster"
    assert result["params"]["method"] == "scvae_change"
    assert result["names"].dtype.names == ("0", "1", "2")
    df = sc.get.rank_genes_groups_df(adata, group="0")
    assert len(df) == sim.n_vars and df["scores"].is_monotonic_decreasing
    assert set(df.columns) >= {"names", "scores", "logfoldchanges", "pvals", "pvals_adj"}
    table = trained.differential_expression(adata, groupby="cluster", group1="0", **FAST)
    called = set(table.index[table["is_de_fdr_0.05"]])
    assert set(df["names"][df["pvals_adj"] <= 0.05]) == called
    both = sc.get.rank_genes_groups_df(adata, group=None)
    assert set(both["group"]) == {"0", "1", "2"}
    sc.pl.rank_genes_groups(adata, n_genes=5, show=False)
    sc.pl.rank_genes_groups_dotplot(adata, n_genes=3, show=False, dendrogram=False)
    del adata.uns["rank_genes_groups"]
    assert_adata_unchanged(adata, before)


def test_rank_genes_groups_against_a_reference_and_bad_input(trained, sim) -> None:
    adata = sim.copy()
    scvae.tl.rank_genes_groups(
        adata, trained, "cluster", reference="0", n_genes=10, key_added="vs0", **FAST
    )
    assert adata.uns["vs0"]["names"].dtype.names == ("1", "2")
    assert len(adata.uns["vs0"]["names"]) == 10
    before = snapshot(adata)
    with pytest.raises(KeyError, match="not a column"):
        scvae.tl.rank_genes_groups(adata, trained, "nope")
    with pytest.raises(KeyError, match="groups"):
        scvae.tl.rank_genes_groups(adata, trained, "cluster", groups=["7"], **FAST)
    assert_adata_unchanged(adata, before)
    with pytest.raises(ValueError, match="view"):
        scvae.tl.rank_genes_groups(sim[:100], trained, "cluster")
    view = sim[sim.obs["cluster"] != "2"]
    out = scvae.tl.rank_genes_groups(view, trained, "cluster", reference="0", copy=True, **FAST)
    assert out.uns["rank_genes_groups"]["names"].dtype.names == ("1",)
    assert "rank_genes_groups" not in sim.uns


def test_table_is_written_after_save_and_load(trained, sim, tmp_path) -> None:
    trained.save(tmp_path / "m")
    loaded = scvae.ZINBVAE.load(tmp_path / "m")
    with pytest.raises(ValueError, match="without its training AnnData"):
        loaded.differential_expression(groupby="cluster")
    a = loaded.differential_expression(sim, groupby="cluster", group1="0", **FAST)
    b = trained.differential_expression(sim, groupby="cluster", group1="0", **FAST)
    pd.testing.assert_frame_equal(a, b)


def test_training_adata_changed_since_fit_is_refused(sim) -> None:
    adata = sim.copy()
    model = scvae.ZINBVAE(adata, n_latent=2, n_hidden=16)
    model.fit(max_epochs=1, progress_bar=False)
    adata._inplace_subset_obs(np.arange(100))
    with pytest.raises(ValueError, match="now has 100 cells"):
        model.differential_expression(groupby="cluster")
    assert isinstance(adata, AnnData)


def test_shrinkage_learns_the_null_fraction_and_keeps_real_effects() -> None:
    from scvae.models._shrinkage import shrink

    rng = np.random.default_rng(0)
    beta = np.concatenate([np.zeros(1800), rng.choice([-1, 1], 200) * rng.uniform(0.6, 2, 200)])
    s = rng.uniform(0.05, 0.2, beta.size)
    b = beta + rng.normal(0, s)
    post = shrink(b, s)
    assert 0.8 < post.pi[0] < 0.97  # the point mass at 0 holds most genes
    p = post.proba_beyond(0.25)
    assert p[1800:].mean() > 0.95 and p[:1800].mean() < 0.05
    calls = fdr_calls(p, 0.05)
    # the rule bounds the expected FDR; one draw of 2,000 genes lands near it (here 0.07)
    assert (calls[:1800].sum() / max(calls.sum(), 1)) <= 0.1
    assert np.all(np.abs(post.mean()) <= np.abs(b) + 1e-12)  # shrunk towards 0
    mid = post.median()
    assert np.mean(np.sign(mid[1800:]) == np.sign(beta[1800:])) > 0.99
    np.testing.assert_allclose(post.proba_positive() + post.proba_negative() + post.r[:, 0], 1)


def test_covariate_models_compare_groups(sim) -> None:
    adata = sim.copy()
    adata.obs["donor"] = pd.Categorical(np.where(np.arange(sim.n_obs) % 2, "d1", "d2"))
    model = scvae.ZINBVAE(adata, batch_key="batch", categorical_covariate_keys=["donor"])
    model.fit(max_epochs=2, progress_bar=False)
    df = model.differential_expression(groupby="cluster", group1="0", **FAST)
    assert len(df) == sim.n_vars and df["proba_de"].between(0, 1).all()


def test_auc_is_the_mann_whitney_statistic_of_log_normalized_counts(sim) -> None:
    """Without batches nothing is corrected: ``auc`` is U / (n1 n2) of log1p(CP10k)."""
    from scipy.stats import mannwhitneyu

    model = scvae.ZINBVAE(sim, n_latent=2, n_hidden=16)
    model.fit(max_epochs=1, progress_bar=False)
    df = model.differential_expression(groupby="cluster", group1="0", **FAST).loc[sim.var_names]
    x = sim.X.toarray()
    lognorm = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
    in0 = (sim.obs["cluster"] == "0").to_numpy()
    for g in range(0, sim.n_vars, 7):
        u = mannwhitneyu(lognorm[in0, g], lognorm[~in0, g]).statistic
        assert df["auc"].iloc[g] == pytest.approx(u / (in0.sum() * (~in0).sum()), abs=1e-6)


def test_transform_covariates_corrects_a_donor_effect(sim) -> None:
    """A donor that triples 20 genes: compared as measured, the donors differ in them;
    compared as if every cell came from one donor, not (once the decoder has learnt the
    effect: after 30 epochs it has not, after 150 it has)."""
    adata = sim.copy()
    donor = np.where(np.arange(sim.n_obs) % 2, "d1", "d2")
    adata.obs["donor"] = pd.Categorical(donor)
    x = adata.X.toarray()
    x[donor == "d1", :20] *= 3
    adata.X = sp.csr_matrix(x)
    model = scvae.ZINBVAE(
        adata, batch_key="batch", categorical_covariate_keys=["donor"], n_latent=4, n_hidden=64
    )
    model.fit(max_epochs=150, batch_size=64, seed=0, progress_bar=False, early_stopping=False)
    args = {"groupby": "donor", "group1": "d1", **FAST}
    raw = model.differential_expression(**args).loc[adata.var_names[:20]]
    fixed = model.differential_expression(transform_covariates={"donor": "d2"}, **args)
    fixed = fixed.loc[adata.var_names[:20]]
    assert raw["is_de_fdr_0.05"].mean() > 0.8 and raw["lfc_raw_mean"].mean() > 0.8
    assert fixed["is_de_fdr_0.05"].mean() < 0.2
    # the systematic x3 is gone (gene by gene the small model over- and under-corrects)
    assert abs(fixed["lfc_raw_mean"].mean()) < 0.3 * raw["lfc_raw_mean"].mean()
    with pytest.raises(KeyError):
        model.differential_expression(transform_covariates={"age": 3}, **args)
    with pytest.raises(ValueError, match="d9"):
        model.differential_expression(transform_covariates={"donor": "d9"}, **args)
