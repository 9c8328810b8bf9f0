"""`harness run` over several processes, with MLX's own distributed engine (`mlx.launch`).

No scheduler of our own: `mlx.launch` starts one `harness run` per rank (ring over
TCP, JACCL over Thunderbolt RDMA, MPI, NCCL) and `mx.distributed` carries the few
messages the ranks exchange (all_gather of JSON bytes). Three ways to use the ranks:

* items (data parallel, the default): every rank loads the whole model and scores
  a deterministic share of a suite's pending items (round-robin over the item
  list). Each rank appends its records to its own log `<suite>.items.rank<R>.jsonl`
  (fsync per record) and, every round of a few items, sends them to rank 0, which
  appends them to the one `<suite>.items.jsonl`. At the end rank 0 writes the items
  in item order and the summary from the same list: the stored files are what a
  one-process run writes. Resume: rank 0's items log plus every rank's own log
  (rank 0 also reads the logs of ranks it can see on a shared disk, so a rerun
  with fewer ranks on one machine loses nothing).
* jobs (sweeps): whole (recipe, suite) jobs go to ranks round-robin when their
  number is a multiple of the world size; each job runs as in one process. Results
  written on another host are sent to rank 0 at the end.
* --shard tensor|pipeline (model parallel): the artifact and the float reference
  are loaded sharded over the group (mlx-lm's `shard()` / `pipeline()`); every rank
  runs every item in lockstep and rank 0 alone writes.

Artifacts are built once: rank 0 builds, the others wait, then build themselves,
which is a cache hit when the cache is shared (one machine, NFS) and a local build
when it is not.

A rank that dies: mlx.launch stops the others (SIGTERM: one line, exit 3); every
record already fsynced is kept and a rerun (same or fewer ranks) resumes.
"""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from harness.cache import atomic_write_text
from harness.errors import HarnessError
from harness.results import ItemLog, _json_default

SHARD_KINDS = ("tensor", "pipeline")
DISTRIBUTE = ("auto", "items", "jobs")
ROUNDS = 8  # gathers per suite and rank: enough to lose little when a host is dropped, few syncs
CONNECT_TIMEOUT = float(os.environ.get("HARNESS_DIST_CONNECT_TIMEOUT", "120"))
RERUN = "finished items are kept; rerun the same command (same or fewer ranks) to resume"


@dataclass
class Dist:
    rank: int = 0
    size: int = 1
    backend: str = "none"
    hosts: list = field(default_factory=list)  # hostname of every rank
    shard: Optional[str] = None
    distribute: str = "items"  # items | jobs (resolved by plan_jobs)
    shared_out: bool = True  # rank 0's results dir is visible to every rank (jobs mode)
    group: Any = None
    sent_bytes: int = 0  # payload this rank put into collectives
    received_bytes: int = 0  # payload it got from the other ranks
    shares: dict = field(default_factory=dict)  # suite -> items evaluated per rank
    volume: dict = field(default_factory=dict)  # suite -> JSON bytes its gathers moved between ranks

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def writer(self) -> bool:
        return self.rank == 0

    @property
    def splits_items(self) -> bool:
        return self.active and self.shard is None and self.distribute == "items"

    def ranks_per_host(self) -> int:
        return max(self.hosts.count(h) for h in set(self.hosts)) if self.hosts else 1

    def describe(self, suite: Optional[str] = None) -> dict:
        """What goes into a result's provenance["distributed"]."""
        out = {"world_size": self.size, "backend": self.backend, "hosts": self.hosts,
               "mode": "shard-" + self.shard if self.shard else self.distribute}
        if self.distribute == "jobs" and not self.shard:
            out["rank"] = self.rank  # the rank that ran the whole job
        elif suite in self.shares:
            out["items_per_rank"] = self.shares[suite]  # under --shard every rank runs every item
            out["gathered_bytes"] = self.volume.get(suite)  # records, ids; not the model's own traffic
        return out


_SESSION: Optional[Dist] = None


def session() -> Dist:
    """The process's distributed state (a single rank until setup() found a launch)."""
    return _SESSION or Dist()


def detect_backend() -> Optional[str]:
    """The backend mlx.launch (or mpirun) set this process up for, from its environment."""
    env = os.environ
    if env.get("MLX_JACCL_COORDINATOR"):
        return "jaccl"
    if env.get("MLX_HOSTFILE") and env.get("MLX_RANK") is not None:
        try:
            return "ring" if Path(env["MLX_HOSTFILE"]).read_text().strip() else None  # one host: no ring
        except OSError:
            return "ring"
    if env.get("NCCL_HOST_IP") and env.get("MLX_WORLD_SIZE"):
        return "nccl"
    if env.get("OMPI_COMM_WORLD_SIZE") or env.get("PMI_SIZE"):
        return "mpi"
    return None


def setup(shard: Optional[str] = None, distribute: str = "auto") -> Dist:
    """Join the launched group (once per process). Single process: a Dist of size 1."""
    global _SESSION
    if shard is not None and shard not in SHARD_KINDS:
        raise HarnessError(f"--shard {shard!r}: use one of {', '.join(SHARD_KINDS)}")
    if distribute not in DISTRIBUTE:
        raise HarnessError(f"--distribute {distribute!r}: use one of {', '.join(DISTRIBUTE)}")
    if _SESSION is None:
        backend = detect_backend()
        _SESSION = _join(backend) if backend else Dist()
    dist = _SESSION
    if shard and not dist.active:
        raise HarnessError(f"--shard {shard} needs several ranks: add --launch 2 (this machine) or start it "
                           "with `mlx.launch --hostfile hosts.json -- harness run ...`")
    dist.shard = shard
    dist.distribute = distribute
    return dist


def _join(backend: str) -> Dist:
    import mlx.core as mx

    rank = int(os.environ.get("MLX_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))

    def give_up():  # ring/JACCL init blocks forever on a peer that never comes
        print(f"harness: error: rank {rank} could not reach the other ranks within {CONNECT_TIMEOUT:.0f} s "
              f"({backend}); check that every host is up and reachable (mlx.launch --verbose shows the "
              "addresses); nothing was run", file=sys.stderr, flush=True)
        os._exit(2)

    timer = threading.Timer(CONNECT_TIMEOUT, give_up)
    timer.daemon = True
    timer.start()
    try:
        group = mx.distributed.init(strict=True, backend=backend)
    except Exception as e:  # noqa: BLE001 - a backend error: one clear line
        raise HarnessError(f"cannot join the {backend} group as rank {rank} ({str(e).splitlines()[0]}); "
                           "start the ranks with mlx.launch (see README 'Several machines')")
    finally:
        timer.cancel()
    dist = Dist(rank=group.rank(), size=group.size(), backend=backend, group=group)
    if dist.active:
        dist.hosts = gather_json(dist, socket.gethostname())
        signal.signal(signal.SIGTERM, _stopped_by_launcher)
    return dist


def _stopped_message() -> str:
    return f"rank {session().rank} stopped: another rank failed or the run was cancelled; {RERUN}"


def _stopped_by_launcher(signum, frame):
    # mlx.launch terminates the surviving ranks when one fails (or on Ctrl-C)
    print(f"harness: error: {_stopped_message()}", file=sys.stderr, flush=True)
    os._exit(3)


# -- collectives -------------------------------------------------------------


def gather_json(dist: Dist, obj) -> list:
    """all_gather of one JSON value per rank -> [value of rank 0, value of rank 1, ...]."""
    import mlx.core as mx
    import numpy as np

    payload = json.dumps(obj, ensure_ascii=False, default=_json_default).encode()
    if not dist.active:
        return [obj]
    try:
        sizes = mx.distributed.all_gather(mx.array([len(payload)], dtype=mx.int32), group=dist.group,
                                          stream=mx.cpu)
        sizes = [int(s) for s in np.array(sizes)]
        width = max(max(sizes), 1)
        buf = np.zeros(width, dtype=np.uint8)
        buf[: len(payload)] = np.frombuffer(payload, dtype=np.uint8)
        data = np.array(mx.distributed.all_gather(mx.array(buf), group=dist.group, stream=mx.cpu))
    except RuntimeError:  # a peer's socket closed: it died
        raise HarnessError(_stopped_message())
    data = data.reshape(dist.size, width)
    dist.sent_bytes += len(payload)
    dist.received_bytes += sum(sizes) - len(payload)
    return [json.loads(data[r, : sizes[r]].tobytes()) for r in range(dist.size)]


def barrier(dist: Dist) -> None:
    if dist.active:
        import mlx.core as mx

        try:
            mx.eval(mx.distributed.all_sum(mx.array(1.0), group=dist.group, stream=mx.cpu))
        except RuntimeError:
            raise HarnessError(_stopped_message())


def build_once(dist: Dist, make):
    """Rank 0 builds first; the others then build too: a cache hit on a shared cache,
    their own build when caches are per host. Never two builds of one key at once."""
    if not dist.active:
        return make()
    result = make() if dist.writer else None
    barrier(dist)
    return result if dist.writer else make()


# -- loading (model parallel) -------------------------------------------------


def load_artifact(dist: Dist, path: Path, exec_mode: str):
    """(model, tokenizer) for a suite: sharded over the group under --shard, else whole."""
    from harness.runtime import execution

    if dist.shard is None:
        return execution.load_artifact(path, exec_mode)[:2]
    return load_sharded(dist, path, execution.resolve_exec_mode(exec_mode))


def load_sharded(dist: Dist, path: Path, mode: str):
    """mlx-lm's sharded_load, with our exec-mode steps: fp32 on CPU, and in simulated
    mode the quantized layers dequantized *before* sharding (the sharded layer types
    have no dequantized form)."""
    import mlx.core as mx
    from mlx_lm.utils import load_model, load_tokenizer, sharded_load

    from harness.runtime.execution import is_quantized, on_gpu, simulate

    model, config = load_model(Path(path), lazy=True, strict=False)
    can = {"tensor": hasattr(model, "shard"),
           "pipeline": hasattr(model, "model") and hasattr(model.model, "pipeline")}
    if not can[dist.shard]:
        other = [k for k, ok in can.items() if ok]
        hint = f"use --shard {other[0]}" if other else "run it data parallel (no --shard) on machines that fit it"
        raise HarnessError(f"mlx-lm has no {dist.shard}-parallel support for model_type "
                           f"{config.get('model_type')!r}; {hint}")
    if dist.shard == "tensor":
        # mlx-lm's shard() divides heads and widths by the group size without checking
        uneven = {k: config[k] for k in ("num_attention_heads", "num_key_value_heads", "intermediate_size",
                                         "moe_intermediate_size")
                  if isinstance(config.get(k), int) and config[k] % dist.size}
        if uneven:
            what = ", ".join(f"{k}={v}" for k, v in uneven.items())
            raise HarnessError(f"--shard tensor cannot split this model over {dist.size} ranks ({what} are not "
                               f"multiples of {dist.size}); use a rank count that divides them, or data "
                               "parallel (no --shard)")
    if mode == "native" and dist.shard == "tensor" and on_gpu():
        model, tokenizer = sharded_load(str(path), tensor_group=dist.group)
        return model, tokenizer
    tokenizer = load_tokenizer(Path(path), {"trust_remote_code": True},
                               eos_token_ids=config.get("eos_token_id", None))
    if not on_gpu():
        model.set_dtype(mx.float32)  # exact upcast, as execution.load_artifact
    if mode == "simulated" and is_quantized(model):
        simulate(model)
    if dist.shard == "tensor":
        model.shard(dist.group)
    else:
        model.model.pipeline(dist.group)
    mx.eval(model.parameters())
    barrier(dist)
    return model, tokenizer


# -- checks and job plans -------------------------------------------------------


def check_suites(dist: Dist, suites: list) -> None:
    """Before any work: refuse what several ranks would get wrong."""
    if not dist.active or dist.shard is not None:
        return
    for suite in suites:
        if suite.name == "speed" and dist.ranks_per_host() > 1:
            raise HarnessError(f"the speed suite cannot run with {dist.ranks_per_host()} ranks on one host "
                               "(their timings would interfere); run it without mlx.launch, with one rank "
                               "per host, or with --shard")


def plan_jobs(dist: Dist, jobs: list, requested: str) -> list:
    """Which of the (recipe, suite) jobs this rank runs. Whole jobs go to ranks
    (round-robin) when their number is a multiple of the world size, so every rank
    gets the same count; otherwise (or with --distribute items) every rank takes
    part in every job on a share of its items."""
    if not dist.active or dist.shard is not None:
        dist.distribute = "items"
        return list(jobs)
    if requested == "jobs" or (requested == "auto" and len(jobs) % dist.size == 0):
        dist.distribute = "jobs"
        return [job for j, job in enumerate(jobs) if j % dist.size == dist.rank]
    dist.distribute = "items"
    return list(jobs)


def check_shared_out(dist: Dist, out: Path) -> None:
    """Jobs mode: can every rank see rank 0's results dir (one machine, NFS)?"""
    token = None
    if dist.writer:
        Path(out).mkdir(parents=True, exist_ok=True)
        fd, token = tempfile.mkstemp(prefix=".harness-dist-", dir=out)
        os.close(fd)
    token = gather_json(dist, token)[0]
    dist.shared_out = all(gather_json(dist, Path(token).exists()))
    barrier(dist)
    if dist.writer:
        os.unlink(token)


def collect_jobs(dist: Dist, written: list, out_root: Path) -> list:
    """Jobs mode on separate disks: the results other ranks wrote reach rank 0."""
    if dist.distribute != "jobs" or not dist.active:
        return written
    got = gather_json(dist, [_pack(r, out_root, dist.shared_out) for r in written])
    if not dist.writer:
        return []
    from harness.results import write_result

    for rank_results in got[1:]:
        for result, path, items in rank_results:
            if not dist.shared_out:  # written on another disk: store it here too
                if items is not None:
                    _write_items(Path(out_root) / path, items)
                write_result(Path(out_root) / path.replace(".items.jsonl", ".json"), result)
            written.append(result)
    return written


def _pack(result: dict, out_root: Path, shared: bool):
    from harness.sources import model_slug

    rel = f"{model_slug(result['model'])}/{result['recipe']}/{result['items_file']}"
    path = Path(out_root) / rel
    lines = path.read_text(encoding="utf-8").splitlines() if not shared and path.is_file() else None
    return [result, rel, lines]


# -- data parallel items --------------------------------------------------------


def part_path(items_path: Path, rank: int) -> Path:
    return Path(items_path).with_name(Path(items_path).name.replace(".items.jsonl", f".items.rank{rank}.jsonl"))


def _read_part(path: Path, run_key: str) -> list:
    """Records of another rank's log seen on a shared disk (read only: its owner may be writing)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line
        if rec.get("id") == "_header":
            if rec.get("_run_key") != run_key:
                return []
            continue
        out.append(rec)
    return out


def merge_parts(log_: ItemLog, wanted: set, keep: Optional[Path] = None, discard: bool = False) -> list:
    """Append the records of the per-rank logs visible beside `log_` (a run on several
    ranks that died; this disk shared or this host's ranks) to it; returns their paths.
    A one-process rerun calls it too, so no finished item is redone. discard (--fresh):
    delete them instead."""
    seen = []
    pattern = part_path(log_.path, 0).name.replace("rank0", "rank*")
    for p in sorted(log_.path.parent.glob(pattern)):
        if discard:
            p.unlink(missing_ok=True)
        elif p != keep:
            seen.append(p)
            for rec in _read_part(p, log_.run_key):
                if rec["id"] in wanted:
                    log_.append(rec)
    return seen


def evaluate(dist: Dist, suite, ctx, items: list, items_path: Path, run_key: str, fresh: bool):
    """Every rank's share of `items`; on rank 0 returns the ItemLog holding all records."""
    before = dist.sent_bytes + dist.received_bytes
    try:
        return _evaluate(dist, suite, ctx, items, items_path, run_key, fresh)
    finally:
        dist.volume[suite.name] = dist.sent_bytes + dist.received_bytes - before


def _evaluate(dist: Dist, suite, ctx, items: list, items_path: Path, run_key: str, fresh: bool):
    ids = [it["id"] for it in items]
    wanted = set(ids)
    own = part_path(items_path, dist.rank)
    if fresh:
        own.unlink(missing_ok=True)
    part = ItemLog(own, run_key) if dist.shard is None else None
    barrier(dist)  # every rank has repaired its own log before rank 0 reads them
    log_ = None
    seen_parts = []
    if dist.writer:
        if fresh:
            items_path.unlink(missing_ok=True)
        log_ = ItemLog(items_path, run_key)
        seen_parts = merge_parts(log_, wanted, keep=own, discard=fresh)
        for rec in (part.records.values() if part else []):
            if rec["id"] in wanted:
                log_.append(rec)
        payload = {"done": [i for i in log_.records if i in wanted]}
    else:
        payload = {"records": [r for r in part.records.values() if r["id"] in wanted] if part else []}
    done = set()
    for got in gather_json(dist, payload):
        done.update(got.get("done", []))
        for rec in got.get("records", []):
            done.add(rec["id"])
            if log_ is not None:
                log_.append(rec)
    pending = [it for it in items if it["id"] not in done]
    if dist.writer and done:
        print(f"  resuming: {len(done)} of {len(items)} items already done", file=sys.stderr)

    if dist.shard is not None:  # model parallel: every rank runs every item, in lockstep
        for record in suite.run(ctx, pending) if pending else ():
            if log_ is not None:
                log_.append(record)
        dist.shares[suite.name] = [len(pending)] * dist.size
        barrier(dist)
        return log_

    shares = [pending[r:: dist.size] for r in range(dist.size)]
    dist.shares[suite.name] = [len(s) for s in shares]
    mine = shares[dist.rank]
    per_round = max(1, math.ceil(len(shares[0]) / ROUNDS))
    rounds = math.ceil(len(shares[0]) / per_round) if shares[0] else 0
    records = suite.run(ctx, mine) if mine else iter(())
    for _ in range(rounds):
        batch = []
        for record in records:
            part.append(record)
            batch.append(record)
            if len(batch) == per_round:
                break
        for got in gather_json(dist, batch):
            if log_ is not None:
                for rec in got:
                    log_.append(rec)
    barrier(dist)  # rank 0 holds everything: the per-rank logs can go
    own.unlink(missing_ok=True)
    if dist.writer:
        for p in seen_parts:
            p.unlink(missing_ok=True)
    return log_


def in_item_order(log_: ItemLog, ids: list) -> list:
    """The records of `ids` in item order; when all are there the items file is
    rewritten in that order too, so it does not depend on which process (or which
    resume) produced which record first."""
    records = [log_.records[i] for i in ids if i in log_.records]
    if len(records) == len(ids) and records:
        _write_items(log_.path, [json.dumps({"_run_key": log_.run_key, "id": "_header"})]
                     + [json.dumps(r, ensure_ascii=False, default=_json_default) for r in records])
    return records


def _write_items(path: Path, lines: list) -> None:
    atomic_write_text(Path(path), "".join(line + "\n" for line in lines))


# -- the local shortcut: harness run --launch N -------------------------------------


def _free_port(n: int) -> int:
    """A starting port with n free ports after it (the ring listens on port + rank)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + n >= 65535:
            continue
        try:
            for p in range(port, port + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise HarnessError("no free local ports for the ring backend; set --launch-port")


def strip_launch(argv: list) -> list:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--launch":
            skip = True
            continue
        if a.startswith("--launch="):
            continue
        out.append(a)
    return out


def launch(n: int, argv: Optional[list]) -> int:
    """`harness run --launch N ...`: the same command as N ranks on this machine
    through mlx.launch (ring backend on localhost). One line if a rank fails.

    argv None: this process's own command line is re-issued as it was started
    (`harness ...`, `python -m harness ...` or a wrapper script); else
    `python -m harness ARGV`."""
    if n < 1:
        raise HarnessError("--launch needs a number of ranks >= 1 (e.g. --launch 2)")
    if argv is None:
        rank_cmd = [sys.executable, *strip_launch(sys.orig_argv[1:])]
    else:
        rank_cmd = [sys.executable, "-m", "harness", *strip_launch(argv)]
    # ranks share the cores: no BLAS oversubscription (an explicit OPENBLAS_NUM_THREADS wins)
    threads = os.environ.get("OPENBLAS_NUM_THREADS") or max(1, (os.cpu_count() or 1) // n)
    fd, status = tempfile.mkstemp(prefix="harness-launch-")
    os.close(fd)
    cmd = [sys.executable, "-c", "from mlx._distributed_utils.launch import main; main()",
           "--backend", "ring", "-n", str(n), "--starting-port", str(_free_port(n)),
           "--env", f"HARNESS_LAUNCH_STATUS={status}", "--env", f"OPENBLAS_NUM_THREADS={threads}",
           "--", *rank_cmd]
    failed, errors = [], set()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                errors="replace")
        for line in proc.stderr:
            plain = line.replace("\033[33m", "").replace("\033[0m", "").strip()
            if plain.startswith("[WARN] Node with rank"):
                failed.append(plain[len("[WARN] Node with "):])
                continue
            if plain.startswith("harness: error: rank") and "another rank failed" in plain:
                continue  # a survivor stopped by mlx.launch: the summary line below says it
            if plain.startswith("harness: error:"):
                if plain in errors:
                    continue  # the same check failed on every rank: say it once
                errors.add(plain)
            sys.stderr.write(line)
            sys.stderr.flush()
        proc.wait()
        ok = Path(status).read_text().strip() == "ok"
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        print(f"harness: interrupted; {RERUN}", file=sys.stderr)
        return 130
    finally:
        os.unlink(status)
    if ok and proc.returncode == 0:
        return 0
    if errors:  # a rank already said what is wrong
        return 2
    first = next((f for f in failed if "exited with code" in f), failed[0] if failed else "a rank failed")
    print(f"harness: error: {first}; the run stopped, {RERUN}", file=sys.stderr)
    return 1


def report_done(dist: Dist) -> None:
    """Rank 0 tells `--launch` that the whole run finished."""
    status = os.environ.get("HARNESS_LAUNCH_STATUS")
    if status and dist.writer:
        Path(status).write_text("ok")
