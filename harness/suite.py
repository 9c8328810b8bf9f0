"""The suite contract: what an evaluation suite is, and the metrics it declares.

A suite turns a loaded model into per-item records and a summary. The runner
(harness/runner.py) owns loading, exec modes, the results store and resume: it hands
the suite the items still missing and appends every record the suite yields as
soon as it is yielded, so a killed run resumes where it stopped.

Subclass `Suite` (one file per suite under `suites/`, or a third-party package that
registers the `harness.suites` entry point). Records of items that are right/wrong
carry "correct": bool so paired statistics (flips, McNemar) work across recipes
without suite-specific code.
"""

import abc
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from harness.options import NoOptions, parse_options, route_options


@dataclass
class SuiteContext:
    model: Any  # mlx.nn.Module, exec mode already applied
    tokenizer: Any  # mlx_lm TokenizerWrapper
    artifact: Path  # the built artifact directory (mlx-lm format)
    exec_mode: str  # "native" | "simulated"
    reference: Callable[[], tuple]  # lazily loads the float reference -> (model, tokenizer)
    reference_path: Optional[Path] = None  # float reference directory (for cache keys)
    limit: Optional[int] = None
    seed: int = 0
    # The suite's parsed Options instance (the runner routes --opt to each suite); direct
    # callers may pass a dict, which Suite.opts parses by the same rule.
    options: Any = field(default_factory=dict)

    cache_dir: Optional[Path] = None  # per-model cache dir for suite data (e.g. reference logits)
    progress: bool = True  # show tqdm bars
    memory_budget_gb: Optional[float] = None  # weights budget (None: 0.6 x RAM); streamable suites stream beyond it

    @property
    def is_reference(self) -> bool:
        """The model under test is the float reference itself (it can be its own reference pass)."""
        return (self.reference_path is not None and self.artifact is not None
                and Path(self.artifact).resolve() == Path(self.reference_path).resolve())


METRIC_KINDS = ("proportion", "mean", "ppl", "points", "count", "speed", "info")


@dataclass(frozen=True)
class MetricSpec:
    """What one summary metric means, declared by the suite that produces it.

    The report and the gate read these from the stored result (no guessing from
    names, except for third-party suites that declare nothing).
    """

    name: str  # key in the summary
    higher_is_better: Optional[bool]  # None: informational, never "better"/"worse"
    kind: str = "mean"  # proportion (0..1, shown in %), mean, ppl, points (/100), count, speed (tok/s), info
    max_drop: Optional[float] = None  # default gate threshold; None: gated only via --max-drop
    relative: bool = False  # max_drop is a fraction of the baseline value
    item_key: Optional[str] = None  # per-item record field behind the metric (paired tests)
    description: str = ""
    # the score of a model that cannot do the task (0.25: 4-way multiple choice, 0: pass@1, a rubric
    # score): a reference whose CI includes it cannot rank recipes (harness.report.floor.floor_effect).
    # When it depends on the data (TruthfulQA's varying number of choices), the suite's summary
    # carries it instead: summary["chance"] = {metric: level}, which wins (chance_level below).
    chance: Optional[float] = None

    def __post_init__(self):
        if self.kind not in METRIC_KINDS:
            raise ValueError(f"metric kind {self.kind!r} is not one of {METRIC_KINDS}")

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: dict) -> "MetricSpec":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class Suite(abc.ABC):
    """An evaluation suite. Class attributes describe it; three methods do the work."""

    name: str  # what the user types: --suite NAME
    description: str = ""  # one line, shown by `harness suites`
    version: str = "1"  # bump when items or scoring change (goes in the run key)
    needs_reference: bool = False  # True: ctx.reference() is used (fidelity, unicode)
    exec_mode: Optional[str] = None  # "native" forces native kernels (speed); None = the user's choice
    Options: type = NoOptions  # dataclass of --opt keys (harness.options)
    metrics: tuple = ()  # MetricSpec for every summary metric the report/gate should know

    @abc.abstractmethod
    def items(self, ctx: SuiteContext) -> list:
        """Every item this run covers (after --limit), each a dict with a unique str "id";
        deterministic for a given (options, seed). Cheap: no model calls."""

    @abc.abstractmethod
    def run(self, ctx: SuiteContext, items: list) -> Iterator[dict]:
        """Yield one JSON-serialisable record (with the item's "id") per item, in any order."""

    @abc.abstractmethod
    def summarize(self, ctx: SuiteContext, records: list) -> dict:
        """Summary metrics from ALL records (old and new). Proportions carry "<metric>_ci95"."""

    def data_info(self, ctx: SuiteContext) -> dict:
        """{"source": ..., "sha256": ...} of the data the items came from."""
        return {}

    def opts(self, ctx: SuiteContext):
        """This suite's Options for the context: the runner's parsed instance, or (for
        direct callers: notebooks, tests) a dict of key=value parsed by the one rule."""
        return options_for(self, ctx.options)

    def variant(self, ctx: SuiteContext) -> Optional[str]:
        """A name for results that must never share a file, a column or a gate with the
        default ones: the run is stored as `<suite>@<variant>` (e.g. `mmlu@omlx`). The
        default: the value of a `protocol` option when it is not the option's default
        (protocol_variant); None keeps the suite's own name."""
        return protocol_variant(self.opts(ctx))

    def metric_specs(self, ctx: SuiteContext) -> tuple:
        """The MetricSpecs stored with a result: `metrics`, unless a suite's metric
        names depend on its options or data (speed's contexts, lm-eval's task)."""
        return tuple(self.metrics)

    def render(self, summary: dict) -> str:
        """Text tables `harness run` prints for this suite, rendered from the stored
        summary (results hold data, never pre-rendered markdown). "" for none."""
        return ""


def options_for(suite, raw):
    """A suite's parsed Options from None, a dict ({key: value}, plain or "suite.key"),
    or an instance already parsed."""
    cls = getattr(suite, "Options", NoOptions)
    if isinstance(raw, cls):
        return raw
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise TypeError(f"options for suite {suite.name!r} must be a dict or {cls.__name__}, not {type(raw).__name__}")
    routed = route_options(raw, {suite.name: cls})
    return parse_options(cls, routed[suite.name], suite.name)


VARIANT_SEP = "@"  # <suite>@<variant>: the results name of a run under a non-default protocol


def protocol_variant(options) -> Optional[str]:
    """The `protocol` option's value when it differs from its declared default, else None.
    Runs of different protocols are different measurements (lm-eval log-likelihood vs omlx's
    generative prompt): each gets its own results file, report rows and gate pairing."""
    if not dataclasses.is_dataclass(options) or isinstance(options, type):
        return None
    f = next((f for f in dataclasses.fields(options) if f.name == "protocol"), None)
    if f is None or f.default is dataclasses.MISSING:
        return None
    value = getattr(options, "protocol", None)
    return None if value in (None, f.default) else str(value)


def result_name(suite, ctx: SuiteContext) -> str:
    """What a run's results are stored and reported as: the suite's name, or
    `<name>@<variant>` (Suite.variant; duck-typed suites: the protocol rule)."""
    if hasattr(suite, "variant"):
        variant = suite.variant(ctx)
    else:
        variant = protocol_variant(ctx.options)
    return f"{suite.name}{VARIANT_SEP}{variant}" if variant else suite.name


def split_result_name(name: str) -> tuple:
    """'mmlu@omlx' -> ('mmlu', 'omlx'); 'mmlu' -> ('mmlu', None)."""
    base, sep, variant = name.partition(VARIANT_SEP)
    return base, (variant if sep else None)


def chance_level(spec, summary: Optional[dict] = None) -> Optional[float]:
    """The chance level of a metric: the summary's data-dependent one (summary["chance"][name],
    e.g. TruthfulQA MC1 = mean of 1/n_choices) when the suite reported one, else the spec's."""
    levels = (summary or {}).get("chance")
    if isinstance(levels, dict):
        value = levels.get(spec.name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return spec.chance


def with_chance(specs, summary: dict) -> tuple:
    """The specs with each data-dependent chance level of the summary filled in (what a result
    stores, so its declarations say the level its floor check used)."""
    return tuple(dataclasses.replace(s, chance=chance_level(s, summary)) for s in specs)
