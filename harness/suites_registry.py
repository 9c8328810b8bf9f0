"""Suite plugins: built-ins from `suites/` plus the `harness.suites` entry-point group."""

import difflib
import importlib
import sys
from importlib.metadata import entry_points

from harness.errors import HarnessError

# name -> "module:Class" for built-in suites (imported lazily: some pull heavy deps)
BUILTIN_SUITES = {
    "reasoning": "harness.suites.reasoning:ReasoningSuite",
    "unicode": "harness.suites.unicode:UnicodeSuite",
    "fidelity": "harness.suites.fidelity:FidelitySuite",
    "speed": "harness.suites.speed:SpeedSuite",
    "mmlu": "harness.suites.mmlu:MMLUSuite",
    "humaneval": "harness.suites.humaneval:HumanEvalSuite",
    "mbpp": "harness.suites.mbpp:MBPPSuite",
    "truthfulqa": "harness.suites.truthfulqa:TruthfulQASuite",
}


def _load(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def available_suites() -> dict:
    """{name: suite class} of every installed suite that imports."""
    out = {}
    for name, target in BUILTIN_SUITES.items():
        try:
            out[name] = _load(target)
        except (ImportError, AttributeError):
            continue  # not shipped in this build
    for ep in entry_points(group="harness.suites"):
        try:
            out[ep.name] = ep.load()
        except Exception as e:
            print(f"harness: warning: suite plugin {ep.name!r} failed to load: {e}", file=sys.stderr)
    return out


def suite_names() -> list:
    return sorted(set(BUILTIN_SUITES) | {ep.name for ep in entry_points(group="harness.suites")})


def get_suite(name: str, **kwargs):
    if name.startswith("lm-eval:"):
        from harness.suites.lm_eval_task import LMEvalSuite

        return LMEvalSuite(task=name.split(":", 1)[1], **kwargs)
    if name in BUILTIN_SUITES:
        try:
            return _load(BUILTIN_SUITES[name])(**kwargs)
        except (ImportError, AttributeError) as e:
            raise HarnessError(f"suite {name!r} failed to load ({e}); reinstall with `make setup`")
    for ep in entry_points(group="harness.suites"):
        if ep.name == name:
            return ep.load()(**kwargs)
    close = difflib.get_close_matches(name, suite_names(), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise HarnessError(f"unknown suite {name!r}; {hint}`harness suites` lists the installed ones "
                       "(or use lm-eval:TASK)")
