"""lm-eval passthrough on a local task: our stored per-item results equal a direct computation."""

import json
import textwrap

import mlx.core as mx
import mlx.nn as nn
import pytest

from harness.cli import main
from harness.results import read_items, read_result

pytest.importorskip("lm_eval")

ROWS = [
    {"question": "Q: 1 + 1 =", "choices": [" 2", " 3", " 7"], "answer": 0},
    {"question": "Q: the sky is", "choices": [" blue", " green"], "answer": 0},
    {"question": "Q: cats say", "choices": [" woof", " meow", " moo"], "answer": 1},
    {"question": "Q: 2 * 3 =", "choices": [" 5", " 6"], "answer": 1},
    {"question": "Q: ice is", "choices": [" hot", " cold"], "answer": 1},
]


@pytest.fixture()
def local_task(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROWS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_choice.yaml").write_text(textwrap.dedent(f"""
        task: tiny_choice
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{{{question}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: "{{{{answer}}}}"
        target_delimiter: ""
        metric_list:
          - metric: acc
    """))
    return tasks


def _loglik(model, tok, context, continuation):
    ctx_ids = tok.encode(context)
    full = tok.encode(context + continuation)
    cont = full[len(ctx_ids):]
    logits = model(mx.array([full[:-1]]))[0].astype(mx.float32)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return sum(logp[len(ctx_ids) - 1 + i, t].item() for i, t in enumerate(cont))


def test_lm_eval_passthrough_matches_direct_scoring(local_task, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["run", "--recipe", "uniform4", "--suite", "lm-eval:tiny_choice", "--model", "synthetic:llama",
                 "--out", str(out), "--no-progress", "--opt", f"include_path={local_task}",
                 "--opt", "chat_template=false"])
    assert code == 0, capsys.readouterr().err
    path = out / "synthetic-llama" / "uniform4" / "lm-eval:tiny_choice.json"
    res = read_result(path)
    items = {r["id"]: r for r in read_items(path)}
    assert res["n_items"] == len(ROWS) == len(items)

    from harness.builder import BuildOptions, build
    from harness.runtime.execution import load_artifact

    model, tok, _ = load_artifact(build(BuildOptions(model="synthetic:llama", recipe="uniform4",
                                                     progress=False), log=lambda m: None).path, "simulated")
    correct = 0
    for i, row in enumerate(ROWS):
        scores = [_loglik(model, tok, row["question"], c) for c in row["choices"]]
        expected = max(range(len(scores)), key=scores.__getitem__) == row["answer"]
        assert items[f"tiny_choice:{i}"]["correct"] == expected
        correct += expected
    assert res["summary"]["acc"] == pytest.approx(correct / len(ROWS))
    assert "acc_ci95" in res["summary"]
    # metrics declared from lm-eval's own higher_is_better for the task
    assert {m["name"]: (m["higher_is_better"], m["kind"], m["max_drop"]) for m in res["metrics"]} == \
        {"acc": (True, "proportion", 0.02), "n": (None, "count", None)}
    # chance of a guesser on these documents (3, 2, 3, 2, 2 choices), stored in the summary and the spec
    assert res["summary"]["chance"] == {"acc": pytest.approx((1 / 3 + 1 / 2 + 1 / 3 + 1 / 2 + 1 / 2) / 5)}
    assert next(m for m in res["metrics"] if m["name"] == "acc")["chance"] == pytest.approx(13 / 30)
    assert res["provenance"]["options"]["chat_template"] is False and res["provenance"]["options"]["chunk"] == 64


def test_lm_eval_metric_specs_follow_the_gate_defaults():
    from harness.suites.lm_eval_task import metric_spec

    assert metric_spec("acc_norm", True).max_drop == 0.02 and metric_spec("acc_norm", True).kind == "proportion"
    assert metric_spec("exact_match", True).max_drop == 0.02
    ppl = metric_spec("perplexity", False)
    assert (ppl.kind, ppl.max_drop, ppl.relative, ppl.higher_is_better) == ("ppl", 0.05, True, False)
    word = metric_spec("word_perplexity", False)
    assert word.max_drop is None and word.higher_is_better is False
    assert metric_spec("bleu", True).max_drop is None and metric_spec("bleu", True).kind == "mean"


def test_lm_eval_bad_option_is_caught_before_the_task_loads(capsys, tmp_path):
    code = main(["run", "--recipe", "float", "--suite", "lm-eval:no_such_task_xyz", "--model", "synthetic:llama",
                 "--out", str(tmp_path / "r"), "--opt", "chunk=0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "chunk='0' is out of range" in err[-1] and not (tmp_path / "r").exists()


def test_unknown_lm_eval_task_is_one_line(capsys, tmp_path):
    code = main(["run", "--recipe", "float", "--suite", "lm-eval:no_such_task_xyz", "--model", "synthetic:llama",
                 "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("harness: error:")]
    assert code == 2 and len(errors) == 1 and errors[0] == err[-1] and "no_such_task_xyz" in err[-1]
