"""Marker genes from a trained VAE, in scanpy's structure: ``scvae.tl.rank_genes_groups``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from scvae import checks
from scvae.data import _label_string, check_writable
from scvae.models._de import REST, _group_labels, posterior_fdr

__all__ = ["rank_genes_groups"]

#: options written to ``params`` in their own form (labels as strings)
_LISTED = ("batches", "transform_covariates")


def rank_genes_groups(
    adata: AnnData,
    model: Any,
    groupby: str,
    *,
    groups: Sequence[Any] | Literal["all"] = "all",
    reference: Any = "rest",
    n_genes: int | None = None,
    mode: Literal["change", "vanilla"] = "change",
    delta: float | None = 0.25,
    fdr_target: float = 0.05,
    batch_correction: bool = True,
    batches: Sequence[Any] | None = None,
    transform_covariates: Mapping[str, Any] | None = None,
    n_samples: int = 10,
    key_added: str = "rank_genes_groups",
    seed: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """Rank genes of each group against the rest (or a reference) by the model's posterior.

    Runs :meth:`ZINBVAE.differential_expression <scvae.models._de.DifferentialExpression.\
differential_expression>` (batch-corrected posterior of each group's mean expression) and
    writes ``adata.uns[key_added]`` in the structure of :func:`scanpy.tl.rank_genes_groups`,
    so that :func:`scanpy.get.rank_genes_groups_df`, :func:`scanpy.pl.rank_genes_groups` and
    :func:`scanpy.pl.rank_genes_groups_dotplot` read it unchanged. For each group, genes are
    ordered by ``scores``, best marker (most up-regulated) first. The fields:

    * ``names``: gene names in rank order; a record array with one field per group;
    * ``scores``: ``auc``, the probability that a random cell of the group expresses the gene
      more than a random cell of the reference (ties count half), in batch-corrected
      log-normalized counts (``log1p`` of counts per 10k, each count times the model's
      correction factor to the average batch). This is the Mann-Whitney statistic of
      scanpy's ``method="wilcoxon"``: on data of one batch the genes come in the same order
      as there. It ranks markers by how consistently the group is above the rest, where the
      LFC of the means favours genes driven by a few highly expressing cells;
    * ``logfoldchanges``: ``lfc_mean``, the posterior mean log2 fold change of the groups'
      mean expression;
    * ``pvals``: ``proba_not_de``, the posterior probability that the gene does *not*
      change by more than ``delta`` (a local false discovery rate, not a p-value);
    * ``pvals_adj``: the posterior expected false discovery rate of calling this gene and
      every gene with a higher ``proba_de`` (a Bayesian q-value): ``pvals_adj <=
      fdr_target`` are the genes called ``is_de_fdr_<target>``;
    * ``pts`` and ``pts_rest``: fraction of cells with a count, in the group and in the
      reference (DataFrames, genes x groups);
    * ``params``: ``groupby``, ``reference``, ``method`` (``"scvae_change"`` or
      ``"scvae_vanilla"``), ``use_raw`` (False), ``layer``, ``corr_method`` (``"posterior
      expected FDR"``) and the DE options.

    Writes nothing else, and nothing at all if an error is raised.

    Parameters
    ----------
    adata
        The cells (same genes and batches as the model's training data; not a view).
    model
        A trained count VAE (:class:`~scvae.ZINBVAE`, :class:`~scvae.NBVAE`,
        :class:`~scvae.PoissonVAE`, :class:`~scvae.GMVAE`).
    groupby
        ``obs`` column of groups (e.g. ``"leiden"`` or ``"cell_type"``).
    groups
        Groups to report, or ``"all"``.
    reference
        ``"rest"`` (every other cell) or one group to compare each group with.
    n_genes
        Genes per group to store; None: every gene.
    mode, delta, fdr_target, batch_correction, batches, transform_covariates, n_samples, seed
        As in ``differential_expression``.
    key_added
        ``uns`` key of the result.
    copy
        Write into a copy of ``adata`` and return it (works on a view) instead of in place.

    Returns
    -------
    AnnData or None
        The copy with the result when ``copy=True``, else None.
    """
    if checks.boolean("copy", copy):
        adata = adata.copy()
    check_writable(adata, copy_option=True)
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"key_added must be a non-empty string, got {key_added!r}.")
    if n_genes is not None:
        n_genes = min(checks.positive_int("n_genes", n_genes), model.setup.n_genes)
    options = {
        "mode": mode,
        "delta": delta,
        "fdr_target": fdr_target,
        "batch_correction": batch_correction,
        "batches": batches,
        "transform_covariates": transform_covariates,
        "n_samples": n_samples,
        "seed": seed,
    }
    if reference == REST:
        table = model.differential_expression(adata, groupby=groupby, **options)
        if "group1" not in table:  # only two groups: one comparison, no group columns
            raise ValueError(
                f"adata.obs[{groupby!r}] has two groups; rank them against each other with "
                f"reference=<one of them>."
            )
        per_group = {name: t for name, t in table.groupby("group1", sort=False)}
    else:
        per_group = {}
        reference_name = _label_string(reference)
        for name in sorted(set(_group_labels(adata, groupby)) - {None}):
            if name != reference_name:
                per_group[name] = model.differential_expression(
                    adata, groupby=groupby, group1=name, group2=reference, **options
                )
    if groups != "all":
        wanted = [str(g) for g in ([groups] if isinstance(groups, str) else groups)]
        unknown = [g for g in wanted if g not in per_group]
        if unknown:
            raise KeyError(
                f"groups {unknown} are not compared groups of adata.obs[{groupby!r}] "
                f"(compared: {list(per_group)})."
            )
        per_group = {g: per_group[g] for g in wanted}
    adata.uns[key_added] = _scanpy_structure(
        per_group,
        n_genes=n_genes,
        params={
            "groupby": groupby,
            "reference": str(reference),
            "method": f"scvae_{mode}",
            "use_raw": False,
            "layer": model.setup.layer,
            "corr_method": "posterior expected FDR",
            **{k: v for k, v in options.items() if v is not None and k not in _LISTED},
            **({} if batches is None else {"batches": [str(b) for b in batches]}),
            **(
                {}
                if not transform_covariates
                else {"transform_covariates": {str(k): v for k, v in transform_covariates.items()}}
            ),
            "model": type(model).__name__,
        },
    )
    return adata if copy else None


def _scanpy_structure(
    per_group: dict[str, pd.DataFrame], *, n_genes: int | None, params: dict[str, Any]
) -> dict[str, Any]:
    """``uns["rank_genes_groups"]`` as scanpy writes it, from one DE table per group."""
    names, fields = list(per_group), {k: [] for k in ("names", "scores", "logfoldchanges")}
    fields |= {"pvals": [], "pvals_adj": []}
    pts, pts_rest = {}, {}
    for table in per_group.values():
        genes = table.index.to_numpy()
        score = table["auc"].to_numpy()
        q = posterior_fdr(table["proba_de"].to_numpy())
        order = np.argsort(-score, kind="stable")[:n_genes]
        fields["names"].append(genes[order].astype(object))
        fields["scores"].append(score[order].astype(np.float32))
        fields["logfoldchanges"].append(table["lfc_mean"].to_numpy()[order].astype(np.float32))
        fields["pvals"].append(table["proba_not_de"].to_numpy()[order])
        fields["pvals_adj"].append(q[order])
    for name, table in per_group.items():
        pts[name] = table["non_zeros_proportion1"]
        pts_rest[name] = table["non_zeros_proportion2"]
    out: dict[str, Any] = {"params": params}
    for field, columns in fields.items():
        dtype = [(n, "O" if field == "names" else columns[0].dtype) for n in names]
        out[field] = np.rec.fromarrays(columns, dtype=dtype)
    out["pts"] = pd.DataFrame(pts)
    out["pts_rest"] = pd.DataFrame(pts_rest)
    return out
