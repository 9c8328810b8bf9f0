"""One fixed job with 1 rank and with N ranks (mlx.launch, ring backend, localhost).

    python benchmarks/distributed.py [--model smollm2-135m] [--recipe float] [--suite mmlu]
        [--limit 40] [--ranks 2]

Both sides run the real CLI in a subprocess with --fresh into a temp results dir
(the artifact is built first, so neither side pays for a build): `harness run ...`
with every core for the one rank, `harness run --launch N --distribute items ...`
for N ranks (each rank gets cores/N BLAS threads). Prints the wall time of each
command (process start, model load and evaluation), the suite's own evaluation
time from the stored provenance, the speedup of each, the items every rank
evaluated and the bytes the ranks exchanged (the JSON records and ids gathered to
rank 0; the model itself never travels), and checks that both stored the same
items. On a 2-core machine expect a speedup of at most 2x: the single process
already uses both cores for its matmuls.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(args: list, env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness", "run", *args, "--no-progress"], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: harness run {' '.join(args)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--recipe", default="float")
    ap.add_argument("--suite", default="mmlu")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--ranks", type=int, default=2)
    args = ap.parse_args()

    from harness.results import read_items, read_result
    from harness.sources import model_slug

    env = dict(os.environ, TQDM_DISABLE="1")
    env.pop("OPENBLAS_NUM_THREADS", None)  # one rank: every core; N ranks: --launch divides them
    subprocess.run([sys.executable, "-m", "harness", "build", "--recipe", args.recipe, "--model", args.model,
                    "--no-progress"], env=env, check=True, capture_output=True)
    job = ["--recipe", args.recipe, "--suite", args.suite, "--model", args.model, "--limit", str(args.limit),
           "--fresh"]
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "many"
        wall_1 = run([*job, "--out", str(one)], env)
        wall_n = run([*job, "--out", str(many), "--launch", str(args.ranks), "--distribute", "items"], env)
        rel = Path(model_slug(args.model)) / args.recipe / f"{args.suite}.json"
        r1, rn = read_result(one / rel), read_result(many / rel)
        same_ids = [r["id"] for r in read_items(one / rel)] == [r["id"] for r in read_items(many / rel)]
    dist = rn["provenance"]["distributed"]
    eval_1, eval_n = r1["provenance"]["seconds"], rn["provenance"]["seconds"]
    print(f"job: {args.suite} --limit {args.limit}, recipe {args.recipe}, model {args.model}, "
          f"{os.cpu_count()} cores")
    print(f"1 rank : wall {wall_1:7.1f} s   evaluation {eval_1:7.1f} s")
    print(f"{args.ranks} ranks: wall {wall_n:7.1f} s   evaluation {eval_n:7.1f} s   "
          f"({dist['backend']}, hosts {dist['hosts']})")
    print(f"speedup: wall {wall_1 / wall_n:.2f}x, evaluation {eval_1 / eval_n:.2f}x")
    print(f"items per rank: {dist['items_per_rank']}")
    print(f"communication: {dist.get('gathered_bytes')} bytes gathered "
          f"({dist.get('gathered_bytes', 0) / max(1, r1['n_items']):.0f} per item)")
    print(f"same items stored: {same_ids}; same summary: "
          f"{json.dumps(r1['summary'], sort_keys=True) == json.dumps(rn['summary'], sort_keys=True)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
