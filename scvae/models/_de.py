"""Differential expression from the posterior of a trained VAE (being written)."""

from __future__ import annotations

__all__ = ["DifferentialExpression"]


class DifferentialExpression:
    """Differential expression between groups of cells, mixed into the VAEs."""
