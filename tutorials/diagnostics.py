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
# # Diagnostics: is my model any good?
#
# A fitted model always returns an embedding, even when training went wrong. Three plots in
# `scvae.pl` tell you whether to trust it:
#
# 1. **training curves** (`scvae.pl.history`): has training converged, is it overfitting?
# 2. **KL per latent dimension** (`scvae.pl.latent_kl`): how many of the latent dimensions
#    does the model actually use?
# 3. **posterior predictive check** (`scvae.pl.posterior_predictive`): does data simulated by
#    the model look like the real data?
#
# We look at each on the PBMC 3k data set that ships with scvae.

# %%
import numpy as np
import scanpy as sc

import scvae

sc.settings.set_figure_params(dpi=80, facecolor="white", ipython_format="png")

adata = scvae.datasets.pbmc3k()
log_norm = adata.copy()
sc.pp.normalize_total(log_norm, target_sum=1e4)
sc.pp.log1p(log_norm)
sc.pp.highly_variable_genes(log_norm, flavor="seurat", n_top_genes=1000)
adata = adata[:, log_norm.var["highly_variable"]].copy()  # raw counts, 1,000 genes
adata

# %% [markdown]
# We fit scVI (`ZINBVAE`) with a deliberately generous **30 latent dimensions**, three times
# the usual 10, to see what the model does with dimensions it does not need.

# %%
model = scvae.ZINBVAE(adata, n_latent=30)
model.fit(max_epochs=60, seed=0, progress_bar=False)

# %% [markdown]
# ## 1. Training curves
#
# `fit()` trains on 90 % of the cells and keeps 10 % aside as a validation set. After every
# pass over the data (an *epoch*) it records, per cell:
#
# * the **ELBO**, the quantity training maximizes (higher is better): a lower bound on the log
#   probability of the cell's counts under the model;
# * its two parts: the **reconstruction** term, how well the decoded cell matches the observed
#   counts, and the **KL** term, how far each cell's posterior is from the prior: the price
#   paid for information stored in the latent space. ELBO = reconstruction - KL.
#
# Train (solid) and validation (dashed) curves should rise and level off together. A gap
# that keeps growing, with the validation curve turning down, means overfitting; curves
# still rising at the end mean training was stopped too early. During the **KL warm-up** (grey
# line, right axis) the weight of the KL term in the objective rises from 0 to 1: early on the
# model may store information freely, then it must pay for it, so the KL first rises, then
# falls. The dotted line marks the best validation epoch, whose weights `fit()` kept.

# %%
scvae.pl.history(model, skip_epochs=2)

# %% [markdown]
# In this run the training ELBO keeps rising while the validation ELBO levels off after a few
# dozen epochs: from there on the model improves mostly on the cells it trains on. Early
# stopping keeps the weights of the best validation epoch, so nothing needs to be done.

# %% [markdown]
# The first two epochs were left out (`skip_epochs=2`): their values are so low that they
# would squash the rest of the curves. The numbers are in `model.history`, a table with one
# row per epoch:

# %%
model.history[["train_elbo", "validation_elbo", "validation_kl_z", "kl_weight"]].tail(3)

# %% [markdown]
# ## 2. KL per latent dimension: active units and posterior collapse
#
# For each latent dimension, `latent_kl` averages over cells how far the cell's posterior is
# from the prior `N(0, 1)`, in nats. A dimension that the model uses moves each cell's
# posterior to a different place: large KL. A dimension it does not use keeps every cell's
# posterior at the prior: KL near 0, the dimension carries no information about the cell.
# This is called **posterior collapse**. It is not a failure: it is the model telling you that
# it needs fewer dimensions than you gave it. The second column, `activity`, is the variance
# across cells of the posterior mean (Burda et al. 2016); a dimension is counted `active` when
# it exceeds 0.01.

# %%
kl = model.latent_kl()
kl.sort_values("kl", ascending=False).head(12).round(3)

# %% [markdown]
# The sorted bars show how the information is shared out. Dimensions at zero would be
# collapsed; here none is: the model finds some use for all 30, with two or three standing out
# and the rest carrying a few tenths of a nat each. Extra dimensions are not harmful, but they
# do not add structure either: the embedding with 10 dimensions in the
# [PBMC 3k tutorial](pbmc3k.ipynb) separates the same cell types.

# %%
scvae.pl.latent_kl(model)

# %% [markdown]
# ### Posterior collapse where we know the answer
#
# On real data we do not know how many dimensions the cells need. Simulated data tell us:
# `scvae.datasets.simulate` draws counts from scVI's own generative model with a **2-dimensional**
# true latent space (4 cell populations). We fit a model with 10 dimensions and train it long
# (250 epochs; the data are small).

# %%
sim = scvae.datasets.simulate(n_cells=1000, n_genes=200, n_clusters=4, n_latent=2, seed=0)
sim_model = scvae.ZINBVAE(sim, n_latent=10)
sim_model.fit(max_epochs=250, seed=0, progress_bar=False, early_stopping=False)
scvae.pl.latent_kl(sim_model)

# %% [markdown]
# Here the pattern is clear: a few dimensions carry the information, and the rest have almost
# collapsed onto the prior, their KL a small fraction of the informative ones. Read the
# heights, not only the colours: the activity criterion keeps counting a dimension as active
# as long as its posterior mean still moves a little from cell to cell, and collapsing
# dimensions get there only slowly. The model keeps a few more dimensions than the 2 of the
# truth because the simulator maps its 2-dimensional structure nonlinearly into gene
# expression, which the decoder finds easier to bend with a little extra room.

# %% [markdown]
# ## 3. Posterior predictive check
#
# If the model is right, data simulated from it should look like the data it was fitted to.
# `posterior_predictive` simulates one new count matrix: for each cell, draw its latent state
# from the posterior (given that cell's counts), then draw counts from the model's negative
# binomial with zero inflation. Then it compares two summaries per gene, one dot per gene:
#
# * **fraction of zeros**, observed (x-axis) against simulated (y-axis). On the diagonal the
#   model reproduces how often a gene is not detected. Below the diagonal the data have more
#   zeros than the model makes; above, fewer.
# * **mean-variance**: each gene's mean and variance across cells, log-log, observed (blue)
#   and simulated (orange). The dashed line is variance = mean, what Poisson noise alone would
#   give. Single-cell counts lie above it (*overdispersion*: biological variation between cells
#   and bursty transcription). The orange cloud should overlap the blue one.

# %%
scvae.pl.posterior_predictive(model, n_samples=2, seed=0)

# %% [markdown]
# How to read it here: the zeros lie close to the diagonal, so the model reproduces how often
# each gene goes undetected (if anything, it makes slightly too many zeros for genes detected
# in about half of the cells). In the mean-variance panel the simulated genes follow the
# observed trend for well-expressed genes, but for rarely detected genes the simulated
# variance falls below the observed one, towards the Poisson line: a few cells with unusually
# high counts of such a gene give it a large variance, and the model smooths them away. (These
# genes were chosen as *highly variable*, which favours exactly such genes.) That is a
# limitation to remember: do not use the model's simulated or denoised values to study rare,
# very high counts of lowly expressed genes.
#
# For contrast, a model with a simpler noise: `PoissonVAE` assumes that, given the latent
# state, counts vary only by Poisson sampling noise (no extra variation between cells, no
# extra zeros).

# %%
poisson = scvae.PoissonVAE(adata, n_latent=10)
poisson.fit(max_epochs=40, seed=0, progress_bar=False)
scvae.pl.posterior_predictive(poisson, n_samples=2, seed=0)

# %% [markdown]
# Compare the two figures panel by panel. The Poisson model's simulated variance hugs the
# Poisson line even more closely than ZINB's: all variability between cells must pass through
# its latent dimensions. Its zeros can be off the diagonal too; dots below it mean the model
# makes too few zeros. The numbers behind the plots, per gene, are one call away
# (`scvae.pl.posterior_predictive_stats`): below, the mean distance of the zeros from the
# diagonal and the median ratio of simulated to observed variance (1 is perfect).

# %%
for name, m in (("ZINBVAE", model), ("PoissonVAE", poisson)):
    stats = scvae.pl.posterior_predictive_stats(m, n_samples=2, seed=0)
    zeros_gap = (stats["simulated_zeros"] - stats["observed_zeros"]).abs().mean()
    var_ratio = np.median(stats["simulated_var"] / stats["observed_var"])
    print(f"{name:11s} mean |zeros gap| {zeros_gap:.3f}, median variance ratio {var_ratio:.2f}")

# %% [markdown]
# ## Checklist
#
# * **Curves**: levelled off, validation close to training? Otherwise train longer
#   (`max_epochs`) or, if validation turns down, stop earlier (the default early stopping
#   does that).
# * **KL per dimension**: bars at zero are dimensions the model does not need; you can lower
#   `n_latent`. If *all* dimensions collapse, the model ignores the cells: check the input
#   (raw counts?) and train longer.
# * **Posterior predictive**: zeros on the diagonal and variance in the observed cloud? Where
#   not, the model misses something about those genes: try a richer noise model (ZINB or NB
#   rather than Poisson) and keep the limitation in mind when you use simulated or denoised
#   values.
