"""One rule for `--opt key=value` options (suites) and recipe options.

A plugin declares its options as a dataclass; each field is one option, its type
annotation says how a command-line string is read, and `field(metadata=...)` may add
`choices`, `min`, `max` and `help`. The same function parses every plugin's options:

* a plain `key=value` goes to every plugin of the run that declares `key`; a key no
  plugin of the run declares is an error listing the valid keys;
* `name.key=value` goes to plugin `name` only (an error if `name` is not in the run or
  does not declare `key`);
* values are converted to the field's type and checked against choices and ranges,
  so a bad value fails before any work starts.
"""

import dataclasses
import math
import typing
from typing import Any, Optional

from harness.errors import HarnessError

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """For plugins that take no options."""


def option(default, *, help: str = "", choices=None, min=None, max=None, **kw):  # noqa: A002
    """A dataclass field with option metadata (use for defaults that need checks)."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "min": min, "max": max}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def option_names(cls) -> list:
    return [f.name for f in dataclasses.fields(cls)]


def _base_type(tp):
    """(type, optional) for an annotation: Optional[int] -> (int, True)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or (origin is not None and str(origin) == "types.UnionType"):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def _convert(owner: str, f: dataclasses.Field, value: Any, hints: dict):
    tp, optional = _base_type(hints.get(f.name, f.type))
    label = f"{owner} option {f.name}={value!r}"
    if optional and isinstance(value, str) and value.lower() in ("none", "null", ""):
        return None
    origin = typing.get_origin(tp) or tp
    try:
        if tp is bool:
            if isinstance(value, bool):
                out = value
            elif str(value).lower() in TRUE:
                out = True
            elif str(value).lower() in FALSE:
                out = False
            else:
                raise ValueError
        elif tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            out = int(value)
        elif tp is float:
            out = float(value)
            if not math.isfinite(out):
                raise ValueError
        elif origin in (tuple, list):
            items = value.split(",") if isinstance(value, str) else list(value)
            args = typing.get_args(tp)
            elem = args[0] if args and args[0] is not Ellipsis else str
            out = tuple(elem(x.strip()) if isinstance(x, str) else elem(x) for x in items
                        if not (isinstance(x, str) and not x.strip()))
            if origin is list:
                out = list(out)
        elif tp is str or tp is Any:
            out = str(value) if tp is str else value
        else:
            out = tp(value)
    except (TypeError, ValueError):
        kind = {bool: "true/false", int: "an integer", float: "a finite number"}.get(tp, getattr(tp, "__name__", str(tp)))
        raise HarnessError(f"{label} is not {kind}; pass e.g. --opt {f.name}={_example(f)}") from None
    meta = f.metadata or {}
    choices = meta.get("choices")
    values = out if isinstance(out, (tuple, list)) else (out,)
    if choices:
        bad = [v for v in values if v not in choices]
        if bad:
            raise HarnessError(f"{label} is invalid; use one of: {', '.join(map(str, choices))}")
    lo, hi = meta.get("min"), meta.get("max")
    if out is not None and not isinstance(out, (tuple, list, str, bool)):
        if lo is not None and out < lo:
            raise HarnessError(f"{label} is out of range; it must be >= {lo}")
        if hi is not None and out > hi:
            raise HarnessError(f"{label} is out of range; it must be <= {hi}")
    return out


def _example(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING and f.default is not None:
        d = f.default
        return ",".join(map(str, d)) if isinstance(d, (tuple, list)) else str(d).lower() if isinstance(d, bool) else str(d)
    return "VALUE"


def parse_options(cls, raw: Optional[dict], owner: str):
    """An instance of the options dataclass `cls` from {key: value} meant for `owner`.

    Keys must all be fields of `cls` (the caller routes keys with `route_options`)."""
    raw = dict(raw or {})
    names = option_names(cls)
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise HarnessError(f"unknown {owner} option(s) {', '.join(unknown)}; valid: {', '.join(names) or '(none)'}")
    hints = typing.get_type_hints(cls)
    kw = {f.name: _convert(owner, f, raw[f.name], hints) for f in dataclasses.fields(cls) if f.name in raw}
    try:
        opts = cls(**kw)
    except HarnessError:
        raise
    except (TypeError, ValueError) as e:
        raise HarnessError(f"{owner} options are invalid ({e})") from None
    check = getattr(opts, "validate", None)
    if callable(check):
        check()  # cross-field checks; raises HarnessError
    return opts


def route_options(raw: Optional[dict], owners: dict) -> dict:
    """Split --opt pairs between the plugins of a run: {owner name: {key: value}}.

    `owners` maps each plugin name to its options dataclass. Plain keys go to every
    owner that declares them; `name.key` to that owner only. Anything no owner takes
    is an error that lists the valid keys."""
    routed = {name: {} for name in owners}
    for key, value in (raw or {}).items():
        scope, dot, plain = key.partition(".")
        if dot and scope in owners:
            cls = owners[scope]
            if plain not in option_names(cls):
                valid = ", ".join(option_names(cls)) or "(none)"
                raise HarnessError(f"unknown {scope} option {plain!r}; valid: {valid}")
            routed[scope][plain] = value
            continue
        if dot and not any(key in option_names(c) for c in owners.values()):
            raise HarnessError(f"option {key!r} is scoped to {scope!r}, which is not in this run "
                               f"(running: {', '.join(owners)})")
        takers = [name for name, cls in owners.items() if key in option_names(cls)]
        if not takers:
            valid = "; ".join(f"{name}: {', '.join(option_names(cls)) or '(none)'}" for name, cls in owners.items())
            raise HarnessError(f"unknown option {key!r}; valid keys — {valid}")
        for name in takers:
            routed[name][key] = value
    return routed


def parse_pairs(pairs) -> dict:
    """['k=v', ...] from the command line -> {k: 'v'} (values stay strings; types come later)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise HarnessError(f"--opt {pair!r} is not KEY=VALUE (e.g. --opt shots=5)")
        key, value = pair.split("=", 1)
        key = key.strip()
        if not key:
            raise HarnessError(f"--opt {pair!r} has an empty key")
        out[key] = value
    return out


def describe_options(cls) -> list:
    """[(name, type, default, help)] for `harness suites --options`-style listings."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        tp, _ = _base_type(hints.get(f.name, f.type))
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        meta = f.metadata or {}
        help_ = meta.get("help", "")
        if meta.get("choices"):
            help_ = (help_ + " " if help_ else "") + f"({'|'.join(map(str, meta['choices']))})"
        rows.append((f.name, getattr(tp, "__name__", str(tp)), default, help_))
    return rows
