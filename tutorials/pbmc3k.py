# %% [markdown]
# # PBMC 3k with scvae: embedding, clusters, UMAP, marker genes
#
# A script in percent format (open it as a notebook with jupytext, or run it top to bottom:
# `python tutorials/pbmc3k.py`). It fits the scVI model (ZINB decoder, latent library size) on
# the bundled 10x PBMC 3k counts, clusters the embedding with a Gaussian mixture, draws a UMAP
# coloured by cluster and by the published cell types, and finds marker genes with scanpy on
# the model's denoised expression. `SCVAE_TUTORIAL_EPOCHS` sets the training epochs (default
# 100; the tests run it with 3). Figures go to `tutorials/figures/`.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np
import scanpy as sc
from sklearn.metrics import adjusted_rand_score

import scvae

epochs = int(os.environ.get("SCVAE_TUTORIAL_EPOCHS", "100"))
figures = Path(os.environ.get("SCVAE_TUTORIAL_FIGURES", Path(__file__).parent / "figures"))
figures.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## Data: raw counts, 2,000 highly variable genes
# The model needs raw counts. We keep them in `layers["counts"]` and choose genes on a
# log-normalized copy.

# %%
adata = scvae.datasets.pbmc3k()
adata.layers["counts"] = adata.X.copy()
log_norm = sc.pp.log1p(sc.pp.normalize_total(adata, target_sum=1e4, copy=True), copy=True)
sc.pp.highly_variable_genes(log_norm, flavor="seurat", n_top_genes=2000)
adata = adata[:, log_norm.var["highly_variable"].to_numpy()].copy()
print(adata)

# %% [markdown]
# ## Fit the model and write the embedding
# `fit()` holds out 10 % of the cells for early stopping; `history` has the training curves.

# %%
model = scvae.ZINBVAE(adata, layer="counts", n_latent=10)
model.fit(max_epochs=epochs, seed=0, progress_bar=False)
model.write_latent(adata)  # obsm["X_zinbvae"], uns["zinbvae"]["params"]
print(model.history[["train_elbo", "validation_elbo", "kl_weight"]].tail())
heldout = adata[model.validation_indices]
print(
    f"held-out ELBO {model.elbo(heldout).mean():.1f}, "
    f"log p(x) (IWAE, 100 samples) {model.marginal_log_likelihood(heldout).mean():.1f} nats/cell"
)

# %% [markdown]
# ## Clusters: a Gaussian mixture on the embedding (K chosen by BIC)

# %%
scvae.tl.gmm(adata, use_rep="X_zinbvae", n_components=None, seed=0)
curve = adata.uns["gmm"]["bic"]
print("BIC chose K =", adata.obs["gmm"].nunique(), "from", [int(k) for k in curve["n_components"]])
ari = adjusted_rand_score(adata.obs["cell_type"], adata.obs["gmm"])
print(f"ARI of GMM clusters against the published cell types: {ari:.2f}")

# %% [markdown]
# ## UMAP of the embedding

# %%
sc.pp.neighbors(adata, use_rep="X_zinbvae", random_state=0)
sc.tl.umap(adata, random_state=0)
fig = sc.pl.umap(adata, color=["gmm", "cell_type"], return_fig=True, show=False, wspace=0.4)
fig.savefig(figures / "pbmc3k_umap.png", dpi=100, bbox_inches="tight")

# %% [markdown]
# ## Marker genes on the denoised expression
# `get_normalized_expression` decodes each cell's posterior mean into expected counts per 10k;
# log1p of it is a denoised stand-in for log-normalized data.

# %%
adata.layers["denoised"] = np.log1p(model.get_normalized_expression(library_size=1e4))
sc.tl.rank_genes_groups(adata, "cell_type", layer="denoised", method="wilcoxon", n_genes=5)
markers = sc.get.rank_genes_groups_df(adata, group=None).groupby("group", observed=True).head(3)
print(markers[["group", "names", "logfoldchanges"]].to_string(index=False))
