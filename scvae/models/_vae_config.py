"""The construction options of the VAEs, as one frozen dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from scvae import checks
from scvae.distributions import DISPERSIONS
from scvae.module.vae import LIBRARIES

__all__ = ["VAEConfig"]


@dataclass(frozen=True)
class VAEConfig:
    """The construction options of a VAE (what :meth:`VAEModel.save` stores).

    Attributes
    ----------
    n_latent, n_hidden, n_layers, dropout_rate
        Latent dimension and network sizes (dropout in the encoders only).
    dispersion
        ``"gene"``, ``"gene-batch"`` or ``"gene-cell"`` (count models with a dispersion).
    library
        ``"latent"`` or ``"observed"`` (count models).
    log_normalize
        GaussianVAE: log-normalize counts inside (else model the layer as it is).
    encode_covariates
        Also inject the covariates beyond the batch into the encoders (else the decoder only).
        The covariate keys themselves belong to the data (:class:`~scvae.data.DataSetup`).
    """

    n_latent: int = 10
    n_hidden: int = 128
    n_layers: int = 1
    dropout_rate: float = 0.1
    dispersion: Literal["gene", "gene-batch", "gene-cell"] = "gene"
    library: Literal["latent", "observed"] = "latent"
    log_normalize: bool = True
    encode_covariates: bool = False

    def __post_init__(self) -> None:
        for name in ("n_latent", "n_hidden", "n_layers"):
            object.__setattr__(self, name, checks.positive_int(name, getattr(self, name)))
        rate = checks.fraction(
            "dropout_rate", self.dropout_rate, low=0.0, high=1.0, include_high=False
        )
        object.__setattr__(self, "dropout_rate", rate)
        checks.choice("dispersion", self.dispersion, DISPERSIONS)
        checks.choice("library", self.library, LIBRARIES)
        object.__setattr__(self, "log_normalize", bool(self.log_normalize))
        encode = checks.boolean("encode_covariates", self.encode_covariates)
        object.__setattr__(self, "encode_covariates", encode)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VAEConfig:
        """Inverse of :meth:`to_dict` (unknown keys ignored, missing ones at their default)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def module_options(self) -> dict[str, Any]:
        """The options :class:`~scvae.module.vae.VAEModule` takes."""
        d = self.to_dict()
        d.pop("log_normalize")
        return d
