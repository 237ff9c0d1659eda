"""Evaluators from a registry, declared as config data (big_vision style).

    config.evals.ppl = eval_config("perplexity", every=100, lengths=(256, 1024))
    config.evals.passkey = eval_config("passkey", every=0, lengths=(256,))

Each entry of `config.evals` has `kind` (a registered name), `every` (steps; 0 = only at the end
of training and in `longctx eval`) and the evaluator's own fields. An evaluator is one file in
longctx_jax/eval/evaluators/ that calls `register`:

    @register("perplexity", defaults=lambda: ml_collections.ConfigDict(dict(lengths=(), ...)))
    def perplexity(cfg, model_config, params, data_config, *, progress) -> (scalars, details)

`scalars` ({metric: float}) are logged as `eval/<name>/<metric>`; `details` (JSON-able) go to
WORKDIR/eval/<step>.json beside them.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import pkgutil
from collections.abc import Callable
from numbers import Integral

import ml_collections


@dataclasses.dataclass(frozen=True)
class Evaluator:
    kind: str
    run: Callable
    defaults: Callable[[], ml_collections.ConfigDict]
    validate: Callable | None = None


_REGISTRY: dict[str, Evaluator] = {}


def register(kind: str, *, defaults, validate=None):
    """Decorator: registers `run` as the evaluator `kind` (see the module docstring)."""

    def wrap(run):
        if kind in _REGISTRY:
            raise ValueError(f"evaluator kind {kind!r} is registered twice")
        _REGISTRY[kind] = Evaluator(kind=kind, run=run, defaults=defaults, validate=validate)
        return run

    return wrap


def kinds() -> tuple[str, ...]:
    _load_all()
    return tuple(sorted(_REGISTRY))


def get(kind) -> Evaluator:
    _load_all()
    if kind not in _REGISTRY:
        raise ValueError(f"evaluator kind={kind!r}: expected one of {kinds()}")
    return _REGISTRY[kind]


def _load_all() -> None:
    from longctx_jax.eval import evaluators

    for module in pkgutil.iter_modules(evaluators.__path__):
        importlib.import_module(f"{evaluators.__name__}.{module.name}")


def eval_config(kind: str, *, every: int = 0, **fields) -> ml_collections.ConfigDict:
    """A `config.evals.<name>` entry: the evaluator's defaults with `fields` changed."""
    cfg = get(kind).defaults()
    for name, value in fields.items():
        if name not in cfg:
            raise ValueError(f"{kind} evaluator: unknown field {name!r}; fields: {sorted(cfg)}")
        cfg[name] = value
    cfg.kind = kind
    cfg.every = every
    return cfg


def apply_overrides(evals, arguments) -> ml_collections.ConfigDict:
    """A copy of `evals` with `--config.evals.NAME.FIELD=VALUE` arguments applied.

    VALUE is a Python literal (`(256, 1024)`, `0.5`, `10`) or else a string. A NAME the run did
    not declare becomes a new evaluator: its `kind` must be given (`--config.evals.pk.kind=passkey`)
    and its other fields start at that evaluator's defaults.
    """
    evals = ml_collections.ConfigDict(evals.to_dict() if hasattr(evals, "to_dict") else evals)
    changes: dict[str, dict] = {}
    for argument in arguments:
        key, sep, text = argument.lstrip("-").partition("=")
        parts = key.split(".")  # config, evals, NAME, FIELD
        if not sep or len(parts) != 4:
            raise ValueError(f"{argument}: expected --config.evals.NAME.FIELD=VALUE")
        changes.setdefault(parts[2], {})[parts[3]] = _literal(text)
    for name, fields in changes.items():
        if name not in evals:
            if "kind" not in fields:
                raise ValueError(
                    f"--config.evals.{name}: not an evaluator of this run ({sorted(evals)}); "
                    f"a new one needs --config.evals.{name}.kind=<one of {kinds()}>"
                )
            evals[name] = eval_config(fields["kind"])
        for field, value in fields.items():
            try:
                evals[name][field] = value
            except TypeError as error:
                raise ValueError(f"--config.evals.{name}.{field}={value!r}: {error}") from None
    return evals


def _literal(text: str):
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return tuple(value) if isinstance(value, list) else value


def validate_evals(evals, data_config=None) -> None:
    """ValueError naming `evals.<name>.<field>`, its value and what was expected (checked against
    the run's `data_config` where an evaluator's fields depend on it)."""
    for name, cfg in evals.items():
        if not hasattr(cfg, "items") or "kind" not in cfg:
            raise ValueError(
                f"evals.{name}={cfg!r}: expected a ConfigDict with `kind` (one of {kinds()}) "
                "and `every`; build it with longctx_jax.eval.registry.eval_config"
            )
        if cfg.kind not in kinds():
            raise ValueError(f"evals.{name}.kind={cfg.kind!r}: expected one of {kinds()}")
        every = cfg.get("every", None)
        if isinstance(every, bool) or not isinstance(every, Integral) or every < 0:
            raise ValueError(
                f"evals.{name}.every={every!r}: expected an integer >= 0 (0 = only at the end)"
            )
        evaluator = get(cfg.kind)
        known = set(evaluator.defaults()) | {"kind", "every"}
        for field in cfg:
            if field not in known:
                raise ValueError(
                    f"evals.{name}.{field}: unknown field of the {cfg.kind} evaluator"
                    f"{_did_you_mean(field, known)}"
                )
        if evaluator.validate is not None:
            evaluator.validate(f"evals.{name}", cfg, data_config)


def _did_you_mean(name, known) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; fields: {sorted(known)}"


def due(evals, step: int, *, final: bool) -> list[str]:
    """The names of the evaluators to run after `step` (every > 0 divides it, or the run ends)."""
    return [name for name, cfg in evals.items() if final or (cfg.every and step % cfg.every == 0)]


def run_evals(evals, names, model_config, params, data_config, *, progress=True) -> dict:
    """{name: {"kind", "scalars", "details"}} of the evaluators `names` of `evals`."""
    results = {}
    for name in names:
        cfg = evals[name]
        scalars, details = get(cfg.kind).run(
            cfg, model_config, params, data_config, progress=progress
        )
        results[name] = dict(kind=cfg.kind, scalars=scalars, details=details)
    return results


def flat_scalars(results: dict) -> dict:
    """{"eval/<name>/<metric>": value} of `run_evals`' results."""
    return {
        f"eval/{name}/{metric}": value
        for name, result in results.items()
        for metric, value in result["scalars"].items()
    }
