# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # PBMC 3k: embedding, clusters and marker genes
#
# This tutorial takes 2,638 blood cells (peripheral blood mononuclear cells, PBMCs, 10x
# Genomics) from raw UMI counts to annotated clusters:
#
# 1. fit **scVI** (`scvae.ZINBVAE`): a deep generative model of the counts that gives every
#    cell a 10-dimensional summary (the *embedding* or *latent space*);
# 2. group the cells with a **Gaussian mixture model** (`scvae.tl.gmm`) on that embedding;
# 3. draw a **UMAP** coloured by cluster and by the published cell types;
# 4. find **marker genes** with the model's differential expression, in scanpy's format.
#
# The data ship with scvae (nothing is downloaded) and the whole notebook runs in about a
# minute on a laptop CPU. Every random step is seeded, so you get the same numbers.

# %%
import warnings

import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.metrics import adjusted_rand_score

import scvae

sc.settings.set_figure_params(dpi=80, facecolor="white", frameon=False, ipython_format="png")
warnings.filterwarnings("ignore", message="IProgress not found")  # progress bars: harmless

# %% [markdown]
# ## The data: raw counts of highly variable genes
#
# scVI models **raw counts**: how many mRNA molecules of each gene were captured in each
# cell. It accounts for sequencing depth (library size) itself, so do not normalize the counts
# you give it. We keep them in `layers["counts"]` and use a log-normalized copy only to choose
# the 1,200 most variable genes, as in the standard scanpy workflow. Some classic markers
# (*CD3E*, *IL7R*, *MS4A1*, *CD14*, ...) are highly expressed but not among the most variable
# genes; we keep them too, so that we can look at them at the end.

# %%
markers = ["CD3E", "IL7R", "CCR7", "CD8A", "MS4A1", "CD79A", "CD14", "LYZ", "FCGR3A"]
markers += ["NKG7", "GNLY", "FCER1A", "CST3", "PPBP"]

adata = scvae.datasets.pbmc3k()
adata.layers["counts"] = adata.X.copy()  # raw counts: what the model sees
sc.pp.normalize_total(adata, target_sum=1e4)
sc.pp.log1p(adata)  # adata.X: log-normalized, for gene selection and plots
sc.pp.highly_variable_genes(adata, flavor="seurat", n_top_genes=1200)
adata = adata[:, adata.var["highly_variable"] | adata.var_names.isin(markers)].copy()
adata

# %% [markdown]
# `obs["cell_type"]` holds the labels of the Seurat PBMC 3k tutorial. We use them only to
# check the results, never to fit anything.

# %%
adata.obs["cell_type"].value_counts()

# %% [markdown]
# ## Fit the model
#
# `ZINBVAE` is scVI with a zero-inflated negative binomial distribution of counts. Its
# encoder, a small neural network, maps each cell's counts to a distribution over a
# 10-dimensional latent vector `z`; its decoder maps `z` back to the expected expression of
# every gene. Training maximizes the ELBO, a lower bound on how probable the model finds the
# observed counts.
#
# `fit()` holds out 10 % of the cells (a seeded split) to watch for overfitting and keeps
# the weights of the epoch that scored best on them. We cap training at 50 passes over the
# data to keep this notebook fast; the curves below show it has levelled off.

# %%
model = scvae.ZINBVAE(adata, layer="counts", n_latent=10)
model.fit(max_epochs=50, seed=0, progress_bar=False)
model

# %% [markdown]
# The training curves: the ELBO (higher is better) per cell, on the training cells and on the
# held-out validation cells. The [diagnostics tutorial](diagnostics.ipynb) explains them in
# detail.

# %%
scvae.pl.history(model, keys=("elbo",), skip_epochs=3)

# %% [markdown]
# `write_latent` stores each cell's embedding (the mean of its posterior distribution) in
# `obsm["X_zinbvae"]`, where scanpy finds it like a PCA.

# %%
model.write_latent(adata)
adata.obsm["X_zinbvae"].shape

# %% [markdown]
# ## Clusters: a Gaussian mixture on the embedding
#
# A Gaussian mixture model describes the cells as a few overlapping clouds in the latent
# space and gives every cell a probability of belonging to each cloud. The number of clusters
# `K` is chosen by the Bayesian information criterion (BIC), which balances fit against the
# number of parameters: the lowest BIC wins. The clusters go to `obs["gmm"]`, the
# probabilities to `obsm["gmm_proba"]`.

# %%
scvae.tl.gmm(adata, use_rep="X_zinbvae", n_components=range(4, 14), seed=0)
bic = pd.DataFrame(dict(adata.uns["gmm"]["bic"])).set_index("n_components")
print("BIC chose K =", adata.obs["gmm"].nunique())
bic.T.round(0)

# %% [markdown]
# How well do the clusters match the published cell types? The adjusted Rand index (ARI) is
# 1 for identical partitions and about 0 for random ones. The table shows, for every cluster,
# how many cells of each cell type it holds.

# %%
ari = adjusted_rand_score(adata.obs["cell_type"], adata.obs["gmm"])
print(f"ARI of the GMM clusters against the published cell types: {ari:.2f}")
pd.crosstab(adata.obs["gmm"], adata.obs["cell_type"])

# %% [markdown]
# Most clusters are dominated by one cell type or lineage. BIC settles on fewer clusters than
# the nine published types: naive and memory CD4 T cells differ in a handful of genes and
# overlap in the latent space, and rare types (32 dendritic cells, 14 platelets) are too small
# to earn a component of their own and join a larger neighbour. When you need finer types,
# ask for more clusters (`n_components=9`) or cluster one lineage again on its own.

# %% [markdown]
# ## UMAP of the embedding
#
# UMAP draws the 10-dimensional embedding in 2D. It keeps neighbours together but distorts
# distances between groups, so read it for *which cells are near which*, not for how far apart
# clusters are.

# %%
sc.pp.neighbors(adata, use_rep="X_zinbvae", random_state=0)
sc.tl.umap(adata, random_state=0)
sc.pl.umap(adata, color=["gmm", "cell_type"], wspace=0.45)

# %% [markdown]
# ## Known markers on the denoised expression
#
# `get_normalized_expression` decodes each cell's embedding into its *expected* expression
# per 10,000 counts: the raw counts with the sampling noise (and the dropouts) removed. Its
# log1p is a denoised stand-in for log-normalized data.

# %%
adata.layers["denoised"] = np.log1p(model.get_normalized_expression(library_size=1e4))

# %% [markdown]
# Known PBMC markers per cluster: each row is a cluster, each column a gene, the colour the
# mean denoised expression in the cluster (scaled per gene from 0 to 1). This is
# how you would name the clusters if the labels were unknown: *CD3E* T cells (*IL7R*, *CCR7*
# naive and memory CD4, *CD8A* CD8), *MS4A1* and *CD79A* B cells, *CD14* and *LYZ* classical
# monocytes, *FCGR3A* non-classical monocytes (and NK cells), *NKG7* and *GNLY* NK and
# cytotoxic cells, *FCER1A* and *CST3* dendritic cells, *PPBP* platelets.

# %%
sc.pl.matrixplot(adata, markers, groupby="gmm", layer="denoised", standard_scale="var")

# %% [markdown]
# ## Marker genes: differential expression from the model
#
# The same search without prior knowledge: `scvae.tl.rank_genes_groups` compares each cluster
# with all other cells through the model. It ranks the genes by how consistently the cluster
# is above the rest (the Wilcoxon statistic, here on the counts corrected by the model; this
# data set has one batch, so nothing needs correcting) and calls the genes whose mean changes
# more than 1.19-fold at a posterior expected false discovery rate of 5 %. The result has
# scanpy's structure, so scanpy's own readers and plots take it: the dotplot shows the top
# three genes per cluster, the dot size the fraction of cells that express the gene, the colour
# its mean log-normalized expression.

# %%
scvae.tl.rank_genes_groups(adata, model, "gmm", seed=0)
sc.pl.rank_genes_groups_dotplot(adata, n_genes=3, dendrogram=False)

# %% [markdown]
# `sc.get.rank_genes_groups_df` gives one cluster's table. `logfoldchanges` is the posterior
# mean log2 fold change of the cluster's mean expression against the rest, `pvals` the
# posterior probability that the gene does *not* change by more than 1.19-fold and
# `pvals_adj` the expected false discovery rate of calling it (and every gene ranked above it
# by that probability), so `pvals_adj <= 0.05` are the calls.

# %%
largest = adata.obs["gmm"].value_counts().index[0]
table = sc.get.rank_genes_groups_df(adata, group=largest)
print(f"cluster {largest}: {(table['pvals_adj'] <= 0.05).sum()} genes called at 5 % FDR")
table.head(8)

# %% [markdown]
# For one comparison with every statistic, `model.differential_expression` returns a table
# indexed by gene (the columns scvi-tools users know, and more). Here: the two kinds of
# monocytes against each other, by the published labels.

# %%
de = model.differential_expression(
    adata, groupby="cell_type", group1="CD14+ Mono", group2="FCGR3A+ Mono", seed=0
)
columns = ["proba_de", "lfc_mean", "lfc_std", "scale1", "scale2", "is_de_fdr_0.05"]
de[columns].head(10)

# %% [markdown]
# Compare the top genes with the known markers above and with the cell-type table: the B-cell
# cluster, for instance, is topped by B-cell genes such as *MS4A1* and *CD79A*, and *CD14*,
# *LYZ* and *S100A8* separate the classical monocytes from the *FCGR3A* (CD16) ones. Genes
# found this way that are not textbook markers are candidates to follow up.
