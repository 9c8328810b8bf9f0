"""lm-eval passthrough: `--suite lm-eval:<task>` runs any lm-eval task on the artifact.

The model goes through mlx-lm's own lm-eval adapter (`mlx_lm.evaluate.MLXLM`), handed the
already-loaded model so the run's exec mode applies. Items are lm-eval documents
(`<leaf task>:<doc index>`); they are evaluated in chunks through lm-eval's `samples=`
selection so a killed run resumes at chunk granularity. `--limit N` takes the first N
documents of each leaf task, as lm-eval's own `--limit` does.

Options (`--opt`, `LMEvalOptions`): shots, batch_size (8), chunk (64 docs per lm-eval
call), include_path (a folder of custom task YAMLs), chat_template (true/false; default:
the model's template if it has one, like mlx_lm.evaluate). Metrics are declared from
lm-eval's own `higher_is_better` for the task (`metric_specs`). For multiple-choice tasks with one
gold answer the summary reports acc/acc_norm's chance level (mean 1/n_choices of the documents
scored: summary["chance"]) for the floor-effect check.
"""

import fnmatch
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional

from harness.errors import HarnessError
from harness.options import option
from harness.suite import MetricSpec, Suite


@dataclass(frozen=True)
class LMEvalOptions:
    """--opt keys of every lm-eval:TASK suite (parsed by harness.options)."""

    shots: Optional[int] = option(None, help="few-shot examples (default: the task's own)", min=0)
    batch_size: int = option(8, help="requests per model call", min=1)
    chunk: int = option(64, help="documents per lm-eval call (resume granularity)", min=1)
    include_path: Optional[str] = option(None, help="a folder of custom task YAMLs")
    chat_template: Optional[bool] = option(None, help="true/false (default: the model's template if it has one)")


# Default gate thresholds by metric name, the ones harness gate has always used for
# these names (accuracies: 2 points; perplexity: 5 % relative). Others: --max-drop only.
_PROPORTIONS = ("acc", "accuracy", "pass@*", "pass_at_*", "exact_match*", "*acc*", "mc1", "mc2")


def metric_spec(name: str, higher_is_better: Optional[bool]) -> MetricSpec:
    """A MetricSpec for one lm-eval metric, its direction from the task's higher_is_better."""
    if any(fnmatch.fnmatchcase(name, p) for p in _PROPORTIONS):
        drop = 0.02 if higher_is_better and name not in ("mc1", "mc2") else None
        return MetricSpec(name, higher_is_better, "proportion", max_drop=drop,
                          item_key="correct" if name == "acc" else None)
    if name in ("ppl", "perplexity"):
        return MetricSpec(name, higher_is_better, "ppl", max_drop=0.05, relative=True)
    if "ppl" in name or "perplexity" in name:
        return MetricSpec(name, higher_is_better, "ppl")
    return MetricSpec(name, higher_is_better, "mean")


def _adapter(model, tokenizer, batch_size: int, use_chat_template):
    from lm_eval.api.model import LM
    from mlx_lm.evaluate import MLXLM

    class LoadedMLXLM(MLXLM):
        """MLXLM around a model that is already loaded (MLXLM itself loads from a path)."""

        def __init__(self):
            LM.__init__(self)
            self._model, self.tokenizer = model, tokenizer
            self._max_tokens = None
            self._batch_size = batch_size
            self.use_chat_template = (tokenizer.chat_template is not None if use_chat_template is None
                                      else bool(use_chat_template))
            self._sampler = None

    return LoadedMLXLM()


class LMEvalSuite(Suite):
    description = "any lm-eval task through mlx-lm's lm-eval adapter (--suite lm-eval:TASK)"
    version = "1"
    Options = LMEvalOptions

    def __init__(self, task: str):
        if not task:
            raise HarnessError("name the lm-eval task: --suite lm-eval:TASK (e.g. lm-eval:arc_easy)")
        self.task = task
        self.name = f"lm-eval:{task}"
        self._tasks = None

    def _task_manager(self, ctx):
        from lm_eval.tasks import TaskManager

        return TaskManager(include_path=self.opts(ctx).include_path)

    def _leaf_tasks(self, ctx) -> dict:
        """{leaf task name: Task}, loading the task (and its data) once."""
        if self._tasks is None:
            from lm_eval.tasks import get_task_dict

            try:
                tree = get_task_dict([self.task], self._task_manager(ctx))
            except Exception as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise HarnessError(f"lm-eval task {self.task!r} could not be loaded ({msg}); check the name "
                                   "(`lm_eval --tasks list`), the network for hub datasets, or --opt include_path=")
            leaves = {}

            def walk(node):
                for key, value in node.items():
                    if isinstance(value, dict):
                        walk(value)
                    elif value is not None and hasattr(value, "eval_docs"):
                        leaves[getattr(value, "config").task] = value

            walk(tree)
            if not leaves:
                raise HarnessError(f"lm-eval task {self.task!r} has no evaluable subtasks")
            self._tasks = leaves
        return self._tasks

    def items(self, ctx) -> list:
        out = []
        for leaf, task in sorted(self._leaf_tasks(ctx).items()):
            n = len(task.eval_docs)
            if ctx.limit:
                n = min(n, ctx.limit)
            out.extend({"id": f"{leaf}:{i}", "task": leaf, "doc": i} for i in range(n))
        return out

    def run(self, ctx, items):
        import lm_eval

        opts = self.opts(ctx)
        lm = _adapter(ctx.model, ctx.tokenizer, opts.batch_size, opts.chat_template)
        chunk = opts.chunk
        by_task = defaultdict(list)
        for it in items:
            by_task[it["task"]].append(it["doc"])
        for leaf, docs in sorted(by_task.items()):
            for start in range(0, len(docs), chunk):
                selected = docs[start:start + chunk]
                results = lm_eval.simple_evaluate(
                    model=lm, tasks=[leaf], samples={leaf: selected}, num_fewshot=opts.shots,
                    apply_chat_template=lm.use_chat_template, log_samples=True, task_manager=self._task_manager(ctx),
                    random_seed=ctx.seed, numpy_random_seed=ctx.seed, torch_random_seed=ctx.seed,
                    fewshot_random_seed=ctx.seed, bootstrap_iters=0, verbosity="ERROR",
                )
                for sample in results["samples"][leaf]:
                    metrics = {k: sample[k] for k in sample.get("metrics", []) if k in sample}
                    record = {"id": f"{leaf}:{sample['doc_id']}", "task": leaf, "metrics": metrics}
                    if "acc" in metrics:
                        record["correct"] = bool(metrics["acc"])
                    yield record

    def summarize(self, ctx, records) -> dict:
        from harness.stats import wilson_ci

        values = defaultdict(list)
        per_task = defaultdict(lambda: defaultdict(list))
        for r in records:
            for k, v in r["metrics"].items():
                if isinstance(v, (int, float)):
                    values[k].append(float(v))
                    per_task[r["task"]][k].append(float(v))
        summary = {"n": len(records)}
        for k, vs in values.items():
            mean = sum(vs) / len(vs)
            summary[k] = mean
            if all(v in (0.0, 1.0) for v in vs):
                summary[f"{k}_ci95"] = list(wilson_ci(int(sum(vs)), len(vs)))
            elif len(vs) > 1:
                sd = math.sqrt(sum((v - mean) ** 2 for v in vs) / (len(vs) - 1))
                summary[f"{k}_ci95"] = [mean - 1.96 * sd / math.sqrt(len(vs)), mean + 1.96 * sd / math.sqrt(len(vs))]
        if len(per_task) > 1:
            summary["per_task"] = {t: {k: sum(v) / len(v) for k, v in m.items()} for t, m in per_task.items()}
        chance = self._chance(ctx, records)
        if chance is not None:
            summary["chance"] = {k: chance for k in ("acc", "acc_norm") if k in summary}
        return summary

    def _chance(self, ctx, records) -> Optional[float]:
        """acc / acc_norm of a model that guesses: mean of 1/n_choices over the documents scored,
        for multiple-choice tasks with one gold answer and lm-eval's own scoring (a custom
        process_results, e.g. truthfulqa_mc2's, is another metric: no level). None otherwise."""
        tasks = self._leaf_tasks(ctx)
        levels = []
        for r in records:
            leaf, _, doc = str(r.get("id", "")).rpartition(":")
            task = tasks.get(leaf)
            cfg = getattr(task, "config", None)
            if task is None or getattr(task, "OUTPUT_TYPE", None) != "multiple_choice" \
                    or getattr(cfg, "process_results", None) is not None or getattr(task, "multiple_target", 0):
                return None
            try:
                d = task.eval_docs[int(doc)]
                choices, target = task.doc_to_choice(d), task.doc_to_target(d)
            except Exception:  # a task whose documents cannot be read back here: no level
                return None
            if isinstance(target, (list, tuple)) or not choices:
                return None
            levels.append(1.0 / len(choices))
        return sum(levels) / len(levels) if levels else None

    def data_info(self, ctx) -> dict:
        from importlib.metadata import version

        return {"source": f"lm-eval task {self.task}", "lm_eval": version("lm-eval"),
                "include_path": self.opts(ctx).include_path}

    def metric_specs(self, ctx) -> tuple:
        """Each metric of the task's leaves with lm-eval's own higher_is_better."""
        specs = {}
        for task in self._leaf_tasks(ctx).values():
            try:
                directions = task.higher_is_better() or {}
            except Exception:  # a task without the method: no declared directions
                directions = {}
            for name, hib in directions.items():
                specs.setdefault(name, metric_spec(name, None if hib is None else bool(hib)))
        return (*specs.values(), MetricSpec("n", None, "count"))
