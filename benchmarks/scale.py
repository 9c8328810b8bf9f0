"""Memory at scale: plan, build and fidelity on a MiniMax-shaped model larger than the budget.

    python benchmarks/scale.py [--layers 8] [--experts 16] [--top-k 8] [--budget 2]
                               [--seq-len 16] [--limit 8] [--oq4] [--stages plan,build,fidelity]
                               [--keep] [--workdir DIR]

Generates `synthetic:minimax-m2.5@0:layers=L,experts=E` (MiniMax-M2.5's real per-layer
shapes: hidden 3072, 48/8 heads, expert FFN 1536, vocab 200,064; bf16 shards, >= 6 GB
with the defaults) in a private cache, then runs every stage as its own process:

  generate   harness.sources.resolve_model (the synthetic writer, tensor by tensor)
  plan       harness plan --recipe uniform4           (and oq4 with --oq4)
  build      harness build --recipe uniform4
  fidelity   harness run --suite fidelity --limit N --memory-budget B
             (the float reference and the 4-bit model both do not fit B: layer-streamed)

and prints per stage: peak RSS read from the OS (each stage runs under a small wrapper
process whose resource.getrusage(RUSAGE_CHILDREN).ru_maxrss is that stage's peak), the
model's size on disk, the ratio, wall time and GB/s of model bytes. A stage whose RSS
passes --kill-gb is stopped (so a non-streaming stage cannot take the shared machine down)
and reported as such. Targets (issue 13): every stage <= 0.35 x size on disk and < 3 GB.
The generated model and artifacts are deleted afterwards unless --keep.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
HARNESS = [PY, "-m", "harness"]

# Runs argv, polls the process group's RSS (kills it above a limit), prints a JSON line.
WRAPPER = r"""
import json, os, resource, signal, subprocess, sys, time
limit, timeout = float(sys.argv[1]) * 2**30, float(sys.argv[2])
p = subprocess.Popen(sys.argv[3:], start_new_session=True)
killed, timed_out, t0 = False, False, time.time()
def tree_rss(root):
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return total
while p.poll() is None:
    if tree_rss(p.pid) > limit or time.time() - t0 > timeout:
        killed, timed_out = tree_rss(p.pid) > limit, time.time() - t0 > timeout
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        break
    time.sleep(0.2)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": p.returncode, "killed": killed, "timed_out": timed_out, "seconds": time.time() - t0,
                  "maxrss_bytes": ru.ru_maxrss * 1024}), file=sys.stderr)
"""


def stage(name: str, argv: list, env: dict, kill_gb: float, log: Path, timeout: float = 1e9) -> dict:
    print(f"[{name}] {' '.join(argv[2:] if argv[:2] == [PY, '-m'] else argv)}", file=sys.stderr, flush=True)
    with open(log, "a") as fh:
        fh.write(f"\n===== {name}\n")
        fh.flush()
        proc = subprocess.run([PY, "-c", WRAPPER, str(kill_gb), str(timeout), *argv], env=env, stdout=fh,
                              stderr=subprocess.PIPE, text=True, cwd=REPO)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("{")]
    with open(log, "a") as fh:
        fh.write(proc.stderr)
    out = json.loads(lines[-1]) if lines else {"rc": proc.returncode, "killed": False, "timed_out": False,
                                                 "seconds": 0, "maxrss_bytes": 0}
    out["name"] = name
    print(f"[{name}] rc={out['rc']} killed={out['killed']} {out['seconds']:.0f}s "
          f"peak RSS {out['maxrss_bytes'] / 2**30:.2f} GB", file=sys.stderr, flush=True)
    return out


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and not f.is_symlink())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--budget", type=float, default=2.0, help="--memory-budget for the fidelity run (GB)")
    ap.add_argument("--seq-len", type=int, default=16,
                    help="tokens per window (MLX CPU MoE runs one GEMV per token and expert: keep it small)")
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--oq4", action="store_true", help="also plan oq4 (a calibration pass over the model)")
    ap.add_argument("--kill-gb", type=float, default=8.0, help="stop a stage whose RSS passes this")
    ap.add_argument("--oq4-timeout", type=float, default=900, help="stop the oq4 plan after this many seconds")
    ap.add_argument("--stages", default="plan,build,fidelity",
                    help="comma list of plan,build,fidelity to run (generation always runs; it is cached "
                         "with --workdir/--keep)")
    ap.add_argument("--workdir", help="where the private cache goes (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated model and artifacts")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="harness-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HARNESS_CACHE=str(work / "cache"), TQDM_DISABLE="1")
    spec = f"synthetic:minimax-m2.5@0:layers={args.layers},experts={args.experts},top_k={args.top_k}"
    log = work / "scale.log"
    print(f"model {spec}\nworkdir {work} (log: {log})", file=sys.stderr)
    rows = []
    try:
        gen = stage("generate", [PY, "-c", f"from harness.sources import resolve_model; "
                                          f"print(resolve_model({spec!r}))"], env, args.kill_gb, log)
        src = next((work / "cache" / "sources").glob("synthetic-minimax-m2.5-*"), None)
        if gen["rc"] != 0 or src is None:
            print(f"generation failed; see {log}", file=sys.stderr)
            return 1
        size = dir_bytes(src)
        rows.append(gen)
        stages = set(args.stages.split(","))
        recipes = ["uniform4"] + (["oq4"] if args.oq4 else [])
        for recipe in recipes if "plan" in stages else []:
            for f in (work / "cache" / "plans").glob("*"):  # measure the pass, not a cached plan/sensitivity
                f.unlink()
            rows.append(stage(f"plan {recipe}", [*HARNESS, "plan", "--model", spec, "--recipe", recipe],
                              env, args.kill_gb, log, args.oq4_timeout if recipe == "oq4" else 1e9))
        if "build" in stages:
            rows.append(stage("build uniform4", [*HARNESS, "build", "--model", spec, "--recipe", "uniform4"],
                              env, args.kill_gb, log))
            rows.append(stage("build float (link)", [*HARNESS, "build", "--model", spec, "--recipe", "float"],
                              env, args.kill_gb, log))
        if "fidelity" in stages:
            rows.append(stage(f"fidelity (budget {args.budget:g} GB)",
                              [*HARNESS, "run", "--model", spec, "--recipe", "uniform4", "--suite", "fidelity",
                               "--limit", str(args.limit), "--opt", f"seq_len={args.seq_len}",
                               "--memory-budget", str(args.budget), "--out", str(work / "results")],
                              env, args.kill_gb, log))
        result = next((work / "results").rglob("fidelity.json"), None)
        summary = json.loads(result.read_text()) if result else None
    finally:
        if not args.keep:
            shutil.rmtree(work / "cache", ignore_errors=True)

    gb = 2**30
    print(f"\nmodel: {spec}\nsize on disk: {size / gb:.2f} GB (bf16 shards); targets: peak RSS <= "
          f"{0.35 * size / gb:.2f} GB (0.35 x size) and < 3 GB\n")
    print(f"| stage | peak RSS (GB) | RSS / model size | wall (s) | GB/s | within targets |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        rss = r["maxrss_bytes"] / gb
        ok = r["rc"] == 0 and rss <= 0.35 * size / gb and rss < 3
        status = ("killed (RSS limit)" if r["killed"] else "stopped (time limit)" if r.get("timed_out") else
                  "yes" if ok else "FAILED rc=%s" % r["rc"] if r["rc"] else "no")
        print(f"| {r['name']} | {rss:.2f} | {rss * gb / size:.3f} | {r['seconds']:.0f} | "
              f"{size / gb / max(r['seconds'], 1e-9):.3f} | {status} |")
    if summary:
        s, prov = summary["summary"], summary["provenance"]
        print(f"\nfidelity uniform4 vs float: ppl {s['ppl']:.4f}, ref_ppl {s['ref_ppl']:.4f}, KLD "
              f"{s['kld_mean']:.5f}, top-1 {s['top1_agreement']:.4f} over {s['n']} tokens; placement: "
              f"model {prov.get('placement')}, reference {prov.get('data', {}).get('reference_placement')}")
    print(f"\nlog: {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
