"""Validators of user options: one place, one wording, the option named in every message.

Each validator returns the value in its plain Python form (``np.int64(10)`` becomes ``10``) so
that it can be stored, compared and written to JSON, and raises ``TypeError`` for a value of
the wrong kind and ``ValueError`` for one out of range.

Examples
--------
>>> positive_int("max_epochs", np.int64(10))
10
>>> positive_int("batch_size", 2.5)
Traceback (most recent call last):
...
TypeError: batch_size must be an integer, got 2.5 (float).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "ACCELERATORS",
    "accelerator_device",
    "boolean",
    "choice",
    "fraction",
    "optional_positive_int",
    "positive_int",
    "resolve_seed",
]

#: values of the ``accelerator`` option of the closed-form and EM models
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")

T = TypeVar("T")


def _found(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def _integer(name: str, value: object) -> int:
    # bool is an int subclass, and np.bool_ is not an np.integer: refuse both explicitly
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {_found(value)}.")
    return int(value)


def positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    """An integer option ``>= minimum`` as a Python int.

    Parameters
    ----------
    name
        The option's name, used in messages.
    value
        A Python int or NumPy integer. Floats (also ``2.0``), strings and bools are refused.
    minimum
        The smallest value allowed.

    Returns
    -------
    int

    Raises
    ------
    TypeError
        ``value`` is not an integer.
    ValueError
        ``value < minimum``.
    """
    number = _integer(name, value)
    if number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {number}.")
    return number


def optional_positive_int(name: str, value: object, *, minimum: int = 1) -> int | None:
    """Like :func:`positive_int`, with None passed through (meaning "no limit", "automatic")."""
    return None if value is None else positive_int(name, value, minimum=minimum)


def fraction(
    name: str,
    value: object,
    *,
    low: float = 0.0,
    high: float = 1.0,
    include_low: bool = True,
    include_high: bool = True,
) -> float:
    """A real option in an interval, as a Python float.

    Parameters
    ----------
    name
        The option's name, used in messages.
    value
        A Python or NumPy real number (ints too). Bools, strings and NaN are refused.
    low, high
        The interval's ends.
    include_low, include_high
        Whether each end belongs to it.

    Returns
    -------
    float

    Raises
    ------
    TypeError
        ``value`` is not a real number.
    ValueError
        NaN or outside the interval.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(
        value, int | float | np.integer | np.floating
    ):
        raise TypeError(f"{name} must be a number, got {_found(value)}.")
    number = float(value)
    above = number >= low if include_low else number > low
    below = number <= high if include_high else number < high
    if math.isnan(number) or not (above and below):
        interval = f"{'[' if include_low else '('}{low:g}, {high:g}{']' if include_high else ')'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}.")
    return number


def resolve_seed(seed: object, name: str = "seed") -> int:
    """The seed to use: ``seed`` itself, or a fresh random one for None.

    ``seed=None`` means "random", as in scikit-learn and scanpy: a seed is drawn from the
    operating system's entropy (:class:`numpy.random.SeedSequence`) and returned, so that the
    caller records it and the run can be repeated.

    Parameters
    ----------
    seed
        None, or a Python or NumPy integer ``>= 0``.
    name
        The option's name, used in messages.

    Returns
    -------
    int
        In ``[0, 2**32)`` when drawn.

    Raises
    ------
    TypeError
        Not an integer (floats, strings and bools are refused).
    ValueError
        Negative.
    """
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1, dtype=np.uint32)[0])
    return positive_int(name, seed, minimum=0)


def choice(name: str, value: T, allowed: Collection[T]) -> T:
    """A string (``Literal``) option that must be one of ``allowed``.

    Parameters
    ----------
    name
        The option's name, used in messages.
    value
        The value given.
    allowed
        The values allowed, in the order the message lists them.

    Returns
    -------
    The value.

    Raises
    ------
    ValueError
        ``value`` is not one of ``allowed``.
    """
    try:
        ok = bool(value in allowed)
    except (TypeError, ValueError):  # unhashable value against a set, an array
        ok = False
    if not ok:
        listed = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {listed}; got {value!r}.")
    return value


def boolean(name: str, value: object) -> bool:
    """A flag option: ``True``/``False`` (or a NumPy bool), not ``0``, ``1`` or ``"yes"``.

    Raises
    ------
    TypeError
        ``value`` is not a bool.
    """
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {_found(value)}.")
    return bool(value)


def accelerator_device(accelerator: object, name: str = "accelerator") -> torch.device:
    """The device an ``accelerator`` option names.

    Parameters
    ----------
    accelerator
        ``"auto"`` (CUDA when present), ``"cpu"``, or ``"gpu"``/``"cuda"``.
    name
        The option's name, used in messages.

    Raises
    ------
    ValueError
        An unknown value, or a GPU asked for where none is available.
    """
    import torch

    choice(name, accelerator, ACCELERATORS)
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"{name}={accelerator!r} but no CUDA device is available; use "
                f"{name}='cpu' or 'auto'."
            )
        return torch.device("cuda")
    return torch.device("cpu")
