"""Checkpoints: the whole fitting state after every M-step, written atomically.

What a checkpoint holds (:func:`state`) and how it comes back (:func:`restore`)
live here with the file format, so a resume reads exactly what a write wrote.

A checkpoint is one ``.npz`` file (numpy arrays, no pickle) holding every
restart's parameters plus a JSON document: iteration counts, lower-bound
histories, seeds, convergence and failure states, the estimator parameters
that must match on resume, and the training data's fingerprint. The random
state needs no saving: all randomness is spent in the start (sample rows and
each restart's k-means), which the checkpoint holds the outcome of.

Atomicity: a local checkpoint is written to a temporary file in the same
directory and moved over the old one with ``os.replace``; a remote one
(``s3://...``) is a single object PUT, which object stores apply whole or not
at all. Either way a crash mid-write leaves the previous checkpoint readable.
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import Any

import numpy as np

from ._json import json_safe
from .io import is_local_filesystem
from .accelerate import Squarem
from .restarts import Restart

FORMAT_VERSION = 1
# Parameters a resumed fit may change; every other constructor parameter must match.
FREE_PARAMS = ("max_iter", "tol", "verbose", "verbose_interval", "split_every", "prune_margin")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this fit."""


def _fs(path: str, storage_options: dict | None):
    import fsspec

    return fsspec.core.url_to_fs(path, **(storage_options or {}))


def _encode(meta: dict, arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(buf, __meta__=blob, **arrays)
    return buf.getvalue()


def write(path: str, meta: dict, arrays: dict[str, np.ndarray], storage_options: dict | None = None) -> None:
    """Replace the checkpoint at ``path`` with ``meta`` and ``arrays``, atomically."""
    data = _encode({"format_version": FORMAT_VERSION, **meta}, arrays)
    fs, fspath = _fs(path, storage_options)
    if is_local_filesystem(fs):
        directory = os.path.dirname(os.path.abspath(fspath)) or "."
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(fspath)}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        replace_file(tmp, fspath)
    else:
        fs.pipe_file(fspath, data)


def replace_file(tmp: str, final: str) -> None:
    """Move a fully written temporary file over the checkpoint (atomic on one filesystem)."""
    os.replace(tmp, final)


def read(path: str, storage_options: dict | None = None) -> tuple[dict, dict[str, np.ndarray]] | None:
    """The checkpoint at ``path``, or None when there is none yet."""
    fs, fspath = _fs(path, storage_options)
    if not fs.exists(fspath):
        return None
    raw = fs.cat_file(fspath)
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    except Exception as exc:
        raise CheckpointError(f"{path!r} is not a readable dask-em checkpoint ({exc}); remove it to start over.") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path!r} has checkpoint format {meta.get('format_version')}; this dask-em writes and "
            f"reads format {FORMAT_VERSION}. Remove it to start over."
        )
    return meta, arrays


def check_compatible(path: str, meta: dict, fingerprint: dict, params: dict) -> None:
    """Refuse a checkpoint written for other data or another model."""
    theirs = meta["fingerprint"]
    if theirs != fingerprint:
        diffs = ", ".join(
            f"{k}: checkpoint {theirs.get(k)!r} vs input {fingerprint.get(k)!r}"
            for k in sorted(set(theirs) | set(fingerprint))
            if theirs.get(k) != fingerprint.get(k)
        )
        raise CheckpointError(
            f"the checkpoint {path!r} was written for other data ({diffs}); resume against the "
            "original input, or remove the checkpoint to start over."
        )
    ours = matching_params(params)
    for name in sorted(set(ours) | set(meta["params"])):
        if meta["params"].get(name) != ours.get(name):
            raise CheckpointError(
                f"the checkpoint {path!r} was written with {name}={meta['params'].get(name)!r}, "
                f"but this fit has {name}={params.get(name)!r}; use the same settings or remove the checkpoint."
            )


def matching_params(params: dict) -> dict:
    """The parameters a resume must match, as JSON values."""
    out = {}
    for name in sorted(params):
        if name in FREE_PARAMS:
            continue
        value = params.get(name)
        if isinstance(value, (np.integer, np.floating)):
            value = value.item()
        out[name] = value if isinstance(value, (int, float, str, type(None))) else repr(value)
    return out


# ---------------------------------------------------------------------------
# What a checkpoint holds
# ---------------------------------------------------------------------------


def state(restarts: list[Restart], context, fingerprint: dict, params: dict) -> tuple[dict, dict]:
    """JSON metadata and arrays of every restart: what a resume needs."""
    arrays = {} if context is None else {"context": np.asarray(context)}
    entries = []
    for r in restarts:
        entry = r.summary()
        entry["has_params"] = r.params is not None
        entry["dropped_components"] = [list(x) for x in r.dropped]
        entry["param_values"] = {}
        if math.isfinite(r.entry_bound):
            entry["entry_bound"] = r.entry_bound
        if r.params is not None:
            for key, value in r.params.items():
                if isinstance(value, np.ndarray):
                    arrays[f"r{r.index}.{key}"] = value
                elif key not in ("dropped", "error"):
                    entry["param_values"][key] = value
        if r.accel is not None:
            # The SQUAREM cycle (statistics seen, the point being checked): a resume
            # mid-cycle continues bitwise as if never stopped.
            entry["accel"] = _pack(r.accel.to_state(), f"a{r.index}", arrays)
        entry["refined_at"], entry["roundoff_run"] = r.refined_at, r.roundoff_run
        if r.stepwise is not None:  # stepwise EM's running statistics and position: resumed mid-pass
            entry["stepwise"] = _pack(r.stepwise, f"s{r.index}", arrays)
        entries.append(entry)
    meta = {"fingerprint": fingerprint, "params": matching_params(params), "restarts": json_safe(entries)}
    return meta, arrays


def restore(meta: dict, arrays: dict) -> tuple[Any, list[Restart]]:
    """The context and the restarts a checkpoint holds."""
    restarts = []
    for e in meta["restarts"]:
        params = None
        if e["has_params"]:
            prefix = f"r{e['restart']}."
            params = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            params.update(e.get("param_values", {}))
        restarts.append(
            Restart(
                index=e["restart"],
                seed=e["seed"],
                params=params,
                variant=e["covariance_type"],
                history=[np.nan if v is None else v for v in e["history"]],
                n_iter=e["n_iter"],
                converged=e["converged"],
                error=e["error"],
                dropped=[tuple(x) for x in e["dropped_components"]],
                seconds=e.get("seconds", 0.0),
                stopped=e.get("stopped"),
                start=e.get("start", ""),
                short_iter=e.get("short_iter", 0),
                accel=Squarem.from_state(_unpack(e["accel"], arrays)) if e.get("accel") else None,
                stepwise=_unpack(e["stepwise"], arrays) if e.get("stepwise") else None,
                refined_at=e.get("refined_at"),
                roundoff_run=e.get("roundoff_run", 0),
                falls=e.get("bound_falls", 0),
                entry_bound=e.get("entry_bound", -math.inf),
            )
        )
    return arrays.get("context"), restarts


def _pack(value: Any, path: str, arrays: dict) -> Any:
    """Nested dicts and lists as JSON, their arrays moved into ``arrays`` under ``path`` keys."""
    if isinstance(value, np.ndarray):
        arrays[path] = value
        return {"__array__": path}
    if isinstance(value, dict):
        return {"__dict__": [[k, _pack(v, f"{path}.{k}", arrays)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_pack(v, f"{path}.{i}", arrays) for i, v in enumerate(value)]
    if isinstance(value, (np.floating, float)):
        return {"__float__": repr(float(value))}  # exact, and inf / nan survive JSON
    if isinstance(value, np.integer):
        return int(value)
    return value


def _unpack(value: Any, arrays: dict) -> Any:
    if isinstance(value, dict):
        if "__array__" in value:
            return arrays[value["__array__"]]
        if "__float__" in value:
            return float(value["__float__"])
        return {k: _unpack(v, arrays) for k, v in value["__dict__"]}
    if isinstance(value, list):
        return [_unpack(v, arrays) for v in value]
    return value
