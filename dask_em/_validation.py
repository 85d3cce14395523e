"""Checks of constructor settings, shared by every estimator (no data is read here)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np


def fail(name: str, value: Any, allowed: str) -> ValueError:
    """The error for a setting outside what it allows: what it must be, what was received."""
    return ValueError(f"{name} must be {allowed}; received {value!r}.")


def is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def check_random_state_kind(random_state) -> None:
    """``random_state`` refused unless it is one of the kinds :func:`seed_sequence` takes (nothing drawn)."""
    if not (random_state is None or is_int(random_state) or isinstance(
        random_state, (np.random.SeedSequence, np.random.Generator, np.random.RandomState)
    )):
        raise fail("random_state", random_state, "None, an int, a numpy SeedSequence, Generator or RandomState")


def state_sequence(random_state: np.random.RandomState) -> np.random.SeedSequence:
    """A root stream from a ``RandomState``'s current state, drawing nothing from it."""
    _, keys, position, *_ = random_state.get_state()
    return np.random.SeedSequence([int(k) for k in keys] + [int(position)])


def child_sequence(root: np.random.SeedSequence, key: int) -> np.random.SeedSequence:
    """The child of ``root`` at ``key``, as ``root.spawn`` makes it, without spawning: a ``SeedSequence``
    given as ``random_state`` is left as it was, so fits with it are the same every time."""
    return np.random.SeedSequence(root.entropy, spawn_key=(*root.spawn_key, key), pool_size=root.pool_size)


def seed_sequence(random_state) -> np.random.SeedSequence:
    """The root of every random stream of a fit, from scikit-learn's kinds of ``random_state``."""
    if random_state is None:
        return np.random.SeedSequence()
    if is_int(random_state):
        return np.random.SeedSequence(int(random_state))
    if isinstance(random_state, np.random.SeedSequence):
        return random_state
    if isinstance(random_state, np.random.Generator):
        return np.random.SeedSequence(int(random_state.integers(2**63)))
    check_random_state_kind(random_state)  # refused with the kinds taken; a RandomState passes on
    return np.random.SeedSequence(int(random_state.randint(2**31)))
