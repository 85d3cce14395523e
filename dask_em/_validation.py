"""Checks of constructor settings, shared by every estimator (no data is read here)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from sklearn.utils._param_validation import InvalidParameterError, Interval, make_constraint
from sklearn.utils._param_validation import validate_parameter_constraints


def fail(name: str, value: Any, allowed: str) -> ValueError:
    """The error for a setting outside what it allows: what it must be, what was received."""
    return ValueError(f"{name} must be {allowed}; received {value!r}.")


def invalid(owner: str, name: str, value: Any, allowed: str) -> InvalidParameterError:
    """scikit-learn's error for an estimator parameter out of range, in scikit-learn's words (a ValueError)."""
    return InvalidParameterError(f"The {name!r} parameter of {owner} must be {allowed}. Got {value!r} instead.")


def ordered(options) -> Any:
    """``options`` as a set that keeps their order (a dict's keys), for ``StrOptions``.

    scikit-learn prints a constraint's options in their iteration order, which for a
    ``set`` of strings changes from one process to the next.
    """
    return dict.fromkeys(options).keys()


def check_constraints(owner: str, constraints: dict, params: dict) -> None:
    """``params`` against scikit-learn's ``_parameter_constraints``, then what those constraints let through.

    scikit-learn's own check runs first, so an error has its wording and class. It takes
    ``True`` as an int and ``inf`` in ``[0.0, inf)``; both are refused here, worded the same way.
    """
    validate_parameter_constraints(constraints, params, caller_name=owner)
    for name, value in params.items():
        rules = constraints.get(name)  # a list of rules, or "no_validation"
        if not isinstance(rules, list) or not any(isinstance(rule, Interval) for rule in rules):
            continue
        if isinstance(value, numbers.Real) and (isinstance(value, bool) or not math.isfinite(value)):
            allowed = [str(make_constraint(rule)) for rule in rules]
            text = allowed[0] if len(allowed) == 1 else f"{', '.join(allowed[:-1])} or {allowed[-1]}"
            raise invalid(owner, name, value, text)


def is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def check_random_state_kind(random_state) -> None:
    """``random_state`` refused unless it is one of the kinds :func:`seed_sequence` takes (nothing drawn)."""
    if not (is_int(random_state) or isinstance(
        random_state, (np.random.SeedSequence, np.random.Generator, np.random.RandomState)
    )):
        raise fail("random_state", random_state, "an int, a numpy SeedSequence, Generator or RandomState")


def state_sequence(state: tuple) -> np.random.SeedSequence:
    """A root stream from a ``RandomState``'s state (``get_state()``), drawing nothing from it."""
    _, keys, position, *_ = state
    return np.random.SeedSequence([int(k) for k in keys] + [int(position)])


def child_sequence(root: np.random.SeedSequence, key: int) -> np.random.SeedSequence:
    """The child of ``root`` at ``key``, as ``root.spawn`` makes it, without spawning: a ``SeedSequence``
    given as ``random_state`` is left as it was, so fits with it are the same every time."""
    return np.random.SeedSequence(root.entropy, spawn_key=(*root.spawn_key, key), pool_size=root.pool_size)


def scikit_learn_none(random_state):
    """``random_state`` with None read as scikit-learn reads it: numpy's global ``RandomState``, which
    ``np.random.seed`` sets, drawn from and left advanced. Anything else as it is."""
    return np.random.mtrand._rand if random_state is None else random_state


def seed_sequence(random_state) -> np.random.SeedSequence:
    """The root of every random stream of a fit, from scikit-learn's kinds of ``random_state`` (None read
    first as scikit-learn reads it, by :func:`scikit_learn_none`)."""
    if is_int(random_state):
        return np.random.SeedSequence(int(random_state))
    if isinstance(random_state, np.random.SeedSequence):
        return random_state
    if isinstance(random_state, np.random.Generator):
        return np.random.SeedSequence(int(random_state.integers(2**63)))
    check_random_state_kind(random_state)  # refused with the kinds taken; a RandomState passes on
    return np.random.SeedSequence(int(random_state.randint(2**31)))
