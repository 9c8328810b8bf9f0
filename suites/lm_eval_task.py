"""lm-eval passthrough: `--suite lm-eval:<task>` runs any lm-eval task on the artifact.

The model goes through mlx-lm's own lm-eval adapter (`mlx_lm.evaluate.MLXLM`), handed the
already-loaded model so the run's exec mode applies. Items are lm-eval documents
(`<leaf task>:<doc index>`); they are evaluated in chunks through lm-eval's `samples=`
selection so a killed run resumes at chunk granularity. `--limit N` takes the first N
documents of each leaf task, as lm-eval's own `--limit` does.

Options (`--opt`): shots, batch_size (8), chunk (64 docs per lm-eval call),
include_path (a folder of custom task YAMLs), chat_template (true/false; default: the
model's template if it has one, like mlx_lm.evaluate).
"""

import math
from collections import defaultdict

from harness.errors import HarnessError


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


class LMEvalSuite:
    description = "any lm-eval task through mlx-lm's lm-eval adapter (--suite lm-eval:TASK)"
    version = "1"

    def __init__(self, task: str):
        if not task:
            raise HarnessError("name the lm-eval task: --suite lm-eval:TASK (e.g. lm-eval:arc_easy)")
        self.task = task
        self.name = f"lm-eval:{task}"
        self._tasks = None

    def _task_manager(self, ctx):
        from lm_eval.tasks import TaskManager

        return TaskManager(include_path=ctx.options.get("include_path"))

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

        lm = _adapter(ctx.model, ctx.tokenizer, int(ctx.options.get("batch_size", 8)),
                      ctx.options.get("chat_template"))
        chunk = int(ctx.options.get("chunk", 64))
        by_task = defaultdict(list)
        for it in items:
            by_task[it["task"]].append(it["doc"])
        for leaf, docs in sorted(by_task.items()):
            for start in range(0, len(docs), chunk):
                selected = docs[start:start + chunk]
                results = lm_eval.simple_evaluate(
                    model=lm, tasks=[leaf], samples={leaf: selected}, num_fewshot=ctx.options.get("shots"),
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
        return summary

    def data_info(self, ctx) -> dict:
        from importlib.metadata import version

        return {"source": f"lm-eval task {self.task}", "lm_eval": version("lm-eval"),
                "include_path": ctx.options.get("include_path")}
