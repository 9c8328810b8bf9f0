"""Our truthfulqa suite (protocol=lm-eval) vs lm-eval's own truthfulqa_mc1/mc2 on the same rows.

    python benchmarks/truthfulqa_vs_lmeval.py [--model smollm2-135m] [--data tests/fixtures/truthfulqa_mc.jsonl]

lm-eval's installed task yamls run unchanged (their 6-shot preamble, target delimiter,
process_results_mc2) except that the dataset is the same JSONL rows; the model goes through
mlx-lm's lm-eval adapter without the chat template, as our suite scores the plain prompt.
Printed: MC1 and MC2 each side, items whose MC1 differs, max |MC2 difference|, wall time each
and the speed ratio (ours shares the preamble's KV cache across all questions and scores every
distinct choice once; lm-eval prefills each question's context per task).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.runtime.blas import ensure_openblas  # noqa: E402
from harness.sources import resolve_model  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default=str(ROOT / "tests" / "fixtures" / "truthfulqa_mc.jsonl"))
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)
    ensure_openblas()

    import lm_eval
    import numpy as np
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from mlx_lm import load

    from harness.suite import SuiteContext
    from harness.suites.lm_eval_task import _adapter
    from harness.suites.truthfulqa import TruthfulQASuite

    path = resolve_model(args.model)
    model, tok = load(str(path))
    data = str(Path(args.data).resolve())

    suite = TruthfulQASuite()
    ctx = SuiteContext(model=model, tokenizer=tok, artifact=path, exec_mode="native", reference=lambda: None,
                       options={"data": data, "batch_size": args.batch_size}, progress=False)
    items = suite.items(ctx)
    t0 = time.perf_counter()
    ours = {r["id"]: r for r in suite.run(ctx, items)}
    t_ours = time.perf_counter() - t0

    tasks_dir = Path(lm_eval.__file__).parent / "tasks" / "truthfulqa"
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("mc1", "mc2"):
            (Path(tmp) / f"bench_{name}.yaml").write_text(
                f"include: {tasks_dir / f'truthfulqa_{name}.yaml'}\ntask: bench_truthfulqa_{name}\ntag: []\n"
                f"dataset_path: json\ndataset_name: null\ndataset_kwargs:\n  data_files:\n    validation: {data}\n")
        tm = TaskManager(include_path=tmp)  # task indexing is not scoring: outside the timer
        lm = _adapter(model, tok, batch_size=args.batch_size, use_chat_template=False)
        t0 = time.perf_counter()
        out = simple_evaluate(model=lm, tasks=["bench_truthfulqa_mc1", "bench_truthfulqa_mc2"], task_manager=tm,
                              log_samples=True, bootstrap_iters=0)
        t_theirs = time.perf_counter() - t0
    theirs = {n: {s["doc_id"]: s["acc"] for s in out["samples"][f"bench_truthfulqa_{n}"]} for n in ("mc1", "mc2")}

    ids = [it["id"] for it in items]
    doc = [int(i.split("/")[1]) for i in ids]
    mc1_ours = np.array([float(ours[i]["correct"]) for i in ids])
    mc1_theirs = np.array([theirs["mc1"][d] for d in doc])
    mc2_ours = np.array([ours[i]["mc2"] for i in ids])
    mc2_theirs = np.array([theirs["mc2"][d] for d in doc])
    print(f"model {args.model}, {len(ids)} questions from {Path(data).name}")
    print(f"MC1  ours {mc1_ours.mean():.4f}  lm-eval {mc1_theirs.mean():.4f}  "
          f"items differing: {int((mc1_ours != mc1_theirs).sum())}")
    print(f"MC2  ours {mc2_ours.mean():.4f}  lm-eval {mc2_theirs.mean():.4f}  "
          f"max |diff| {np.abs(mc2_ours - mc2_theirs).max():.2e}")
    print(f"time ours {t_ours:.1f} s  lm-eval {t_theirs:.1f} s  ratio {t_theirs / t_ours:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
