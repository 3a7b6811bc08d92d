"""Scanpy-style diagnostic plots of a fitted model: training curves, latent usage, predictive check.

>>> scvae.pl.history(model)  # train/validation ELBO, reconstruction, KL; KL warm-up weight
>>> scvae.pl.latent_kl(model)  # KL per latent dimension; active units, posterior collapse
>>> scvae.pl.posterior_predictive(model, adata)  # observed vs simulated zeros, mean-variance

Every function takes keyword-only options, ``show`` (None: :data:`scanpy.settings.autoshow`)
and ``save`` (a file path; the format follows its suffix), and returns its matplotlib Axes
when ``show`` is False.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData

if TYPE_CHECKING:  # matplotlib and the models (torch) are imported where they are used
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from scvae.models._vae import VAEModel

__all__ = ["history", "latent_kl", "posterior_predictive", "posterior_predictive_stats"]

#: history columns (without the ``train_``/``validation_`` prefix) that ``history`` can plot;
#: ``"kl"`` is ``kl_z + kl_l``
HISTORY_KEYS = ("elbo", "reconstruction", "kl", "kl_z", "kl_l", "loss")
_LABELS = {
    "elbo": "ELBO",
    "reconstruction": "reconstruction  E_q[log p(x|z,l)]",
    "kl": "KL(q(z)||p(z)) + KL(q(l)||p(l))",
    "kl_z": "KL(q(z)||p(z))",
    "kl_l": "KL(q(l)||p(l))",
    "loss": "training loss (KL x weight)",
}
_TRAIN_COLOR, _VALIDATION_COLOR, _WEIGHT_COLOR = "C0", "C1", "0.45"


# ---------------------------------------------------------------------------------- helpers
def _check_vae(model: object, function: str) -> VAEModel:
    from scvae.models._vae import VAEModel

    if not isinstance(model, VAEModel):
        raise TypeError(
            f"scvae.pl.{function} needs a fitted scvae VAE (ZINBVAE, NBVAE, PoissonVAE or "
            f"GaussianVAE), got {type(model).__name__}."
        )
    if not model.is_trained:
        raise RuntimeError(f"{type(model).__name__} is not trained yet: call model.fit() first.")
    return model


def _axes(ax: Axes | Sequence[Axes] | None, n: int, *, panel_size: tuple[float, float]):
    """``n`` Axes: new ones side by side, or the given ones (checked)."""
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    if ax is None:
        fig, axs = plt.subplots(
            1, n, figsize=(panel_size[0] * n, panel_size[1]), squeeze=False, layout="constrained"
        )
        return fig, list(axs[0])
    axs = [ax] if isinstance(ax, Axes) else list(ax)
    if len(axs) != n or not all(isinstance(a, Axes) for a in axs):
        raise ValueError(
            f"ax must be {n} matplotlib Axes (one per panel), got {len(axs)} objects of types "
            f"{sorted({type(a).__name__ for a in axs})}."
        )
    return axs[0].figure, axs


def _show_or_save(fig: Figure, show: bool | None, save: str | Path | None) -> bool:
    """Save ``fig`` when asked, show it when asked; return whether it was shown."""
    if save is not None:
        fig.savefig(Path(save), dpi=150, bbox_inches="tight")
    if show is None:
        import scanpy as sc

        show = bool(sc.settings.autoshow)
    if show:
        import matplotlib.pyplot as plt

        plt.show()
    return show


# ---------------------------------------------------------------------------------- history
def history(
    model: VAEModel,
    *,
    keys: Sequence[str] = ("elbo", "reconstruction", "kl"),
    kl_weight: bool = True,
    skip_epochs: int = 0,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> list[Axes] | None:
    """Training curves from ``model.history``: one panel per term, train and validation.

    Each panel shows the per-cell mean of one term of the ELBO per epoch, on the training
    cells (solid) and on the held-out validation cells (dashed). Curves that keep rising
    have not converged: train longer. A validation curve that turns down while the training
    curve still rises is overfitting. During the KL warm-up the KL weight (grey, right axis)
    rises from 0 to 1 and the KL term is first allowed to grow, then pressed down; the ELBO
    shown is always the full one (weight 1). A dotted vertical line marks the best validation
    epoch, whose weights early stopping kept.

    Parameters
    ----------
    model
        A fitted VAE.
    keys
        Terms to plot, each a panel: ``"elbo"``, ``"reconstruction"``, ``"kl"`` (both KL
        terms), ``"kl_z"``, ``"kl_l"`` or ``"loss"`` (the objective minimised, KL times the
        warm-up weight).
    kl_weight
        Draw the KL warm-up weight on a right-hand axis of the first KL panel (of the last
        panel when no KL term is plotted).
    skip_epochs
        Leave out the first epochs, whose large values can squash the rest of the curves.
    ax
        One Axes per key to draw into; None makes a new figure.
    show
        Show the figure; None follows ``scanpy.settings.autoshow``.
    save
        Write the figure to this path (format from the suffix, e.g. ``"history.png"``).

    Returns
    -------
    list of matplotlib.axes.Axes or None
        One Axes per key when ``show`` is False (the KL-weight twin axis is reachable as
        ``ax.figure.axes``); None otherwise.

    Raises
    ------
    TypeError
        ``model`` is not a scvae VAE.
    RuntimeError
        The model is not trained.
    ValueError
        Unknown key, no history (e.g. a model saved without it) or too many skipped epochs.
    """
    model = _check_vae(model, "history")
    keys = [keys] if isinstance(keys, str) else list(keys)
    if not keys:
        raise ValueError("keys is empty: name at least one of " + ", ".join(HISTORY_KEYS) + ".")
    unknown = [k for k in keys if k not in HISTORY_KEYS]
    if unknown:
        raise ValueError(f"Unknown keys {unknown}; choose from {', '.join(HISTORY_KEYS)}.")
    frame = model.history
    if frame.empty or "train_elbo" not in frame:
        raise ValueError(
            f"{type(model).__name__}.history is empty: the model has no training record."
        )
    if not 0 <= skip_epochs < len(frame):
        raise ValueError(
            f"skip_epochs must be in [0, {len(frame)}) (epochs trained), got {skip_epochs}."
        )
    frame = frame.iloc[skip_epochs:]
    epochs = frame.index.to_numpy()
    fig, axs = _axes(ax, len(keys), panel_size=(4.2, 3.2))
    best = model.training.get("best_epoch")
    weight_panel = next((i for i, k in enumerate(keys) if k.startswith("kl")), len(keys) - 1)
    for i, (key, axis) in enumerate(zip(keys, axs, strict=True)):
        for stage, color, style in (
            ("train", _TRAIN_COLOR, "-"),
            ("validation", _VALIDATION_COLOR, "--"),
        ):
            values = _history_term(frame, stage, key)
            if values is not None:
                axis.plot(epochs, values, style, color=color, label=stage)
        if best is not None and best >= epochs[0]:
            axis.axvline(best, color="k", linestyle=":", linewidth=1, label=f"best epoch {best}")
        axis.set_xlabel("epoch")
        axis.set_ylabel("nats per cell")
        axis.set_title(_LABELS[key], fontsize="medium")
        if kl_weight and i == weight_panel and "kl_weight" in frame:
            twin = axis.twinx()
            twin.plot(
                epochs, frame["kl_weight"], color=_WEIGHT_COLOR, linewidth=1, label="KL weight"
            )
            twin.set_ylim(-0.02, 1.05)
            twin.grid(False)
            twin.set_ylabel("KL weight", color=_WEIGHT_COLOR)
            twin.tick_params(axis="y", colors=_WEIGHT_COLOR)
        if i == 0:
            axis.legend(fontsize="small", frameon=False)
    shown = _show_or_save(fig, show, save)
    return None if shown else axs


def _history_term(frame: pd.DataFrame, stage: str, key: str) -> np.ndarray | None:
    if key == "kl":
        parts = [f"{stage}_kl_z", f"{stage}_kl_l"]
        if not all(p in frame for p in parts):
            return None
        return (frame[parts[0]] + frame[parts[1]]).to_numpy()
    column = f"{stage}_{key}"
    return frame[column].to_numpy() if column in frame else None


# -------------------------------------------------------------------------------- latent_kl
def latent_kl(
    model: VAEModel,
    adata: AnnData | None = None,
    *,
    threshold: float = 0.01,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | None:
    """KL divergence of each latent dimension from the prior, sorted, with active units marked.

    Bars are ``E_x[KL(q(z_d | x) || N(0, 1))]`` per dimension ``d`` (nats, from
    :meth:`scvae.ZINBVAE.latent_kl`), largest first. A dimension is *active* (dark bar) when
    its posterior mean varies across cells, ``Cov_x(E[z_d | x]) > threshold`` (Burda et al.
    2016). Inactive dimensions (light bars, KL near 0) have collapsed onto the prior: the
    model ignores them, so the effective dimension of the embedding is the number of active
    units, and a smaller ``n_latent`` would do. The dashed line is ``threshold`` nats.

    Parameters
    ----------
    model
        A fitted VAE.
    adata
        Cells to average over (same genes and batches as training); None: the training data.
    threshold
        Activity above which a dimension counts as active (Burda et al. use 0.01).
    ax
        Axes to draw into; None makes a new figure.
    show
        Show the figure; None follows ``scanpy.settings.autoshow``.
    save
        Write the figure to this path (format from the suffix).

    Returns
    -------
    matplotlib.axes.Axes or None
        The Axes when ``show`` is False; None otherwise.

    Raises
    ------
    TypeError
        ``model`` is not a scvae VAE.
    RuntimeError
        The model is not trained.
    """
    model = _check_vae(model, "latent_kl")
    table = model.latent_kl(adata, threshold=threshold).sort_values("kl", ascending=False)
    n_latent = len(table)
    fig, (axis,) = _axes(ax, 1, panel_size=(max(3.5, 0.32 * n_latent + 1.5), 3.2))
    positions = np.arange(n_latent)
    colors = np.where(table["active"].to_numpy(), "C0", "#a6c8e4")
    axis.bar(positions, table["kl"].to_numpy(), color=colors)
    axis.axhline(threshold, color="k", linestyle="--", linewidth=1)
    axis.set_xticks(positions, [f"z{d}" for d in table.index], rotation=90, fontsize="small")
    axis.set_xlim(-0.6, n_latent - 0.4)
    axis.set_ylabel("mean KL to the prior (nats)")
    axis.set_xlabel("latent dimension (sorted)")
    n_active = int(table["active"].sum())
    axis.set_title(
        f"{n_active} of {n_latent} dimensions active (activity > {threshold:g})", fontsize="medium"
    )
    from matplotlib.patches import Rectangle

    axis.legend(
        handles=[
            Rectangle((0, 0), 1, 1, color="C0", label="active"),
            Rectangle((0, 0), 1, 1, color="#a6c8e4", label="inactive (collapsed)"),
        ],
        fontsize="small",
        frameon=False,
    )
    shown = _show_or_save(fig, show, save)
    return None if shown else axis


# --------------------------------------------------------------------- posterior_predictive
def posterior_predictive_stats(
    model: VAEModel,
    adata: AnnData | None = None,
    *,
    n_samples: int = 1,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-gene statistics of observed counts and of counts simulated from the model.

    Draws ``n_samples`` replicate data sets from the posterior predictive distribution with
    :meth:`scvae.ZINBVAE.sample` (``z, l ~ q(. | x)``, then ``x ~ p(x | z, l)``, one draw per
    cell) and computes, per gene, the fraction of zeros, the mean and the variance over cells,
    for the observed counts and for the simulated ones (averaged over the replicates).

    Parameters
    ----------
    model
        A fitted count VAE (ZINBVAE, NBVAE or PoissonVAE).
    adata
        Cells to check (the layer the model was trained on is read); None: the training data.
    n_samples
        Replicate data sets to simulate.
    seed
        Seeds the simulation.

    Returns
    -------
    pandas.DataFrame
        Indexed by gene: ``observed_zeros``, ``simulated_zeros``, ``observed_mean``,
        ``simulated_mean``, ``observed_var``, ``simulated_var``.
    """
    model = _check_count_model(model)
    if not isinstance(n_samples, int | np.integer) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
    observed = model._cells(adata).X.astype(np.float64)  # (N, G) CSR, validated as in fit
    n_cells = observed.shape[0]
    nonzero = np.asarray((observed != 0).sum(0), dtype=np.float64).ravel()  # (G,)
    obs_mean = np.asarray(observed.mean(0), dtype=np.float64).ravel()  # (G,)
    obs_sq = np.asarray(observed.multiply(observed).mean(0), dtype=np.float64).ravel()
    simulated = model.sample(adata, n_samples=n_samples, seed=seed)
    simulated = simulated.reshape(n_samples, n_cells, -1).astype(np.float64)  # (K, N, G)
    sim_mean = simulated.mean(1)  # (K, G)
    sim_var = simulated.var(1)  # (K, G)
    sim_zeros = (simulated == 0).mean(1)  # (K, G)
    return pd.DataFrame(
        {
            "observed_zeros": 1.0 - nonzero / n_cells,
            "simulated_zeros": sim_zeros.mean(0),
            "observed_mean": obs_mean,
            "simulated_mean": sim_mean.mean(0),
            "observed_var": np.maximum(obs_sq - obs_mean**2, 0.0),
            "simulated_var": sim_var.mean(0),
        },
        index=model.var_names,
    )


def _check_count_model(model: object) -> VAEModel:
    model = _check_vae(model, "posterior_predictive")
    if not model.observation.counts:
        raise ValueError(
            "The posterior predictive check compares simulated with observed counts, but a "
            "GaussianVAE models log-normalized values, not counts (it has no zeros to check). "
            "Use a count model: ZINBVAE, NBVAE or PoissonVAE."
        )
    return model


def posterior_predictive(
    model: VAEModel,
    adata: AnnData | None = None,
    *,
    n_samples: int = 1,
    seed: int = 0,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> list[Axes] | None:
    """Posterior predictive check of a count model: does simulated data look like the real data?

    The model simulates a replicate of every cell (:func:`posterior_predictive_stats`) and two
    per-gene summaries are compared, one dot per gene:

    * **fraction of zeros**, observed (x) against simulated (y). Dots on the diagonal: the
      model reproduces the dropouts. Dots below it: the data has more zeros than the model
      makes (too little zero inflation or overdispersion); above: too many.
    * **mean-variance** on log-log axes, observed (blue) and simulated (orange) overlaid, with
      the Poisson line ``variance = mean``. Counts of single-cell data lie above the line
      (overdispersion); a Poisson model's simulated dots hug it, a negative binomial's follow
      the observed cloud.

    Parameters
    ----------
    model
        A fitted count VAE (ZINBVAE, NBVAE or PoissonVAE).
    adata
        Cells to check; None: the training data.
    n_samples
        Replicate data sets to simulate (averaged per gene).
    seed
        Seeds the simulation.
    ax
        Two Axes to draw into; None makes a new figure.
    show
        Show the figure; None follows ``scanpy.settings.autoshow``.
    save
        Write the figure to this path (format from the suffix).

    Returns
    -------
    list of matplotlib.axes.Axes or None
        The two Axes (zeros, mean-variance) when ``show`` is False; None otherwise.

    Raises
    ------
    TypeError
        ``model`` is not a scvae VAE (PPCA and GMM simulate no counts).
    ValueError
        ``model`` is a GaussianVAE (it models log-normalized values, not counts).
    """
    stats = posterior_predictive_stats(model, adata, n_samples=n_samples, seed=seed)
    fig, (zeros_ax, mv_ax) = _axes(ax, 2, panel_size=(3.8, 3.6))

    zeros_ax.scatter(stats["observed_zeros"], stats["simulated_zeros"], s=4, alpha=0.5, c="C0")
    zeros_ax.plot([0, 1], [0, 1], color="k", linewidth=1, linestyle="--", label="y = x")
    zeros_ax.set(
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.02),
        xlabel="observed fraction of zeros",
        ylabel="simulated fraction of zeros",
    )
    zeros_ax.set_aspect("equal")
    zeros_ax.set_title("zeros per gene", fontsize="medium")
    zeros_ax.legend(fontsize="small", frameon=False, loc="upper left")

    for which, color in (("observed", "C0"), ("simulated", "C1")):
        mean, var = stats[f"{which}_mean"], stats[f"{which}_var"]
        keep = (mean > 0) & (var > 0)
        mv_ax.scatter(mean[keep], var[keep], s=4, alpha=0.4, c=color, label=which)
    positive = stats["observed_mean"][stats["observed_mean"] > 0]
    if len(positive):
        line = np.array([positive.min(), positive.max()])
        mv_ax.plot(line, line, color="k", linewidth=1, linestyle="--", label="Poisson: var = mean")
    mv_ax.set(xscale="log", yscale="log", xlabel="mean count per cell", ylabel="variance")
    mv_ax.set_title("mean-variance per gene", fontsize="medium")
    mv_ax.legend(fontsize="small", frameon=False, markerscale=3)
    shown = _show_or_save(fig, show, save)
    return None if shown else [zeros_ax, mv_ax]
