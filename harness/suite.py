"""The suite plugin protocol.

A suite turns a loaded model into per-item records and a summary. The runner
(harness/run.py) owns loading, exec modes, the results store and resume: it
hands the suite the items still missing and appends every record the suite
yields as soon as it is yielded, so a killed run resumes where it stopped.

A suite module defines a class with:

    name: str                       # what the user types: --suite NAME
    description: str                # one line, shown by `harness suites`
    version: str                    # bump when items/scoring change (goes in provenance)
    needs_reference: bool = False   # True: ctx.reference() is used (fidelity, unicode)
    exec_mode: str | None = None    # "native" forces native kernels (speed); None = user's choice

    def items(self, ctx: SuiteContext) -> list[dict]:
        # every item this run covers (after --limit), each with a unique str "id";
        # deterministic for a given (options, seed). Cheap: no model calls.
    def run(self, ctx: SuiteContext, items: list[dict]) -> Iterator[dict]:
        # yields one record per item (a JSON-serialisable dict with the item's "id"),
        # in any order, as each finishes. Batching inside is fine.
    def summarize(self, ctx: SuiteContext, records: list[dict]) -> dict:
        # summary metrics from ALL records (old + new): {"metric": value, ...}.
        # Accuracy-like metrics: report value plus "<metric>_ci95": [lo, hi] and "n".
    def data_info(self, ctx) -> dict:   # optional: {"source": ..., "sha256": ...}

Records of items that are "correct"/"incorrect" should carry "correct": bool so
paired statistics (flips, McNemar) work across recipes without suite-specific code.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional


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
    options: dict = field(default_factory=dict)  # --opt key=value pairs, suite-specific
    cache_dir: Optional[Path] = None  # per-model cache dir for suite data (e.g. reference logits)
    progress: bool = True  # show tqdm bars

    @property
    def is_reference(self) -> bool:
        """The model under test is the float reference itself (it can be its own reference pass)."""
        return (self.reference_path is not None and self.artifact is not None
                and Path(self.artifact).resolve() == Path(self.reference_path).resolve())
