"""The ``dask-em`` command (click, as dask's own CLI).

Results go to stdout, progress and logs to stderr. Exit codes:

====  =====================================================================
0     success
1     an unexpected error (a bug: the traceback is printed)
2     bad input or usage (one line on stderr, nothing written)
3     the best restart did not converge (only with ``--fail-on-no-converge``)
4     every restart failed numerically
75    a temporary failure: preempted (SIGTERM: the iteration in flight finished,
      checkpoint written), or the scheduler (or every worker) gone for longer
      than ``--reconnect-timeout``; rerunning the command resumes
====  =====================================================================
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
import warnings
from typing import Any

import click
import dask

from ._fitted import information_criteria
from ._covariance import GAUSSIAN_COVARIANCE_TYPES, MCLUST_MODELS
from ._json import json_safe
from .io import STORE_CHUNK_BYTES
from .output import CODECS, atomic_output, exists, remove
from .registry import FAMILY_NAMES, GRID_FAMILIES, estimator_for_family
from .runner import ClusterLost, cluster, connect
from .bayesian import PRIOR_TYPES
from .starts import INIT_METHODS

EXIT_OK, EXIT_BAD_INPUT, EXIT_NOT_CONVERGED, EXIT_FAILED, EXIT_PREEMPTED = 0, 2, 3, 4, 75


logger = logging.getLogger("dask_em")


class Failure(click.ClickException):
    """A one-line error with its own exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"dask-em: error: {self.format_message()}", err=True)


@contextlib.contextmanager
def _user_errors():
    """Turn the library's input errors into one-line failures (no traceback)."""
    from .checkpoint import CheckpointError
    from .store import ModelStoreError

    try:
        yield
    except (ValueError, TypeError, KeyError, ImportError, FileNotFoundError, FileExistsError, ConnectionError, ModelStoreError,
            CheckpointError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else _as_flag(str(exc))
        raise Failure(str(message).splitlines()[0] if message else type(exc).__name__) from None


# Another setting named in a parameter's error ("below max_iter=100").
_SETTING = re.compile(r"\b([a-z_]+)=")
# Estimator parameters whose command-line option has another name.
_OPTION_OF_PARAMETER = {"n_components": "components", "random_state": "seed"}


def _as_flag(message: str) -> str:
    """An estimator's "The 'stepwise_passes' parameter of GaussianMixture must be 0 or below max_iter=100" as
    "--stepwise-passes must be 0 or below --max-iter=100", naming the running command's options; any other
    message as it is."""
    parsed = re.match(r"The '(\w+)' parameter of \w+ (must be .*)", message, re.DOTALL)
    ctx = click.get_current_context(silent=True)
    if parsed is None or ctx is None:
        return message
    flags = {option.name: "/".join(option.opts) for option in ctx.command.params if option.opts}
    subject = flags.get(_OPTION_OF_PARAMETER.get(parsed[1], parsed[1]))
    if subject is None:
        return message

    def option(match: re.Match) -> str:  # another setting named in the sentence: its option, where there is one
        flag = flags.get(_OPTION_OF_PARAMETER.get(match[1], match[1]))
        return f"{flag.split('/')[0]}=" if flag else match[0]

    allowed, got = parsed[2].rsplit(" Got ", 1) if " Got " in parsed[2] else (parsed[2], None)
    allowed = _SETTING.sub(option, allowed)  # not in the value received, which is the user's own text
    return f"{subject} {allowed}" + (f" Got {got}" if got is not None else "")


def _parse_storage_options(pairs: tuple[str, ...], base: dict | None = None) -> dict | None:
    """KEY=VALUE pairs (dotted keys nest; values parsed as JSON when they can be)."""
    options: dict = dict(base or {})
    for pair in pairs:
        if "=" not in pair:
            raise Failure(f"--storage-option takes KEY=VALUE; received {pair!r}.")
        key, value = pair.split("=", 1)
        try:
            parsed: Any = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        node = options
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = parsed
    return options or None


def _refuse_existing(path: str, overwrite: bool, storage_options: dict | None = None) -> None:
    if not overwrite and exists(path, storage_options):
        raise Failure(f"{path!r} exists; pass --overwrite to replace it.")


class _EventsAsJson(logging.Formatter):
    """--json: a log record that carries an ``event`` (a lost scheduler, a reconnection) as a JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "event", None)
        if event is None:
            return super().format(record)
        return json.dumps(json_safe({**event, "message": record.getMessage()}))


def _no_reconnect_noise(record: logging.LogRecord) -> bool:
    # distributed's own line when its Client gives up; dask-em says what happens next.
    return not record.getMessage().startswith("Failed to reconnect to scheduler")


def _setup_logging(quiet: bool, as_json: bool) -> None:
    level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    # distributed sets its loggers' levels when first imported: this keeps them at warning then.
    dask.config.set({"logging.distributed": "warning"})
    client_log = logging.getLogger("distributed.client")
    if _no_reconnect_noise not in client_log.filters:
        client_log.addFilter(_no_reconnect_noise)
    # --json: progress comes as JSON lines instead (NOTSET: a command run after one with --json in the same process)
    logger.setLevel(logging.WARNING if as_json else logging.NOTSET)
    if as_json:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(_EventsAsJson("%(message)s"))


VARIABLE_HELP = "Variable of an xarray-written Zarr group."
STORAGE_OPTION_HELP = "fsspec option for remote stores (repeatable; dotted keys nest)."
SCHEDULER_HELP = "Dask scheduler address; default DASK_SCHEDULER_ADDRESS, else local threads."
CHUNK_ROWS_HELP = ("Rows per chunk when reading INPUT [a multiple of the store's chunk of at most 30 MiB, or the "
                   "store's chunk where that is larger].")
RECONNECT_HELP = ("Seconds to wait for the scheduler after a lost connection (same address), and for a worker when "
                  "every worker is gone; then the interrupted step runs again. Past it: exit 75.")


def _rerun_command(add: tuple[str, ...] = ()) -> str:
    """The command line of this process, with ``add`` appended where missing: what resumes it."""
    args = list(sys.argv[1:])
    args += [a for a in add if a not in args]
    return shlex.join(["dask-em", *args])


def _exit_lost(line: str) -> None:
    """Exit 75 with ``line`` as the last word: the lost Client's teardown logs nothing after it.

    Logging stays off until the command's ``finally`` turns it back on, after the Client is closed.
    """
    logging.disable(logging.CRITICAL)
    click.echo(f"dask-em: {line}", err=True)
    sys.exit(EXIT_PREEMPTED)


def _fit_lost(exc: ClusterLost, checkpoint: str | None, options: dict | None) -> str:
    """The one line for a fit that lost its scheduler or workers: what, where the checkpoint is, how to resume."""
    from .checkpoint import read

    if not checkpoint:
        return (f"{exc}; no --checkpoint was given, so a rerun starts afresh (give --checkpoint PATH --resume "
                f"to resume from the last iteration): {_rerun_command()}")
    try:
        saved = read(checkpoint, options)
    except Exception:  # noqa: BLE001 - the line below still names the path
        saved = None
    held = ("" if saved is None else
            f" (iteration {max(r['n_iter'] for r in saved[0]['restarts'])})")
    return f"{exc}; the checkpoint {checkpoint}{held} is intact; resume with: {_rerun_command(('--resume',))}"


def _echo_json(obj: Any, err: bool = False) -> None:
    click.echo(json.dumps(json_safe(obj)), err=err)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dask-em")
def main() -> None:
    """Fit mixture models by EM on data larger than memory, with Dask.

    Exit codes: 0 success, 2 bad input, 3 not converged (with
    --fail-on-no-converge), 4 every restart failed, 75 a temporary failure
    (preempted, or the scheduler or every worker gone longer than
    --reconnect-timeout): rerun, with --resume for fit.
    """


# ---------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------

# What --warm-start MODEL may change on the stored estimator; its other settings define the model.
_WARM_SETTABLE = ("max_iter", "tol", "accelerate", "stopping", "reg_covar", "compute_dtype", "verbose_interval")
GAUSSIAN_FAMILIES = ("gaussian", "bayesian_gaussian")

FAMILIES = FAMILY_NAMES


def _parse_categories(text: str | int | list | None):
    """'5' -> 5 (every feature); '3,5,2' -> (3, 5, 2); a YAML int or list as is."""
    if text is None or isinstance(text, (int, list)):
        return text
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise Failure(f"--n-categories takes an int or a list like 3,5,2; received {text!r}.") from None
    return values[0] if len(values) == 1 else tuple(values)


def _warm_estimator(ctx: click.Context, path: str, options: dict, settings: dict):
    """The stored estimator at ``path`` with ``warm_start=True`` and the settings given on the command line."""
    from click.core import ParameterSource

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)

    fixed = sorted(
        name for name in ctx.params
        if name not in (*_WARM_SETTABLE, "warm_start", "input", "output", "variable", "storage_option", "scheduler",
                        "checkpoint", "resume", "clear_checkpoint", "kube_cluster", "chunk_rows", "overwrite",
                        "fail_on_no_converge", "quiet", "as_json")
        and given(name)
    )
    if fixed:
        flags = ", ".join("--" + name.replace("_", "-") for name in fixed)
        raise Failure(
            f"{flags}: --warm-start {path} continues that model, whose settings define it; only "
            f"{', '.join('--' + n.replace('_', '-') for n in _WARM_SETTABLE)} may change. Leave {flags} out, or fit "
            "afresh without --warm-start."
        )
    model = _load_model(path, options)
    with _user_errors():
        model.set_params(warm_start=True, **{name: value for name, value in settings.items() if given(name)})
        model.check_params()
    return model


def _make_estimator(ctx: click.Context, family: str, components: int, covariance_type: str, reg_covar: float,
                    pseudo_count: float | None, n_categories, prior_type: str | None = None,
                    concentration: float | None = None, gaussian_prior: str = "none",
                    compute_dtype: str = "float64", **common):
    """The estimator of --family, refusing options that belong to another family."""
    from click.core import ParameterSource

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)

    if common.get("init_strategy") == "emEM" and given("init_params"):
        raise Failure(
            f"--init-params {common.get('init_params')} applies to --init-strategy single; emEM mixes its own "
            "starts (mclust's tree, k-means++, random rows, half-sample k-means and trees). Leave --init-params out."
        )
    if family != "gaussian" and given("prior"):
        raise Failure(f"--prior applies to --family gaussian; received --family {family}.")
    if family != "bayesian_gaussian":
        for name in ("weight_concentration_prior_type", "weight_concentration_prior"):
            if given(name):
                raise Failure(f"--{name.replace('_', '-')} applies to --family bayesian_gaussian; received --family {family}.")
    if family in GAUSSIAN_FAMILIES:
        for name in ("pseudo_count", "n_categories"):
            if given(name):
                raise Failure(f"--{name.replace('_', '-')} applies to the discrete families; received --family {family}.")
        extra = {"compute_dtype": compute_dtype}
        if family == "gaussian" and gaussian_prior != "none":
            extra["prior"] = gaussian_prior
        if family == "bayesian_gaussian":
            extra.update(weight_concentration_prior=concentration)
            if prior_type is not None:
                extra["weight_concentration_prior_type"] = prior_type
        return estimator_for_family(family)(
            components, covariance_type=covariance_type, reg_covar=reg_covar, **extra, **common
        )
    for name in ("covariance_type", "reg_covar", "compute_dtype"):
        if given(name):
            raise Failure(f"--{name.replace('_', '-')} applies to --family gaussian or bayesian_gaussian; received --family {family}.")
    extra = {} if pseudo_count is None else {"pseudo_count": pseudo_count}
    if family == "categorical":
        if n_categories is None:
            raise Failure("--family categorical needs --n-categories (one int for all features, or 3,5,2 per feature).")
        return estimator_for_family(family)(components, n_categories=_parse_categories(n_categories), **extra, **common)
    if given("n_categories"):
        raise Failure(f"--n-categories applies to --family categorical; received --family {family}.")
    return estimator_for_family(family)(components, **extra, **common)


def _load_config(ctx: click.Context, _param, value: str | None):
    """--config FILE.yaml: the same options as the flags; flags override it."""
    if value is None:
        return None
    import yaml

    try:
        with open(value) as f:
            data = yaml.safe_load(f) or {}
    except OSError as exc:
        raise click.BadParameter(f"cannot read {value!r}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"{value!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{value!r} must hold a mapping of option: value; received {type(data).__name__}.")
    config = {str(k).replace("-", "_"): v for k, v in data.items()}
    names = _config_keys(ctx.command)
    unknown = sorted(set(config) - set(names))
    if unknown:
        raise click.BadParameter(f"unknown keys {unknown} in {value!r}; allowed: {sorted(names)}.")
    ctx.meta["config"] = config
    ctx.default_map = {names[k]: v for k, v in config.items() if k not in ("input", "storage_options")}
    return value


def _config_keys(command: click.Command) -> dict[str, str]:
    """The --config keys of ``command``: each option's long name with underscores -> its parameter's name.

    Read from the command's own options, so that every option can be set in the file (``json`` sets
    ``--json``). ``storage_options`` takes a mapping (the fsspec options themselves) in place of
    ``--storage-option KEY=VALUE``; ``input`` is the INPUT argument.
    """
    keys = {"storage_options": "storage_option"}
    for param in command.params:
        if param.name in ("config", "storage_option"):
            continue
        if isinstance(param, click.Option):
            flag = next(opt for opt in param.opts if opt.startswith("--"))
            keys[flag[2:].replace("-", "_")] = param.name
        else:
            keys[param.name] = param.name
    return keys


@main.command()
@click.argument("input", required=False)
@click.option("--config", type=click.Path(dir_okay=False), callback=_load_config, is_eager=True, expose_value=False,
              help="YAML file with the same options (a ConfigMap); flags override it.")
@click.option("--output", "-o", help="Model store to write (Zarr path or URL).")
@click.option("--components", "-k", type=int, default=1, show_default=True,
              help="Number of mixture components K (bayesian_gaussian: the most it may use).")
@click.option("--family", type=click.Choice(FAMILIES), default="gaussian", show_default=True,
              help="Component distribution: gaussian (real values), bernoulli (0/1), poisson (counts), categorical "
                   "(codes), bayesian_gaussian (variational: picks its number of components).")
@click.option("--covariance-type", type=click.Choice(GAUSSIAN_COVARIANCE_TYPES), default="full", show_default=True,
              help="gaussian only: scikit-learn's four, or one of mclust's fourteen models (EII ... VVV).")
@click.option("--pseudo-count", type=float, default=None, help="bernoulli/poisson/categorical: prior pseudo-count [1e-3].")
@click.option("--n-categories", default=None, help="categorical: categories of every feature (5) or of each (3,5,2).")
@click.option("--weight-concentration-prior-type", type=click.Choice(PRIOR_TYPES), default=None,
              help="bayesian_gaussian: the weights' prior [dirichlet_process].")
@click.option("--weight-concentration-prior", type=float, default=None,
              help="bayesian_gaussian: its concentration [1/K]; smaller switches off more components.")
@click.option("--n-init", type=int, default=1, show_default=True, help="Restarts, run side by side.")
@click.option("--missing", type=click.Choice(["error", "marginalize"]), default="error", show_default=True,
              help="NaN in the data: refused (error), or marginalised by EM under missing-at-random.")
@click.option("--max-iter", type=int, default=100, show_default=True,
              help="EM iterations per restart, at most.")
@click.option("--tol", type=float, default=None,
              help="Stopping threshold in nats per row (see --stopping). Default: 1e-3 for gaussian and "
                   "bayesian_gaussian; for bernoulli, poisson and categorical, 1/n_samples clipped to [1e-6, 1e-3] "
                   "under aitken and 1e-3 under change. Whenever --stopping auto picks aitken (with --accelerate "
                   "squarem, or for bernoulli, poisson, categorical), the threshold is at most 1/n_samples clipped "
                   "to [1e-6, 1e-3], whatever --tol is.")
@click.option("--accelerate", type=click.Choice(["none", "squarem"]), default="none", show_default=True,
              help="squarem: SQUAREM-accelerated EM, the same fixed point in fewer passes.")
@click.option("--warm-start", "warm_start", metavar="MODEL",
              help="Continue the fit of the model store MODEL on INPUT (scikit-learn's warm_start: one restart "
                   "from its parameters, e.g. after rows were appended); its settings define the model, and only "
                   f"{', '.join('--' + n.replace('_', '-') for n in _WARM_SETTABLE)} may change them.")
@click.option("--verbose-interval", type=int, default=10, show_default=True,
              help="Iterations between text progress lines (the last one always shows; --json shows every "
                   "iteration); the model's verbose_interval.")
@click.option("--stopping", type=click.Choice(["auto", "change", "aitken"]), default="auto", show_default=True,
              help="change: stop when the lower bound changes by less than --tol per row in an iteration; aitken: "
                   "when the estimated remaining gain per row stays below --tol; auto: change for gaussian and "
                   "bayesian_gaussian without --accelerate, else aitken.")
@click.option("--stepwise-passes", type=int, default=0, show_default=True,
              help="Passes of stepwise (online) EM over random mini-batches of chunks before batch EM; "
                   "the answer is still batch EM's fixed point. Below --max-iter.")
@click.option("--reg-covar", type=float, default=1e-6, show_default=True, help="gaussian only.")
@click.option("--compute-dtype", type=click.Choice(("float64", "float32")), default="float64", show_default=True,
              help="gaussian and bayesian_gaussian: precision of the E-step's log-densities and products; float32 is "
                   "about 1.7x faster, its parameters within ~1e-5 of float64's (statistics and M-step stay float64).")
@click.option("--prior", type=click.Choice(("none", "default")), default="none", show_default=True,
              help="gaussian only: 'default' fits by MAP-EM under mclust's conjugate prior (defaultPrior from the "
                   "data): a monotone bound and regular components; --reg-covar is then not used.")
@click.option("--init-params", type=click.Choice(INIT_METHODS), default="kmeans", show_default=True,
              help="How each restart starts, computed on a sample of rows; hierarchical is mclust's start.")
@click.option("--init-strategy", type=click.Choice(("single", "emEM")), default="single", show_default=True,
              help="emEM: 20 short runs from mixed starts (mclust's hierarchical tree among them) side by side, "
                   "the trees and the best --n-init of the others run to convergence; better optima for more "
                   "work per pass. --init-params is then not used.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="random_state (an int >= 0).")
@click.option("--variable", help=VARIABLE_HELP)
@click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE", help=STORAGE_OPTION_HELP)
@click.option("--scheduler", help=SCHEDULER_HELP)
@click.option("--checkpoint", help="Checkpoint file, replaced atomically after every iteration.")
@click.option("--resume/--no-resume", default=False, help="Continue from --checkpoint when it exists.")
@click.option("--clear-checkpoint", is_flag=True, help="Delete --checkpoint once the model is written.")
@click.option("--reconnect-timeout", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help=RECONNECT_HELP)
@click.option("--kube-cluster", type=click.Path(dir_okay=False), help="DaskCluster spec to start with KubeCluster when no scheduler is given.")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None,
              help="Where the E-steps run: cuda copies each chunk to the GPU as it is read (CuPy); "
                   "default: where the chunks are read (host memory).")
@click.option("--chunk-rows", type=int, default=None, help="Rows per chunk when opening the store.")
@click.option("--overwrite/--no-overwrite", default=False, help="Replace an existing --output.")
@click.option("--fail-on-no-converge", is_flag=True, help="Exit 3 when the best restart did not converge.")
@click.option("--quiet", "-q", is_flag=True, help="No progress.")
@click.option("--json", "as_json", is_flag=True, help="Progress as JSON lines on stderr, the result as JSON on stdout.")
@click.pass_context
def fit(ctx, input, output, components, family, covariance_type, pseudo_count, n_categories,
        weight_concentration_prior_type, weight_concentration_prior, n_init, missing, max_iter,
        tol, accelerate, warm_start, verbose_interval, stopping, stepwise_passes, reg_covar, compute_dtype, prior, init_params, init_strategy, seed, variable,
        storage_option, scheduler, checkpoint, resume,
        clear_checkpoint, reconnect_timeout, kube_cluster, device, chunk_rows, overwrite, fail_on_no_converge, quiet,
        as_json):
    """Fit a mixture (--family, default gaussian) to the Zarr array at INPUT and write the model to --output."""
    from .store import save
    from .restarts import Preempted, RestartsFailed, request_stop

    config = ctx.meta.get("config", {})
    input = input or config.get("input")
    if not input:
        raise Failure("no INPUT: give a Zarr path or URL (or `input:` in --config).")
    if not output:
        raise Failure("no --output: give the model store to write (or `output:` in --config).")
    options = _parse_storage_options(storage_option, config.get("storage_options"))
    _setup_logging(quiet, as_json)
    with _user_errors():
        _refuse_existing(output, overwrite, options)
    accelerate = None if accelerate == "none" else accelerate
    if warm_start:
        model = _warm_estimator(ctx, warm_start, options, {
            "max_iter": max_iter, "tol": tol, "accelerate": accelerate, "stopping": stopping, "reg_covar": reg_covar,
            "compute_dtype": compute_dtype, "verbose_interval": verbose_interval,
        })
    else:
        model = _make_estimator(
            ctx, family, components, covariance_type, reg_covar, pseudo_count, n_categories,
            weight_concentration_prior_type, weight_concentration_prior, gaussian_prior=prior,
            compute_dtype=compute_dtype, n_init=n_init, max_iter=max_iter, init_params=init_params, random_state=seed,
            missing=missing, accelerate=accelerate, stopping=stopping, verbose_interval=verbose_interval,
            stepwise_passes=stepwise_passes, init_strategy=init_strategy, **({} if tol is None else {"tol": tol}),
        )
    interval = model.verbose_interval

    def progress(event: dict) -> None:
        if quiet:
            return
        last = event["converged"] or event["failed"] or event["iteration"] >= model.max_iter
        if not as_json and event["iteration"] % interval and not last:
            return
        if as_json:
            _echo_json({"event": "iteration", **event}, err=True)
        else:
            change = "first" if event["change"] is None else f"change {event['change']:+.3g}"
            state = " converged" if event["converged"] else (" failed" if event["failed"] else "")
            click.echo(
                f"restart {event['restart']} iteration {event['iteration']:>3}: "
                f"lower bound {event['lower_bound']:.10g} ({change}){state}",
                err=True,
            )

    previous = signal.signal(signal.SIGTERM, request_stop)
    if as_json and not quiet:
        _echo_json({"event": "started", "input": input, "pid": os.getpid()}, err=True)
    tic = time.perf_counter()
    try:
        with _user_errors(), cluster(scheduler, kube_cluster), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reported below, in the summary and exit code
            try:
                model.fit(input, variable=variable, storage_options=options, chunk_rows=chunk_rows,
                          checkpoint=checkpoint, resume=resume, checkpoint_options=options, callback=progress,
                          reconnect_timeout=reconnect_timeout, device=device)
            except Preempted as exc:
                where = f"; checkpoint written to {checkpoint}, rerun with --resume" if checkpoint else ""
                click.echo(f"dask-em: preempted: {exc}{where}", err=True)
                sys.exit(EXIT_PREEMPTED)
            except ClusterLost as exc:
                _exit_lost(_fit_lost(exc, checkpoint, options))
            except RestartsFailed as exc:
                raise Failure(str(exc), EXIT_FAILED) from None
            save(model, output, storage_options=options, overwrite=overwrite)  # written whole or not at all
            if clear_checkpoint and checkpoint and exists(checkpoint, options):
                remove(checkpoint, options)
    finally:
        signal.signal(signal.SIGTERM, previous)
        logging.disable(logging.NOTSET)  # after _exit_lost, once the lost Client is closed
    summary = _summary(model, output, fitted_here=True)
    summary["seconds"] = round(time.perf_counter() - tic, 3)
    if as_json:
        _echo_json(summary)
    else:
        click.echo(_summary_text(summary))
    if fail_on_no_converge and not model.converged_:
        raise Failure(
            f"the best restart did not converge in {_count(model.max_iter, 'iteration')}; model written to {output}",
            EXIT_NOT_CONVERGED,
        )


# The keys a --config file may hold (fit's own options: they cannot drift apart).
_FIT_CONFIG_KEYS = set(_config_keys(fit))


def _count(n: int, noun: str) -> str:
    """'1 iteration', '3 iterations'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _fitted_row_chunks(training_data: dict) -> list[int]:
    """[rows, count] of the chunks a fit on this machine passed over: those read, split for the local cores.

    The fit splits every chunk read that is larger than its own target (``io.split_rows``); the
    training data record the chunks as read.
    """
    import dask.array as da

    from .io import split_rows

    (n, d), (rows, count) = training_data["shape"], training_data["row_chunks"]
    read = (rows,) * (count - 1) + (n - rows * (count - 1),)
    fitted, _ = split_rows(da.empty((n, d), chunks=(read, d)))
    return [int(fitted.chunks[0][0]), len(fitted.chunks[0])]


def _summary(model, path: str | None = None, fitted_here: bool = False) -> dict:
    """What fit and info print; ``fitted_here``: the model was fitted by this command (its chunks are known)."""
    summary = {
        "model": path,
        "family": model.make_family().name,
        "estimator": type(model).__name__,
        "covariance_type": getattr(model, "covariance_type", None),
        "n_components": int(model.n_components_),
        "n_features": int(model.n_features_in_),
        "converged": bool(model.converged_),
        "n_iter": int(model.n_iter_),
        "lower_bound": float(model.lower_bound_),
        "lower_bound_meaning": model._bound_meaning(),
        "weights": [float(w) for w in model.weights_],
        "training_data": getattr(model, "training_data_", None),
        "restarts": [
            {k: r[k] for k in ("restart", "seed", "lower_bound", "n_iter", "converged", "status", "error")}
            for r in model.restarts_
        ],
    }
    if fitted_here and summary["training_data"]:
        summary["fitted_row_chunks"] = _fitted_row_chunks(summary["training_data"])
    return summary


def _summary_text(s: dict) -> str:
    lines = [
        f"model:           {s['model'] or '(not saved)'}",
        f"family:          {s['family']}" + (f" ({s['covariance_type']} covariance)" if s.get("covariance_type") else ""),
        f"components:      {s['n_components']}    features: {s['n_features']}",
        f"converged:       {s['converged']} after {_count(s['n_iter'], 'iteration')}",
        f"lower bound:     {s['lower_bound']:.10g} ({s['lower_bound_meaning']})",
        "weights:         " + " ".join(f"{w:.4f}" for w in s["weights"]),
    ]
    td = s.get("training_data")
    if td:
        (rows, count), fitted = td["row_chunks"], s.get("fitted_row_chunks")
        chunks = f"{_count(count, 'chunk')} of {_count(rows, 'row')}"
        if fitted and fitted != [rows, count]:  # as the fit's first line says: the chunks it passed over
            chunks = f"read in {chunks}, fitted in {_count(fitted[1], 'chunk')} of {_count(fitted[0], 'row')}"
        lines.append(
            f"training data:   {td.get('source') or '(in memory)'} shape {tuple(td['shape'])} {td['dtype']}, {chunks}"
        )
    for r in s["restarts"]:
        lb = "nan" if r["lower_bound"] is None else f"{r['lower_bound']:.10g}"
        lines.append(
            f"  restart {r['restart']}: lower bound {lb}, {_count(r['n_iter'], 'iteration')}, "
            f"{'converged' if r['converged'] else 'not converged'}, {r['status']}"
            + (f" ({r['error']})" if r["error"] else "")
        )
    if "seconds" in s:
        lines.append(f"seconds:         {s['seconds']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# select
# ---------------------------------------------------------------------------


def _parse_components(text: str) -> list[int]:
    """'1-10', '2,4,8' or '1-4,8' -> a list of ints."""
    out: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise Failure(f"--components takes a list like 1-10 or 2,4,8; received {text!r}.") from None
    return out


@main.command()
@click.argument("input")
@click.option("--output", "-o", required=True, help="Model store for the best candidate.")
@click.option("--table", "table_path", help="Write the criterion table here (.csv or .json).")
@click.option("--components", "-k", default="1-10", show_default=True, help="Candidate K: 1-10, 2,4,8, ...")
@click.option("--family", type=click.Choice(GRID_FAMILIES), default="gaussian", show_default=True,
              help="Component distribution; the grid is over K alone for all but gaussian.")
@click.option("--covariance-types", default=None,
              help="gaussian only: a comma list [full,tied,diag,spherical], or mclust (its fourteen models).")
@click.option("--pseudo-count", type=float, default=None, help="bernoulli/poisson/categorical: prior pseudo-count [1e-3].")
@click.option("--n-categories", default=None, help="categorical: categories of every feature (5) or of each (3,5,2).")
@click.option("--criterion", type=click.Choice(["bic", "aic", "icl"]), default="bic", show_default=True,
              help="What picks the best candidate (--table holds all three); icl is BIC plus twice the "
                   "classification entropy, which penalises overlapping components.")
@click.option("--missing", type=click.Choice(["error", "marginalize"]), default="error", show_default=True,
              help="NaN in the data: refused (error), or marginalised by EM under missing-at-random.")
@click.option("--n-init", type=int, default=1, show_default=True, help="Restarts per candidate, run side by side.")
@click.option("--max-iter", type=int, default=100, show_default=True, help="EM iterations per restart, at most.")
@click.option("--tol", type=float, default=None,
              help="Stopping threshold, in nats per row. gaussian stops when the lower bound changes by less than "
                   "--tol in an iteration [1e-3]; bernoulli, poisson and categorical when the estimated remaining "
                   "gain per row stays below it [1/n_samples clipped to [1e-6, 1e-3], and never above that].")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="random_state: each candidate gets the seeds `dask-em fit --seed` would give it.")
@click.option("--variable", help=VARIABLE_HELP)
@click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE", help=STORAGE_OPTION_HELP)
@click.option("--scheduler", help=SCHEDULER_HELP)
@click.option("--chunk-rows", type=int, default=None, help=CHUNK_ROWS_HELP)
@click.option("--overwrite", is_flag=True, help="Replace an existing --output and --table.")
@click.option("--quiet", "-q", is_flag=True, help="No progress.")
@click.option("--json", "as_json", is_flag=True,
              help="Progress as JSON lines on stderr, the result as JSON on stdout.")
def select(input, output, table_path, components, family, covariance_types, pseudo_count, n_categories, criterion,
           missing, n_init, max_iter, tol, seed, variable, storage_option, scheduler, chunk_rows, overwrite, quiet,
           as_json):
    """Fit a grid of K (and covariance types) side by side; write the best model and the table.

    Every candidate runs in the same passes over INPUT. A line goes to stderr
    as each candidate stops iterating (its best restart's lower bound and
    iterations, the seconds since the start); when all are done, one more pass
    gives the criteria, and the table goes to stdout.
    """
    from .selection import select_model
    from .store import save

    options = _parse_storage_options(storage_option)
    ks = _parse_components(components)
    family_params: dict = {}
    if family == "gaussian":
        for name, value in (("--pseudo-count", pseudo_count), ("--n-categories", n_categories)):
            if value is not None:
                raise Failure(f"{name} applies to the discrete families; received --family gaussian.")
        if (covariance_types or "").strip() == "mclust":
            types = list(MCLUST_MODELS)
        else:
            types = [t.strip() for t in (covariance_types or "full,tied,diag,spherical").split(",") if t.strip()]
    else:
        if covariance_types is not None:
            raise Failure(f"--covariance-types applies to --family gaussian; received --family {family}.")
        types = None
        if pseudo_count is not None:
            family_params["pseudo_count"] = pseudo_count
        if family == "categorical":
            if n_categories is None:
                raise Failure("--family categorical needs --n-categories (one int for all features, or 3,5,2 per feature).")
            family_params["n_categories"] = _parse_categories(n_categories)
        elif n_categories is not None:
            raise Failure(f"--n-categories applies to --family categorical; received --family {family}.")
    if table_path and not table_path.endswith((".csv", ".json")):
        raise Failure(f"--table must end in .csv or .json; received {table_path!r}.")
    _setup_logging(quiet, as_json)
    with _user_errors():
        _refuse_existing(output, overwrite, options)
        if table_path:
            _refuse_existing(table_path, overwrite)
    if as_json and not quiet:
        _echo_json({"event": "started", "input": input, "pid": os.getpid()}, err=True)
    mclust_grid = bool(types) and set(types) <= set(MCLUST_MODELS) and criterion != "aic"
    tic = time.perf_counter()

    def candidate_done(c: dict) -> None:  # as each candidate stops iterating; the others go on
        seconds = round(time.perf_counter() - tic, 3)
        if as_json:
            _echo_json({"event": "candidate", **c, "seconds": seconds}, err=True)
        elif c["lower_bound"] is None:
            click.echo(f"K={c['n_components']} {c['covariance_type']}: every restart failed ({seconds:.1f} s)", err=True)
        else:
            click.echo(f"K={c['n_components']} {c['covariance_type']}: lower bound {c['lower_bound']:.10g}, "
                       f"{'converged' if c['converged'] else 'not converged'} after "
                       f"{_count(c['n_iter'], 'iteration')} ({seconds:.1f} s)", err=True)

    with _user_errors(), connect(scheduler), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unconverged candidates: reported as they end, and in the table
        result = select_model(
            input, n_components=ks, covariance_types=types, criterion=criterion, n_init=n_init,
            random_state=seed, max_iter=max_iter, tol=tol, variable=variable,
            storage_options=options, chunk_rows=chunk_rows, family=family, missing=missing,
            callback=None if quiet else candidate_done, **family_params,
        )
        save(result.best_estimator_, output, storage_options=options, overwrite=overwrite)
    frame = result.criteria.to_dataframe().reset_index()
    if table_path:
        if table_path.endswith(".csv"):
            frame.to_csv(table_path, index=False)
        else:
            frame.to_json(table_path, orient="records", indent=1)
    if as_json:
        _echo_json({"best": result.best_params_, "criterion": criterion, "model": output,
                    "seconds": round(time.perf_counter() - tic, 3), "table": frame.to_dict(orient="records")})
    else:
        click.echo(result.table(criterion, sign="mclust") if mclust_grid else result.table())
        variant = result.best_params_.get("covariance_type", family)
        click.echo(f"best: K={result.best_params_['n_components']} {variant} "
                   f"-> {output}" + (f"; table -> {table_path}" if table_path else ""))


# ---------------------------------------------------------------------------
# predict, score, info
# ---------------------------------------------------------------------------


def _load_model(path: str, options: dict | None):
    """The model stored at ``path``; a data array there is named as what it is."""
    from .store import ModelStoreError, load

    with _user_errors():
        try:
            return load(path, storage_options=options)
        except ModelStoreError:
            array = _zarr_array_at(path, options)
            if array is None:
                raise
            raise Failure(
                f"{str(path)!r} holds a Zarr array of shape {array.shape} ({array.dtype}), not a dask-em model store; "
                "a model store is the Zarr group that `dask-em fit -o PATH` or dask_em.save(model, PATH) writes."
            ) from None


def _zarr_array_at(path: str, options: dict | None):
    """The Zarr array at ``path``, or None where there is none."""
    import zarr

    try:
        return zarr.open_array(store=str(path), mode="r", storage_options=options)
    except Exception:  # noqa: BLE001 - nothing readable as an array: the caller's error stands
        return None


def _input_shape(model, model_path: str, input: str, kw: dict) -> tuple[int, int]:
    """INPUT's shape (from metadata), refused in one sentence naming both when its feature count is not MODEL's."""
    from .io import as_dask_array

    n, d = as_dask_array(input, **kw).data.shape
    if d != model.n_features_in_:
        raise Failure(
            f"X has {d} features, but {type(model).__name__} was fitted with {model.n_features_in_} features "
            f"(INPUT {str(input)!r}, MODEL {str(model_path)!r}). Pass the columns it was fitted on."
        )
    return n, d


@main.command()
@click.argument("model_path", metavar="MODEL")
@click.argument("input")
@click.option("--output", "-o", required=True, help="Zarr store for the labels (or responsibilities).")
@click.option("--proba", is_flag=True, help="Write responsibilities (n_samples, n_components) instead of labels.")
@click.option("--variable", help=VARIABLE_HELP)
@click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE", help=STORAGE_OPTION_HELP)
@click.option("--scheduler", help=SCHEDULER_HELP)
@click.option("--chunk-rows", type=int, default=None, help=CHUNK_ROWS_HELP)
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None,
              help="Where the E-steps run: cuda copies each chunk to the GPU as it is read (CuPy); "
                   "default: where the chunks are read (host memory).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output.")
@click.option("--reconnect-timeout", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help=RECONNECT_HELP)
def predict(model_path, input, output, proba, variable, storage_option, scheduler, chunk_rows, device, overwrite,
            reconnect_timeout):
    """Write the labels of INPUT under MODEL to a Zarr store with INPUT's row chunks.

    Chunk by chunk into OUTPUT.partial, moved to OUTPUT when complete: the same
    command after an interruption writes only the chunks still missing.
    """
    from .output import partial_path, write_chunks, written_chunks
    from .runner import Runner

    options = _parse_storage_options(storage_option)
    model = _load_model(model_path, options)
    _setup_logging(False, False)
    with _user_errors():
        _refuse_existing(output, overwrite, options)
        kw = {"variable": variable, "storage_options": options, "chunk_rows": chunk_rows}
        _input_shape(model, model_path, input, kw)
        kw["device"] = device
        result = model.predict_proba(input, **kw) if proba else model.predict(input, **kw)
        result = getattr(result, "data", result)  # xarray -> dask
        if device == "cuda":  # the results of each chunk come back to the host to be written
            import numpy as np

            from ._namespace import to_numpy

            result = result.map_blocks(to_numpy, dtype=result.dtype, meta=np.empty((0,) * result.ndim, result.dtype))
    what = "responsibilities" if proba else "labels"
    identity = {"model": _model_digest(model), "input": str(input), "variable": variable, "what": what,
                "shape": list(result.shape), "row_chunks": list(result.chunks[0][:1])}
    tic = time.perf_counter()
    try:
        with _user_errors(), connect(scheduler), Runner(reconnect_timeout) as runner:
            try:
                found, total = write_chunks(result, output, options, runner, identity, overwrite)
            except ClusterLost as exc:
                done = len(written_chunks(output, options))
                _exit_lost(f"{exc}; {done} of {result.numblocks[0]} chunks are written to {partial_path(output)}; "
                           f"the same command writes the rest: {_rerun_command()}")
    finally:
        logging.disable(logging.NOTSET)  # after _exit_lost, once the lost Client is closed
    resumed = f" ({found} written before, kept)" if found else ""
    click.echo(
        f"wrote {what} {result.shape} in {_count(total, 'chunk')}{resumed} to {output} "
        f"in {time.perf_counter() - tic:.1f} s"
    )


def _model_digest(model) -> str:
    """A digest of a fitted model's settings and arrays: a partial output of another model is not resumed."""
    import hashlib

    import numpy as np

    h = hashlib.sha256(repr(sorted(model.get_params().items())).encode())
    for name in sorted(vars(model)):
        value = getattr(model, name)
        if name.endswith("_") and isinstance(value, np.ndarray):
            h.update(name.encode())
            h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


@main.command()
@click.argument("model_path", metavar="MODEL")
@click.argument("input")
@click.option("--variable", help=VARIABLE_HELP)
@click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE", help=STORAGE_OPTION_HELP)
@click.option("--scheduler", help=SCHEDULER_HELP)
@click.option("--chunk-rows", type=int, default=None, help=CHUNK_ROWS_HELP)
@click.option("--json", "as_json", is_flag=True, help="The result as JSON.")
def score(model_path, input, variable, storage_option, scheduler, chunk_rows, as_json):
    """Mean log-likelihood, BIC and AIC of INPUT under MODEL (one pass)."""
    options = _parse_storage_options(storage_option)
    model = _load_model(model_path, options)
    with _user_errors(), connect(scheduler):
        kw = {"variable": variable, "storage_options": options, "chunk_rows": chunk_rows}
        n, _ = _input_shape(model, model_path, input, kw)
        mean = model.score(input, **kw)
    p = model.n_parameters()
    result = {"n_samples": n, "mean_log_likelihood": mean, **information_criteria(mean, n, p), "n_parameters": p}
    if as_json:
        _echo_json(result)
    else:
        for key, value in result.items():
            click.echo(f"{key + ':':22s}{value:.10g}" if isinstance(value, float) else f"{key + ':':22s}{value}")


@main.command()
@click.argument("model_path", metavar="MODEL")
@click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
              help="fsspec option for a remote MODEL (repeatable; dotted keys nest).")
@click.option("--json", "as_json", is_flag=True, help="The summary as JSON, with each restart's per-iteration history.")
def info(model_path, storage_option, as_json):
    """Summary of a stored model: family, K, d, training data, restarts."""
    model = _load_model(model_path, _parse_storage_options(storage_option))
    summary = _summary(model, model_path)
    if as_json:
        summary["restarts"] = model.restarts_  # with the per-iteration histories
        _echo_json(summary)
    else:
        click.echo(_summary_text(summary))


# ---------------------------------------------------------------------------
# generate, demo
# ---------------------------------------------------------------------------


@main.command()
@click.argument("output")
@click.option("--samples", "-n", type=int, required=True, help="Rows to generate.")
@click.option("--features", "-d", type=int, required=True, help="Columns to generate.")
@click.option("--components", "-k", type=int, required=True, help="Components of the true mixture.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the true parameters and of every chunk's rows (the same seed and --chunk-rows give "
                   "the same data).")
@click.option("--chunk-rows", type=int, default=None,
              help="Rows per chunk of the store [100,000, fewer where that passes 30 MiB of float64 rows].")
@click.option("--separation", type=float, default=6.0, show_default=True, help="gaussian: mean spacing in component standard deviations.")
@click.option("--family", type=click.Choice(GRID_FAMILIES), default="gaussian", show_default=True,
              help="bernoulli writes bool, poisson uint16 counts, categorical small-int codes.")
@click.option("--n-categories", type=int, default=5, show_default=True, help="categorical: categories per feature.")
@click.option("--codec", type=click.Choice(sorted(CODECS)), default="none", show_default=True,
              help="Compression of the store (random float64 barely compresses).")
@click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
              help="fsspec option for a remote OUTPUT (repeatable; dotted keys nest).")
@click.option("--scheduler", help="Dask scheduler address to generate the chunks on; default DASK_SCHEDULER_ADDRESS, "
                                  "else local threads.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
def generate(output, samples, features, components, seed, chunk_rows, separation, family, n_categories, codec,
             storage_option, scheduler, overwrite):
    """Write a synthetic mixture (--family, default gaussian) to a Zarr store, chunk by chunk.

    The true parameters are in the array's attribute ``dask_em_truth``.
    """
    if chunk_rows is None:  # chunks under malloc's 32 MiB mmap ceiling read without page faults (see io)
        chunk_rows = max(1, min(100_000, STORE_CHUNK_BYTES // (8 * max(features, 1))))
    for name, value in (("--samples", samples), ("--features", features), ("--components", components),
                        ("--chunk-rows", chunk_rows), ("--n-categories", n_categories)):
        if value < 1:
            raise Failure(f"{name} must be >= 1; received {value}.")
    _generate(output, samples, features, components, seed, chunk_rows, separation,
              _parse_storage_options(storage_option), scheduler, overwrite, codec, family, n_categories)
    click.echo(f"wrote {samples:,} x {features} ({components} {family} components, seed {seed}) to {output}")


def _generate(output, samples, features, components, seed, chunk_rows, separation, options, scheduler, overwrite,
              codec="none", family="gaussian", n_categories=5):
    import dask.array as da
    import zarr

    from .runner import Runner
    from .datasets import make_family_mixture, make_mixture

    with _user_errors():
        _refuse_existing(output, overwrite, options)
    if family == "gaussian":
        x, _, spec = make_mixture(samples, features, components, chunk_rows=chunk_rows, seed=seed, separation=separation)
        truth = {"weights": spec.weights.tolist(), "means": spec.means.tolist(),
                 "covariances": spec.covariances.tolist(), "seed": seed}
    else:
        x, spec = make_family_mixture(family, samples, features, components, chunk_rows=chunk_rows,
                                      n_categories=n_categories, seed=seed)
        truth = {"family": family, "weights": spec.weights.tolist(), "seed": seed,
                 **{name: value.tolist() for name, value in spec.params.items()}}
        if family == "categorical":
            truth["n_categories"] = n_categories
    with _user_errors(), connect(scheduler), atomic_output(output, options, overwrite) as tmp:
        with Runner() as runner:
            target = zarr.create_array(
                tmp, shape=x.shape, chunks=(chunk_rows, features), dtype=x.dtype,
                compressors=CODECS[codec](), storage_options=options,
            )
            runner.compute(da.store(x, target, lock=False, compute=False))
        arr = zarr.open_array(tmp, mode="r+", storage_options=options)
        arr.attrs["dask_em_truth"] = truth
    return spec


@main.command()
@click.option("--samples", default=1_000_000, show_default=True, help="Rows to generate.")
@click.option("--features", default=8, show_default=True, help="Columns to generate.")
@click.option("--components", default=6, show_default=True, help="True (and fitted) number of components.")
@click.option("--n-init", default=3, show_default=True, help="Restarts, run side by side.")
@click.option("--seed", default=0, show_default=True, help="Seed of the data and of the fit's starts.")
@click.option("--keep", type=click.Path(file_okay=False), default=None, help="Write the store here and keep it.")
def demo(samples: int, features: int, components: int, n_init: int, seed: int, keep: str | None) -> None:
    """Generate a mixture into a Zarr store, fit it, print the model.

    Both run on threads of this process, or on the scheduler at
    DASK_SCHEDULER_ADDRESS when that is set.
    """
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    from .gaussian_mixture import GaussianMixture
    from .runner import active_client, scheduler_address

    _setup_logging(False, False)
    workdir = keep or tempfile.mkdtemp(prefix="dask-em-demo-")
    path = os.path.join(workdir, "points.zarr")
    address = scheduler_address()
    if address:
        logger.info("connecting to the scheduler at %s", address)
    try:
        # One Client for the generation and the fit: the dashboard line names the scheduler that ran them.
        with _user_errors(), connect(address):
            client = active_client()
            tic = time.perf_counter()
            spec = _generate(path, samples, features, components, seed, 125_000, 6.0, None, None, True)
            click.echo(f"wrote {samples:,} x {features} rows to {path} in {time.perf_counter() - tic:.1f} s", err=True)
            gm = GaussianMixture(components, n_init=n_init, random_state=seed, verbose=1)
            tic = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gm.fit(path)
            seconds = time.perf_counter() - tic
            dashboard = _dashboard_link(client, "set DASK_SCHEDULER_ADDRESS=ADDRESS")
        summary = _summary(gm, None, fitted_here=True)
        summary["seconds"] = round(seconds, 3)
        click.echo(_summary_text(summary))
        cost = ((gm.means_[:, None] - spec.means[None]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        click.echo(f"largest distance from a fitted mean to its true mean: {np.sqrt(cost[rows, cols]).max():.4f}")
        click.echo(f"dashboard:       {dashboard}")
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _dashboard_link(client, to_connect: str) -> str:
    """The dashboard of the scheduler behind ``client`` (the one the command ran on), or why there is none.

    ``to_connect``: how the command is pointed at a scheduler (an option, or an environment variable).
    """
    if client is None:
        return (f"none: this ran on threads of this process. For the dashboard, start `dask scheduler` and "
                f"`dask worker ADDRESS`, then {to_connect}.")
    address = client.scheduler.address
    try:
        link = client.dashboard_link
    except KeyError:  # the scheduler lists no HTTP server among its services
        link = None
    # A scheduler lists its HTTP server as the dashboard even when it serves none (--no-dashboard, no bokeh).
    served = _page_answers(link) if link else False
    if served is None:
        return f"{link} (not reachable from this machine)"
    return link if served else f"none: the scheduler at {address} serves no dashboard"


def _page_answers(url: str) -> bool | None:
    """Whether ``url`` answers with a page; None when it cannot be reached from here."""
    import urllib.error
    import urllib.request

    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # as a browser beside the scheduler
    try:
        with direct.open(url, timeout=5) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return False
    except (OSError, ValueError):
        return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
