"""What a trained VAE answers: expression, scores, samples and diagnostics of its posterior.

:class:`VAEQueries` is mixed into :class:`~scvae.models._vae.VAEModel`. Each method runs the
trained module over :class:`~scvae.minibatch.Minibatch` chunks of the cells in eval mode
(``self._minibatches``) under a forked, seeded RNG, so that the result depends only on the
model, the cells and ``seed``; memory is the output plus one chunk.

The host class provides ``_trained_module()``, ``_cells(adata)``, ``_minibatches(data,
batch_size)``, ``setup``, ``config``, ``device``, ``observation``, ``var_names``,
``batch_categories`` and ``_obs_names``.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from scvae import checks
from scvae.data import check_writable
from scvae.minibatch import Covariates, Minibatch
from scvae.module.vae import VAEModule

__all__ = ["VAEQueries"]

# Elements of one (K, B, G) intermediate tensor allowed when scoring (bounds scoring memory;
# on the CPU larger blocks were slower: 2**25 took 2.4x as long as 2**23 on PBMC 3k).
_SCORING_BUDGET = 2**23


class VAEQueries:
    """Posterior and generative queries of a trained VAE (see the module docstring)."""

    @torch.inference_mode()
    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        *,
        gene_list: Sequence[str] | None = None,
        transform_batch: Any = None,
        transform_covariates: Mapping[str, Any] | None = None,
        library_size: float | Literal["latent"] = 1e4,
        n_samples: int = 1,
        layer: str | None = None,
        batch_size: int = 256,
        seed: int = 0,
    ) -> pd.DataFrame | None:
        """Denoised expression: ``library_size * rho(z, s)``, averaged over posterior draws.

        For :class:`GaussianVAE` it is the decoded mean ``mu(z, s)`` in its input space
        (log-normalized by default) and ``library_size`` does not apply.

        Parameters
        ----------
        adata
            Cells (None: the training data).
        gene_list
            Genes to return (names of :attr:`var_names`); None: all.
        transform_batch
            Decode every cell as if it came from this batch (a label as in
            ``adata.obs[batch_key]``, string or number), or from each of several batches and
            average: batch-corrected expression. None decodes each cell with its own batch.
        transform_covariates
            Decode every cell as if it had these covariate values, ``{key: value}``: a
            category (as in ``adata.obs[key]``) of a categorical covariate, a number in the
            column's own units of a continuous one (standardized inside). Covariates not named
            keep each cell's own value; None keeps them all.
        library_size
            Scale of the proportions ``rho``: a number (1e4: counts per 10k), or ``"latent"``
            for each cell's own library (posterior mean of ``l``, or the observed total when
            ``library="observed"``): the expected counts ``mu``.
        n_samples
            1: decode the posterior mean of ``z``. More: average over that many draws of
            ``z ~ q(z | x, s)`` (and of ``l`` with ``library_size="latent"``).
        layer
            Write the result to ``adata.layers[layer]`` (float32, every gene) instead of
            returning it; ``adata`` must then be given and not be a view.
        batch_size
            Cells per forward pass: memory is the output plus one chunk of this many cells.
        seed
            Seeds the draws when ``n_samples > 1``.

        Returns
        -------
        pandas.DataFrame or None
            Cells x genes, float32, indexed by ``obs_names`` with the gene names as columns;
            None when written to ``layer``.
        """
        module = self._trained_module()
        n_samples = checks.positive_int("n_samples", n_samples)
        if layer is not None:
            if adata is None:
                raise ValueError("layer= writes into adata.layers: pass the adata to write to.")
            if gene_list is not None:
                raise ValueError("A layer holds every gene: pass gene_list=None with layer=.")
            check_writable(adata)
        genes = self._gene_positions(gene_list)
        if isinstance(library_size, str) and library_size != "latent":
            raise ValueError(f"library_size must be a number or 'latent', got {library_size!r}.")
        if not isinstance(library_size, str):
            checks.fraction("library_size", library_size, low=0.0, high=np.inf, include_low=False)
        self._covariate_values(transform_covariates)  # a bad key or value fails before work
        data = self._cells(adata)
        codes = self._transform_codes(transform_batch)
        latent_library = library_size == "latent" and module.observation.counts
        scale = 1.0 if library_size == "latent" else float(library_size)
        out = np.empty((data.X.shape[0], len(genes)), dtype=np.float32)  # the output itself
        index = torch.as_tensor(genes, device=self.device)
        start = 0
        with _seeded(seed, self.device):
            for batch in self._minibatches(data, batch_size):
                posterior = module.encode(batch)
                decode_as = [batch.batch_index] if not codes else [
                    batch.batch_index.new_full((batch.n_cells,), code) for code in codes
                ]  # fmt: skip
                covariates = self._decode_covariates(batch, transform_covariates)
                total = torch.zeros(batch.n_cells, len(genes), device=self.device)
                for _ in range(n_samples):
                    z, log_l = _posterior_point(module, batch, posterior, draw=n_samples > 1)
                    for b in decode_as:
                        expr = module.denoised(
                            z, b, library_size=scale, covariates=covariates
                        ).index_select(-1, index)
                        total += expr * torch.exp(log_l) if latent_library else expr
                total /= n_samples * len(decode_as)
                out[start : start + batch.n_cells] = total.cpu().numpy()
                start += batch.n_cells
        if layer is not None:
            adata.layers[layer] = out
            return None
        obs_names = adata.obs_names if adata is not None else self._obs_names
        return pd.DataFrame(out, index=pd.Index(obs_names), columns=self.var_names[genes])

    def _decode_covariates(
        self, batch: Minibatch, values: Mapping[str, Any] | None
    ) -> Covariates | None:
        """The covariates to decode ``batch`` under: ``batch.covariates`` with those named in
        ``values`` (``{key: category or number in original units}``) set for every cell.

        Parameters
        ----------
        batch
            The cells, with their own covariates (None for a model without them).
        values
            Covariate values to impose (validated as in ``transform_covariates``); None or
            ``{}`` keeps each cell's own.

        Returns
        -------
        Covariates or None
            What :meth:`VAEModule.decode` (``denoised``, ``generative``) takes as
            ``covariates``.
        """
        categorical, continuous = self._covariate_values(values)
        own = batch.covariates
        if own is None or not (categorical or continuous):
            return own
        return _with_values(own, categorical, continuous)

    def _covariate_values(
        self, values: Mapping[str, Any] | None
    ) -> tuple[dict[int, int], dict[int, float]]:
        """Validated ``{key: value}``: codes by categorical column, standardized values by
        continuous column.

        Raises
        ------
        TypeError
            ``values`` is not a mapping, or a continuous value is not a number.
        KeyError
            A key that is not a covariate of the model (the message lists them).
        ValueError
            An unknown category (the message lists the known ones), a non-finite number.
        """
        if values is None:
            return {}, {}
        if not isinstance(values, Mapping):
            raise TypeError(
                "Covariate values must be a dict {covariate key: value}, got "
                f"{type(values).__name__}."
            )
        setup = self.setup.covariates
        categorical: dict[int, int] = {}
        continuous: dict[int, float] = {}
        for key, value in values.items():
            if key in setup.categorical_keys:
                categorical[setup.categorical_keys.index(key)] = setup.category_code(key, value)
            elif key in setup.continuous_keys:
                number = _finite_number(key, value)
                continuous[setup.continuous_keys.index(key)] = float(setup.standardize(key, number))
            else:
                raise KeyError(self._unknown_covariate(key))
        return categorical, continuous

    def _unknown_covariate(self, key: object) -> str:
        keys = self.setup.covariates.keys
        known = (
            f"its covariates are {', '.join(map(repr, keys))}"
            if keys
            else "it has none beyond the batch"
        )
        hint = " (the batch is set with transform_batch)" if key == self.setup.batch_key else ""
        return f"{key!r} is not a covariate of this model: {known}{hint}."

    def _gene_positions(self, gene_list: Sequence[str] | None) -> np.ndarray:
        """Positions of ``gene_list`` in :attr:`var_names` (all genes for None)."""
        if gene_list is None:
            return np.arange(self.setup.n_genes)
        names = [gene_list] if isinstance(gene_list, str) else [str(g) for g in gene_list]
        positions = self.var_names.get_indexer(names)
        missing = [n for n, p in zip(names, positions, strict=True) if p < 0]
        if missing:
            raise KeyError(
                f"gene_list has {len(missing)} genes the model was not trained on: "
                f"{', '.join(map(repr, missing[:10]))}{' ...' if len(missing) > 10 else ''}."
            )
        return positions

    def _batch_label_codes(self, batch: Any) -> list[int]:
        """Codes of one batch label (string or number) or of a sequence of labels."""
        labels = [batch] if isinstance(batch, str) or np.ndim(batch) == 0 else list(batch)
        return [self.setup.batch_code(label) for label in labels]

    def _transform_codes(self, transform_batch: Any) -> list[int]:
        """Batch codes to decode under: [] for each cell's own batch."""
        if transform_batch is None:
            return []
        codes = self._batch_label_codes(transform_batch)
        if not codes:
            raise ValueError("transform_batch is empty; give a batch, several, or None.")
        return codes

    def _batch_codes(self, batch: Any, n_cells: int) -> torch.Tensor:
        """Codes of one batch label for every cell, or of one label per cell; None: the first."""
        one_label = batch is None or isinstance(batch, str) or np.ndim(batch) == 0
        codes = [0] if batch is None else self._batch_label_codes(batch)
        if one_label:
            codes = codes * n_cells
        if len(codes) != n_cells:
            raise ValueError(f"batch has {len(codes)} labels for n_cells={n_cells}.")
        return torch.tensor(codes, dtype=torch.int64, device=self.device)

    @torch.inference_mode()
    def elbo(
        self,
        adata: AnnData | None = None,
        *,
        n_samples: int = 10,
        batch_size: int = 256,
        seed: int = 0,
    ) -> np.ndarray:
        """Per-cell ELBO (nats), the reconstruction term averaged over ``n_samples`` draws.

        Parameters
        ----------
        adata
            Cells (same genes, known batches). None: the training data.
        n_samples
            Posterior draws averaged per cell (a positive integer).
        batch_size
            Cells per forward pass.
        seed
            Seeds the draws.

        Returns
        -------
        np.ndarray
            (n_cells,) ``E_q[log p(x|z,l)] - KL(q(z)||p(z)) - KL(q(l)||p(l))``.
        """
        module = self._trained_module()
        n_samples = checks.positive_int("n_samples", n_samples)
        data = self._cells(adata)
        out = []
        with _seeded(seed, self.device):
            for batch in self._minibatches(data, batch_size):
                total = torch.zeros(batch.n_cells, device=self.device)
                for _ in range(n_samples):
                    total += module.loss(batch).elbo
                out.append((total / n_samples).cpu())
        return torch.cat(out).double().numpy()

    @torch.inference_mode()
    def marginal_log_likelihood(
        self, adata: AnnData | None = None, *, n_samples: int = 100, seed: int = 0
    ) -> np.ndarray:
        """Importance-weighted (IWAE) estimate of ``log p(x)`` per cell.

        ``log (1/K) sum_k p(x, z_k, l_k) / q(z_k, l_k | x)`` with ``K = n_samples`` draws from
        the amortized posterior: a lower bound on ``log p(x)`` that tightens as K grows and is
        at least the ELBO in expectation.

        Parameters
        ----------
        adata
            Cells (same genes, known batches). None: the training data; score held-out cells
            with ``adata[model.validation_indices]``.
        n_samples
            Importance samples ``K`` per cell (a positive integer).
        seed
            Seeds the draws.

        Returns
        -------
        np.ndarray
            (n_cells,) float64, nats.
        """
        module = self._trained_module()
        n_samples = checks.positive_int("n_samples", n_samples)
        data = self._cells(adata)
        n_genes = self.setup.n_genes
        cells_per_chunk = max(1, min(256, _SCORING_BUDGET // n_genes))
        samples_per_block = max(1, min(n_samples, _SCORING_BUDGET // (cells_per_chunk * n_genes)))
        out = []
        with _seeded(seed, self.device):
            for batch in self._minibatches(data, cells_per_chunk):
                posterior = module.encode(batch)  # one pass of the encoders for all draws
                log_w = []
                for start in range(0, n_samples, samples_per_block):
                    k = min(samples_per_block, n_samples - start)
                    log_w.append(
                        module.log_importance_weights(
                            batch, n_samples=k, posterior=posterior
                        ).double()
                    )
                out.append(VAEModule.iwae_estimate(torch.cat(log_w)).cpu())
        return torch.cat(out).numpy()

    @torch.inference_mode()
    def sample(
        self,
        adata: AnnData | None = None,
        *,
        n_samples: int = 1,
        batch_size: int = 256,
        seed: int = 0,
    ) -> np.ndarray:
        """Posterior predictive counts: ``z, l ~ q(. | x, s)``, then ``x ~ p(x | z, l, s)``.

        Parameters
        ----------
        adata
            Cells (same genes, known batches). None: the training data.
        n_samples
            Draws per cell.
        batch_size
            Cells per forward pass.
        seed
            Seeds the draws.

        Returns
        -------
        np.ndarray
            (n_cells, n_genes) for ``n_samples=1``, else (n_samples, n_cells, n_genes); float32.
        """
        module = self._trained_module()
        n_samples = checks.positive_int("n_samples", n_samples)
        data = self._cells(adata)
        out = []
        with _seeded(seed, self.device):
            for batch in self._minibatches(data, batch_size):
                inf = module.inference(batch, n_samples=n_samples)
                px = module.generative(inf.z, inf.log_library, batch.batch_index, batch.covariates)
                out.append(px.sample().cpu())  # (K, B, G)
        counts = torch.cat(out, dim=1).numpy()
        return counts[0] if n_samples == 1 else counts

    @torch.inference_mode()
    def generate(
        self,
        n_cells: int,
        *,
        batch: Any = None,
        covariates: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> AnnData:
        """Ancestral sampling from the prior: ``z ~ p(z)``, ``l ~ p(l | s)``, ``x ~ p(x|z,l,s)``.

        ``p(z)`` is ``N(0, I)``, or the mixture of :class:`GMVAE` (``y ~ pi``, then ``z | y``).

        Parameters
        ----------
        n_cells
            Number of cells to draw.
        batch
            One batch label for every cell (string or number, as in ``adata.obs[batch_key]``),
            or one per cell; None: the first batch.
        covariates
            For a model with covariates beyond the batch: ``{key: value}`` for every cell, as
            ``transform_covariates`` of :meth:`get_normalized_expression`. Those not named
            take the first category, or the training mean.
        seed
            Seeds the draw.

        Returns
        -------
        AnnData
            Counts in ``X`` (CSR), ``obs["batch"]``, the drawn ``z`` in ``obsm["X_latent"]`` and
            library sizes in ``obs["library_size"]``; with covariates also ``obs[<key>]`` for
            each.
        """
        module = self._trained_module()
        n_cells = checks.positive_int("n_cells", n_cells)
        codes = self._batch_codes(batch, n_cells)
        categorical, continuous = self._covariate_values(covariates)
        decode_under = self._prior_covariates(n_cells, categorical, continuous)
        module.to(self.device).eval()
        with _seeded(seed, self.device):
            z = module.sample_prior_z(n_cells, device=self.device)  # (N, L)
            log_library = module.library_prior(codes).sample()  # (N, 1)
            x = module.generative(z, log_library, codes, decode_under).sample()  # (N, G)
        x = x.cpu().numpy()
        categories = self.batch_categories
        out = AnnData(
            X=sp.csr_matrix(x) if self.observation.counts else x,
            obs=pd.DataFrame(
                {
                    "batch": pd.Categorical.from_codes(codes.cpu().numpy(), categories),
                    "library_size": torch.exp(log_library).squeeze(-1).cpu().numpy(),
                },
                index=[f"generated_{i}" for i in range(n_cells)],
            ),
            var=pd.DataFrame(index=self.var_names),
        )
        out.obsm["X_latent"] = z.cpu().numpy()
        for key, column in self._covariate_columns(decode_under).items():
            out.obs[key] = column
        return out

    def _prior_covariates(
        self, n_cells: int, categorical: dict[int, int], continuous: dict[int, float]
    ) -> Covariates | None:
        """Covariates of generated cells: the first category and the training mean (0 once
        standardized) unless given; None for a model without covariates."""
        setup = self.setup.covariates
        if not setup:
            return None
        base = Covariates(
            torch.zeros(n_cells, len(setup.categorical_keys), dtype=torch.int64)
            if setup.categorical_keys
            else None,
            torch.zeros(n_cells, setup.n_continuous) if setup.n_continuous else None,
        )
        return _with_values(base, categorical, continuous).to(self.device)

    def _covariate_columns(self, covariates: Covariates | None) -> dict[str, Any]:
        """``obs`` columns of covariates: categoricals, and numbers in original units."""
        setup = self.setup.covariates
        columns: dict[str, Any] = {}
        if covariates is None:
            return columns
        for j, key in enumerate(setup.categorical_keys):
            codes = covariates.categorical[:, j].cpu().numpy()
            columns[key] = pd.Categorical.from_codes(codes, list(setup.categories[j]))
        for j, key in enumerate(setup.continuous_keys):
            values = covariates.continuous[:, j].double().cpu().numpy()
            columns[key] = values * setup.sds[j] + setup.means[j]
        return columns

    # --------------------------------------------------------------------------- diagnostics
    @torch.inference_mode()
    def latent_kl(
        self,
        adata: AnnData | None = None,
        *,
        threshold: float = 0.01,
        batch_size: int = 1024,
    ) -> pd.DataFrame:
        """KL divergence and activity of each latent dimension: which dimensions are used.

        For each dimension ``d`` of ``z``, averaged over cells ``x``:

        * ``kl``: ``E_x[KL(q(z_d | x, s) || N(0, 1))]`` in nats, in closed form for the
          Gaussian posterior, ``0.5 (m^2 + s^2 - 1) - log s``. Summed over ``d`` it is the
          mean ``KL(q(z) || p(z))`` term of the ELBO (at KL weight 1) on the same cells.
        * ``activity``: ``Cov_x(E[z_d | x, s])``, the variance over cells of the posterior
          mean (Burda et al. 2016, "Importance Weighted Autoencoders").

        A dimension whose posterior equals the prior for every cell (KL near 0, activity near
        0) carries no information about the cell: *posterior collapse*. The encoder's dropout
        is off and nothing is sampled, so the result is deterministic.

        Parameters
        ----------
        adata
            Cells (same genes, known batches). None: the training data.
        threshold
            A dimension is ``active`` when its activity exceeds this (Burda et al. use 0.01).
        batch_size
            Cells per forward pass.

        Returns
        -------
        pandas.DataFrame
            One row per latent dimension (index ``dimension``, 0 .. n_latent - 1) with float
            columns ``kl`` and ``activity`` and the boolean ``active``.
        """
        module = self._trained_module()
        data = self._cells(adata)
        n_latent = self.config.n_latent
        kl_sum = torch.zeros(n_latent, dtype=torch.float64)  # (L,)
        mean_sum = torch.zeros(n_latent, dtype=torch.float64)  # (L,)
        mean_sq_sum = torch.zeros(n_latent, dtype=torch.float64)  # (L,)
        for batch in self._minibatches(data, batch_size):
            qz = module.inference(batch).qz
            m = qz.loc.double().cpu()  # (B, L) posterior means
            s = qz.scale.double().cpu()  # (B, L) posterior standard deviations
            kl_sum += (0.5 * (m.square() + s.square() - 1.0) - torch.log(s)).sum(0)
            mean_sum += m.sum(0)
            mean_sq_sum += m.square().sum(0)
        n = data.X.shape[0]
        mean = mean_sum / n
        activity = (mean_sq_sum / n - mean.square()).clamp_min(0.0)
        return pd.DataFrame(
            {
                "kl": (kl_sum / n).numpy(),
                "activity": activity.numpy(),
                "active": (activity > threshold).numpy(),
            },
            index=pd.RangeIndex(n_latent, name="dimension"),
        )


def _posterior_point(
    module: VAEModule, batch: Minibatch, posterior: tuple, *, draw: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``z`` (B, L) and ``log l`` (B, 1): posterior means, or one draw of each."""
    if draw:
        inf = module.inference(batch, posterior=posterior)
        return inf.z, inf.log_library
    qz, ql = posterior
    if ql is not None:
        return qz.loc, ql.loc
    return qz.loc, torch.log(module._totals(batch))


class _seeded:
    """Context manager: fork torch's RNG (CPU and the given CUDA device) and seed it."""

    def __init__(self, seed: int, device: torch.device) -> None:
        devices = [device] if device.type == "cuda" else []
        self._fork = torch.random.fork_rng(devices=devices)
        self.seed = checks.resolve_seed(seed)

    def __enter__(self) -> None:
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        self._fork.__exit__(*exc)


def _finite_number(key: str, value: Any) -> float:
    """``value`` of the continuous covariate ``key`` as a finite float, or raise."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"The continuous covariate {key!r} takes a number (in its own units), got {value!r}."
        )
    if not np.isfinite(value):
        raise ValueError(f"The continuous covariate {key!r} takes a finite number, got {value!r}.")
    return float(value)


def _with_values(
    covariates: Covariates, categorical: dict[int, int], continuous: dict[int, float]
) -> Covariates:
    """``covariates`` with column ``j`` of the categorical codes set to ``categorical[j]`` and
    column ``j`` of the continuous values set to ``continuous[j]``, for every cell."""
    codes, values = covariates.categorical, covariates.continuous
    if categorical:
        codes = codes.clone()
        for j, code in categorical.items():
            codes[:, j] = code
    if continuous:
        values = values.clone()
        for j, value in continuous.items():
            values[:, j] = value
    return Covariates(codes, values)
