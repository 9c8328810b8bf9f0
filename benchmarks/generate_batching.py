"""The shared generation helper: batched vs one-at-a-time greedy decoding.

    python benchmarks/generate_batching.py [--model smollm2-135m] [--prompts 8]
        [--max-tokens 64] [--batch-size 8]

Encodes `--prompts` chat prompts with harness.runtime.prompt.encode_prompt, then
decodes them greedily with harness.runtime.generate at batch_size 1 (exactly
mlx_lm.generate) and at `--batch-size` (mlx-lm's BatchGenerator, left-padded),
and prints generated tokens/s of both, their ratio, and how many outputs are
token-identical (batching changes float summation order, so a near-tie can flip).
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.runtime.blas import ensure_openblas  # noqa: E402

PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that reverses a string.",
    "Explain in one sentence why the sky is blue.",
    "List three prime numbers greater than ten.",
    "Translate 'good morning' into Spanish.",
    "What is 17 times 24?",
    "Name a planet with rings.",
    "Summarise the plot of Hamlet in one sentence.",
    "Give a synonym for 'quick'.",
    "How many legs does a spider have?",
    "What does HTTP stand for?",
    "Write a haiku about the sea.",
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)
    ensure_openblas()

    from harness.runtime.execution import load_artifact
    from harness.runtime.generate import generate
    from harness.runtime.prompt import encode_prompt, wants_chat
    from harness.sources import resolve_model

    model, tok, _ = load_artifact(resolve_model(args.model), "native")
    texts = (PROMPTS * (args.prompts // len(PROMPTS) + 1))[: args.prompts]
    ids = [encode_prompt(tok, t, chat=wants_chat("auto", tok)) for t in texts]
    generate(model, tok, ids[:1], max_tokens=4, batch_size=1)  # warm-up
    rows = {}
    for bs in (1, args.batch_size):
        t0 = time.perf_counter()
        out = generate(model, tok, ids, max_tokens=args.max_tokens, batch_size=bs)
        seconds = time.perf_counter() - t0
        n = sum(len(g.tokens) for g in out)
        rows[bs] = (out, n / seconds)
        print(f"batch_size {bs:>3}: {n} tokens in {seconds:.2f} s = {n / seconds:.1f} tok/s")
    one, many = rows[1][0], rows[args.batch_size][0]
    same = sum(a.tokens == b.tokens for a, b in zip(one, many))
    print(f"ratio batched/unbatched: {rows[args.batch_size][1] / rows[1][1]:.2f}x; "
          f"identical outputs: {same}/{len(one)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
