"""speed suite on the seeded synthetic llama."""

import mlx.core as mx
import pytest
from mlx_lm import load

from harness.errors import HarnessError
from harness.suite import SuiteContext
from harness.sources.synthetic import write_synthetic
from harness.options import parse_options as parse_opts
from harness.suites.speed import (SpeedOptions, SpeedSuite, format_table, hardware_info, random_prompt,
                                 summarize_records, table_from_summary)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_synthetic("llama", tmp_path_factory.mktemp("speed") / "llama")


def make_ctx(model_dir, options, limit=None):
    model, tok = load(str(model_dir))
    return SuiteContext(model=model, tokenizer=tok, artifact=model_dir, exec_mode="native", reference=None,
                        limit=limit, options=options, progress=False)


def test_speed_records_and_table(model_dir):
    ctx = make_ctx(model_dir, {"contexts": "64,128", "gen_tokens": 8, "trials": 2, "prompt": "random,text"})
    eos_before = set(ctx.tokenizer.eos_token_ids)
    suite = SpeedSuite()
    assert suite.exec_mode == "native"
    items = suite.items(ctx)
    assert [it["id"] for it in items] == ["random-64", "random-128", "text-64", "text-128"]
    records = list(suite.run(ctx, items))
    assert set(ctx.tokenizer.eos_token_ids) == eos_before  # restored after clearing it
    for r in records:
        assert len(r["trials"]) == 2
        for t in r["trials"]:
            assert t["prompt_tokens"] == r["context"]
            assert t["generation_tokens"] == 8  # EOS cleared: never stops early
            assert t["prompt_tps"] > 0 and t["generation_tps"] > 0 and t["peak_memory_gb"] > 0
        assert r["prompt_tps_min"] <= r["prompt_tps"] <= r["prompt_tps_max"]
        assert r["hardware"]["cpu"] and "openblas" in r["hardware"]
    s = suite.summarize(ctx, list(reversed(records)))
    assert s["pp_tps_64"] == records[0]["prompt_tps"] and s["text_tg_tps_128"] == records[3]["generation_tps"]
    assert s["n"] == 4 and s["trials"] == 2
    assert "table" not in s  # results hold data; the table is rendered when printed
    assert suite.render(s) == format_table(records)
    specs = {m.name: m for m in suite.metric_specs(ctx)}
    assert specs["pp_tps_64"].kind == "speed" and specs["text_tg_tps_128"].higher_is_better is True
    assert specs["pp_tps_64"].max_drop is None  # hardware-dependent: never gated by default
    lines = suite.render(s).splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["Context", "Prefill (PP)", "Generation (TG)"]
    labels = [line.strip("|").split("|")[0].strip() for line in lines[2:]]
    assert labels == ["64 (random)", "128 (random)", "64 (text)", "128 (text)"]


def test_table_labels_like_the_reap_card():
    rec = {"prompt": "random", "gen_tokens": 128, "trials": [{}], "prompt_tps": 145.04, "prompt_tps_min": 140.0,
           "prompt_tps_max": 150.0, "generation_tps": 16.0, "generation_tps_min": 15.5,
           "generation_tps_max": 16.5, "peak_memory_gb": 1.0}
    records = [{**rec, "context": 1024, "id": "random-1024"}, {**rec, "context": 4096, "id": "random-4096"}]
    table = format_table(records)
    assert [c.strip() for c in table.splitlines()[0].strip("|").split("|")] == \
        ["Context", "Prefill (PP)", "Generation (TG)"]
    assert "| 1k" in table and "| 4k" in table and "145.0 tok/s [140.0-150.0]" in table
    assert summarize_records(records)["pp_tps_4096"] == 145.04
    assert table_from_summary(summarize_records(records)) == table  # same table from the stored data


def test_random_prompt_is_mlx_lm_benchmarks():
    mx.random.seed(0)
    expected = mx.random.randint(0, 1000, (1, 16)).tolist()[0]
    assert random_prompt(1000, 16) == expected


def parse_options(raw):
    return parse_opts(SpeedOptions, raw, "speed")


def test_options_and_hardware():
    opts = parse_options({"contexts": "1024, 4096", "trials": 5})
    assert opts.contexts == (1024, 4096) and opts.trials == 5 and opts.prompt == ("random",)
    with pytest.raises(HarnessError, match="contexts"):
        parse_options({"contexts": "1k"})
    with pytest.raises(HarnessError, match="prompt"):
        parse_options({"prompt": "chat"})
    for bad in ({"contexts": "0"}, {"trials": "0"}, {"warmup": "-1"}, {"gen_tokens": "x"}, {"shots": "3"}):
        with pytest.raises(HarnessError):
            parse_options(bad)
    assert parse_options({"prompt": "random,text"}).prompt == ("random", "text")
    hw = hardware_info()
    assert hw["cpu_count"] >= 1 and hw["memory_gb"] > 0 and hw["device"]


def test_limit(model_dir):
    ctx = make_ctx(model_dir, {"contexts": "64,128,256"}, limit=2)
    assert [it["context"] for it in SpeedSuite().items(ctx)] == [64, 128]


def test_depth_sweep_llama_bench_style(model_dir):
    ctx = make_ctx(model_dir, {"contexts": "32", "depths": "0,64", "pp": 16, "gen_tokens": 4, "trials": 2,
                               "warmup": 0})
    suite = SpeedSuite()
    items = suite.items(ctx)
    assert [it["id"] for it in items] == ["random-32", "random-pp16@d0", "random-pp16@d64"]
    records = list(suite.run(ctx, items))
    for r in records[1:]:
        for t in r["trials"]:
            assert t["prompt_tokens"] == 16  # only the pp tokens are timed; the depth sits in the cache
            assert t["generation_tokens"] == 4 and t["depth"] == r["depth"]
    s = suite.summarize(ctx, records)
    assert s["pp16_tps_d64"] == records[2]["prompt_tps"] and s["tg_tps_d0"] == records[1]["generation_tps"]
    assert s["pp_tps_32"] == records[0]["prompt_tps"] and s["n"] == 3
    names = {m.name for m in suite.metric_specs(ctx)}
    assert {"pp16_tps_d0", "tg_tps_d64", "peak_memory_gb_d64", "pp_tps_32"} <= names
    context_table, depth_table = suite.render(s).split("\n\n")
    assert [c.strip() for c in depth_table.splitlines()[0].strip("|").split("|")] == \
        ["Depth", "Prefill (pp16)", "Generation (TG)"]
    assert [line.strip("|").split("|")[0].strip() for line in depth_table.splitlines()[2:]] == ["d0", "d64"]
    from harness.report.tables import speed_rows  # depth keys never leak into the context table or plot
    assert [row[0] for row in speed_rows(s)] == [32]
    for bad in ({"depths": "-1"}, {"depths": "64,64"}, {"pp": "0"}):
        with pytest.raises(HarnessError):
            parse_options(bad)
    assert parse_options({}).depths == ()


def test_depth_prefill_continues_the_same_sequence(model_dir):
    """Generation after a cache prefilled with the first d tokens equals generation from the
    whole prompt: the depth really sits in the cache."""
    from mlx_lm.generate import stream_generate
    from mlx_lm.models.cache import make_prompt_cache

    ctx = make_ctx(model_dir, {})
    prompt = random_prompt(512, 40)
    whole = [r.token for r in stream_generate(ctx.model, ctx.tokenizer, prompt, max_tokens=5)]
    cache = make_prompt_cache(ctx.model)
    ctx.model(mx.array([prompt[:24]]), cache=cache)
    split = [r.token for r in stream_generate(ctx.model, ctx.tokenizer, prompt[24:], max_tokens=5,
                                              prompt_cache=cache)]
    assert split == whole
