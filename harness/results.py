"""Results store: one JSON per (model, recipe, suite) plus an append-only item log.

Layout under the results dir (default ./results):

    <model>/<recipe>/<suite>.json         summary + provenance (schema below), written atomically
    <model>/<recipe>/<suite>.items.jsonl  one record per line, appended (fsync) as items finish
    <model>/<recipe>/.<suite>.lock        exists only while a `harness run` writes this suite

<suite> is the suite's name, or `<name>@<variant>` for a run under a non-default protocol
(`mmlu@omlx.json` beside `mmlu.json`: harness.suite.result_name): the two are different
measurements, so they never replace each other, share a report column or get paired by the gate.

Schema "harness.result/1" (the report and the gate read only this, as `SuiteResult`):

    {"schema": "harness.result/1", "model": str, "recipe": str, "suite": str,  # "mmlu" or "mmlu@omlx"
     "run_key": str,              # hash of what makes items comparable (artifact, suite version, options, seed)
     "complete": bool, "n_items": int,
     "summary": {metric: value, "<metric>_ci95": [lo, hi], "n": int, ...,
                 "chance": {metric: level} | absent},  # data-dependent chance levels (truthfulqa)
     "metrics": [MetricSpec.to_json(), ...],   # what each summary metric means (absent: name patterns)
     "paired": {"vs": "float", "right_to_wrong": int, "wrong_to_right": int, "p_value": float, ...} | absent,
     "artifact": {"path", "key", "recipe_params", "plan_sha256", "bpw", "bpw_mlx", "plan_summary", ...},
     "provenance": {"versions", "host", "hardware", "exec_mode", "seed", "limit", "options",
                    "suite_version", "data", "time", ...},
     "items_file": "<suite>.items.jsonl",
     "items_sha256": str,         # content hash of the records the summary was computed from
     "item_ids": [str] | absent}  # only when the item log holds more records than were summarized

Resume: records whose run_key matches are kept; a torn last line (the process was
killed mid-write) is dropped; ids already present are never appended twice. One
writer per results file: `RunLock` (flock, non-blocking) makes a second run on the
same (model, recipe, suite) fail at once instead of interleaving records.
"""

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from harness.cache import atomic_write_text
from harness.errors import HarnessError
from harness.suite import MetricSpec, split_result_name

SCHEMA = "harness.result/1"
STALE_AFTER_S = 300  # a temp file/dir of a dead (or unknown) writer older than this is garbage


class ItemLog:
    """Append-only JSONL of per-item records for one (model, recipe, suite)."""

    def __init__(self, path: Path, run_key: str):
        self.path = Path(path)
        self.run_key = run_key
        self.records = {}
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        good, kept_bytes = [], 0
        for i, line in enumerate(lines):
            if not line.strip():
                kept_bytes += len(line) + 1
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1 or all(not x.strip() for x in lines[i + 1:]):
                    break  # torn last write from a killed run: drop it
                raise HarnessError(f"{self.path} line {i + 1} is corrupt; delete the file to start this suite over")
            good.append(rec)
            kept_bytes += len(line) + 1
        if kept_bytes < len(raw):  # cut the torn tail so later appends start on a clean line
            with open(self.path, "r+b") as f:
                f.truncate(kept_bytes)
        elif raw and not raw.endswith(b"\n"):  # complete record cut just before its newline
            with open(self.path, "ab") as f:
                f.write(b"\n")
        if good and good[0].get("_run_key") != self.run_key:
            print(f"harness: note: {self.path.name} was produced with other settings "
                  "(artifact, options or suite version changed); starting this suite over", file=sys.stderr)
            self.path.unlink()
            return
        for rec in good[1:]:
            self.records.setdefault(rec["id"], rec)

    def append(self, record: dict) -> None:
        if "id" not in record:
            raise ValueError("suite records need an 'id'")
        if record["id"] in self.records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new_file = not self.path.is_file() or self.path.stat().st_size == 0
        with open(self.path, "a", encoding="utf-8") as f:
            if new_file:
                f.write(json.dumps({"_run_key": self.run_key, "id": "_header"}) + "\n")
            f.write(json.dumps(record, ensure_ascii=False, default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[record["id"]] = record


def _json_default(x):
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


# ----------------------------------------------------------------------------
# Typed boundaries: what a result file holds


@dataclass
class Artifact:
    """The artifact block of a result (a digest of the artifact's provenance.json)."""

    path: Optional[str] = None
    key: Optional[str] = None
    recipe_params: Any = None
    plan_sha256: Optional[str] = None
    bpw: Optional[float] = None
    bpw_mlx: Optional[float] = None
    dtype: Optional[str] = None
    source_fingerprint: Optional[str] = None
    plan_summary: dict = field(default_factory=dict)
    group_sizes: list = field(default_factory=list)
    modes: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # keys this version does not know (kept on rewrite)

    def get(self, key: str, default=None):
        """dict-style access for the report's generic rows."""
        if key in self.extra:
            return self.extra[key]
        value = getattr(self, key, default) if key in _ARTIFACT_FIELDS else default
        return default if value is None else value

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in _ARTIFACT_FIELDS if k != "extra"}
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra}

    @classmethod
    def from_json(cls, data) -> "Artifact":
        data = data if isinstance(data, dict) else {}
        known = {k: data[k] for k in _ARTIFACT_FIELDS if k in data and k != "extra"}
        for k in ("plan_summary",):
            if not isinstance(known.get(k, {}), dict):
                known[k] = {}
        for k in ("group_sizes", "modes"):
            if not isinstance(known.get(k, []), list):
                known[k] = []
        for k in ("bpw", "bpw_mlx"):
            v = known.get(k)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool)):
                known[k] = None
        return cls(**known, extra={k: v for k, v in data.items() if k not in _ARTIFACT_FIELDS})

    @classmethod
    def from_provenance(cls, prov: dict, **more) -> "Artifact":
        """From an artifact's provenance.json (harness.builder.read_provenance)."""
        return cls(key=prov.get("artifact_key"), recipe_params=prov.get("recipe_params"),
                   plan_sha256=prov.get("plan_sha256"), bpw=prov.get("bpw"), bpw_mlx=prov.get("bpw_mlx"),
                   dtype=prov.get("dtype"), source_fingerprint=prov.get("source_fingerprint"), **more)


_ARTIFACT_FIELDS = tuple(Artifact.__dataclass_fields__)


@dataclass
class Record:
    """One item's outcome: its id, right/wrong when the suite has that notion, and every other field."""

    id: str
    correct: Optional[bool] = None
    values: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {"id": self.id, **self.values}
        if self.correct is not None:
            out["correct"] = self.correct
        return out

    @classmethod
    def from_json(cls, data: dict) -> "Record":
        values = {k: v for k, v in data.items() if k not in ("id", "correct")}
        correct = data.get("correct")
        return cls(id=data["id"], correct=None if correct is None else bool(correct), values=values)


@dataclass
class SuiteResult:
    """A harness.result/1 file. `path` is where it was read from (not stored)."""

    model: str
    recipe: str
    suite: str
    run_key: str = ""
    complete: bool = True
    n_items: int = 0
    summary: dict = field(default_factory=dict)
    metrics: list = field(default_factory=list)  # [MetricSpec]; empty: the suite declared none
    paired: Optional[dict] = None
    artifact: Artifact = field(default_factory=Artifact)
    provenance: dict = field(default_factory=dict)
    items_file: Optional[str] = None
    items_sha256: Optional[str] = None
    item_ids: Optional[list] = None
    path: Optional[Path] = None
    _records: Optional[list] = field(default=None, repr=False, compare=False)  # cache of records()

    @property
    def key(self) -> tuple:
        return (self.model, self.recipe, self.suite)

    @property
    def suite_name(self) -> str:
        """The suite plugin's name ('mmlu' for an 'mmlu@omlx' result)."""
        return split_result_name(self.suite)[0]

    @property
    def variant(self) -> Optional[str]:
        """'omlx' for an 'mmlu@omlx' result (a non-default protocol), else None."""
        return split_result_name(self.suite)[1]

    @property
    def bpw(self) -> Optional[float]:
        return self.artifact.bpw

    def items(self) -> list:
        """records(), read once."""
        if self._records is None:
            self._records = self.records()
        return self._records

    def to_json(self) -> dict:
        out = {"schema": SCHEMA, "model": self.model, "recipe": self.recipe, "suite": self.suite,
               "run_key": self.run_key, "complete": self.complete, "n_items": self.n_items,
               "summary": self.summary, "metrics": [m.to_json() for m in self.metrics],
               "artifact": self.artifact.to_json(), "provenance": self.provenance, "items_file": self.items_file}
        for k in ("paired", "items_sha256", "item_ids"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out

    @classmethod
    def from_json(cls, data, path: Optional[Path] = None) -> "SuiteResult":
        """Validated: a file that is not a result, or one whose fields have the wrong
        types, raises HarnessError naming the file (never a KeyError later)."""
        where = path or "result"
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            schema = data.get("schema") if isinstance(data, dict) else None
            raise HarnessError(f"{where} is not a harness result (schema {schema!r}); "
                               "point at files written by `harness run`")
        for key in ("model", "recipe", "suite"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise HarnessError(f"{where}: field {key!r} is missing or not a string; "
                                   "the file is damaged, re-run the suite to regenerate it")
        for key, kind in (("summary", dict), ("provenance", dict)):
            if not isinstance(data.get(key, {}), kind):
                raise HarnessError(f"{where}: field {key!r} is not an object; re-run the suite to regenerate it")
        try:
            metrics = [MetricSpec.from_json(m) for m in data.get("metrics") or []]
        except (TypeError, ValueError, KeyError) as e:
            raise HarnessError(f"{where}: its metric declarations are invalid ({e}); re-run the suite")
        n_items = data.get("n_items", 0)
        return cls(model=data["model"], recipe=data["recipe"], suite=data["suite"],
                   run_key=str(data.get("run_key", "")), complete=data.get("complete") is not False,
                   n_items=n_items if isinstance(n_items, int) else 0, summary=data.get("summary") or {},
                   metrics=metrics, paired=data.get("paired") if isinstance(data.get("paired"), dict) else None,
                   artifact=Artifact.from_json(data.get("artifact")), provenance=data.get("provenance") or {},
                   items_file=data.get("items_file"), items_sha256=data.get("items_sha256"),
                   item_ids=data.get("item_ids") if isinstance(data.get("item_ids"), list) else None,
                   path=Path(path) if path else None)

    @property
    def items_path(self) -> Optional[Path]:
        if self.path is None:
            return None
        name = self.items_file or self.path.name.replace(".json", ".items.jsonl")
        return self.path.with_name(Path(name).name)

    def records(self) -> list:
        """The records this result's summary was computed from (dicts, as stored)."""
        if self.items_path is None:
            return []
        recs = read_item_file(self.items_path)
        if self.item_ids is not None:
            wanted = set(self.item_ids)
            recs = [r for r in recs if r.get("id") in wanted]
        return recs

    def check_items(self) -> Optional[str]:
        """None when the stored items hash matches the items on disk, else why not
        (hand-edited, truncated, or a later run on the same file was interrupted)."""
        if not self.items_sha256:
            return None  # written before hashes existed: nothing to check
        recs = self.records()
        if items_sha256(recs) == self.items_sha256:
            return None
        return (f"{self.path}: its items ({self.items_path.name}, {len(recs)} records) do not match the summary "
                f"({self.n_items} items, items_sha256 {self.items_sha256[:12]}): hand-edited, truncated, or a later "
                "run was interrupted; re-run or resume the suite to regenerate it")


def items_sha256(records) -> str:
    """Content hash of records, independent of order (sorted by id) and of how they were serialised."""
    h = hashlib.sha256()
    for rec in sorted(records, key=lambda r: str(r.get("id"))):
        h.update(json.dumps(rec, sort_keys=True, ensure_ascii=False, default=_json_default).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def item_fields(log: ItemLog, records: list) -> dict:
    """The result's item bookkeeping: the hash of the summarized records, and their
    ids when the log also holds others (a resumed run with a smaller --limit)."""
    out = {"items_sha256": items_sha256(json.loads(json.dumps(records, default=_json_default)))}
    if len(records) != len(log.records):
        out["item_ids"] = sorted((r["id"] for r in records), key=str)
    return out


def result_dir(root: Path, model_slug: str, recipe: str) -> Path:
    return Path(root) / model_slug / recipe


def write_result(path: Path, result) -> None:
    data = result.to_json() if isinstance(result, SuiteResult) else {"schema": SCHEMA, **result}
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False,
                                       default=_json_default))


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise HarnessError(f"cannot read results {path} ({e.strerror}); check the path")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HarnessError(f"{path} is not valid JSON ({e}); re-run the suite to regenerate it")


def read_result(path: Path) -> dict:
    """The raw dict of a result file, validated (load_result gives the typed form)."""
    data = _read_json(path)
    SuiteResult.from_json(data, Path(path))
    return data


def load_result(path: Path) -> SuiteResult:
    """A result file as a SuiteResult; HarnessError naming the file when it cannot be read."""
    return SuiteResult.from_json(_read_json(path), Path(path))


def read_item_file(path: Path) -> list:
    """Records of an item log (the header and a torn last line left out)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "id" in rec and rec.get("id") != "_header":
            out.append(rec)
    return out


def read_items(result_path: Path) -> list:
    """Per-item records stored beside a result JSON (empty list if none)."""
    result_path = Path(result_path)
    return read_item_file(result_path.with_name(result_path.name.replace(".json", ".items.jsonl")))


def find_results(root: Path) -> list:
    """Every result JSON under `root` (a results dir or a single file)."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise HarnessError(f"results {root} not found; run `harness run ... --out {root}` first")
    return sorted(p for p in root.rglob("*.json") if not p.name.startswith("."))


# ----------------------------------------------------------------------------
# One writer per results file


@contextmanager
def run_lock(items_path: Path):
    """Hold an exclusive lock on one (model, recipe, suite) of a results dir.

    A second `harness run` on the same files fails at once with one line (it would
    otherwise interleave its records with ours). The lock file is removed on exit;
    a holder that locked a file someone else just removed retries on the new one.
    """
    items_path = Path(items_path)
    lock = items_path.with_name("." + items_path.name.replace(".items.jsonl", "") + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = ""
            try:
                holder = lock.read_text().strip()
            except OSError:
                pass
            raise HarnessError(f"another `harness run` ({holder or 'pid unknown'}) is writing "
                               f"{items_path.parent}/{items_path.name.replace('.items.jsonl', '')} results; "
                               "wait for it to finish or use another --out")
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file between our open and lock: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        yield lock
    finally:
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass
        os.close(fd)


# ----------------------------------------------------------------------------
# Leftovers of killed runs

# ".<name>.tmp-<pid>-<random>" from harness.cache (files and dirs; older versions had no pid)
_TEMP_RE = re.compile(r"^\..+\.tmp-(?:(\d+)-)?[A-Za-z0-9_]+$")
SANDBOX_PREFIX = "harness-sandbox-"
SANDBOX_STALE_S = 3600  # sandbox dirs carry no pid; programs run for seconds, so an hour-old one is dead
UNKNOWN_PID_STALE_S = 3600  # temps named before the pid was part of the name


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        return True
    except FileNotFoundError:
        return False
    except OSError:
        return False  # not ours to remove (permissions): leave it


def remove_stale_temps(folders, sandbox_tmp: Optional[Path] = None, now: Optional[float] = None,
                       max_depth: int = 3) -> list:
    """Remove temp files/dirs a killed writer left behind; returns what was removed.

    In each folder (down to max_depth levels): harness.cache temps whose writer pid
    is dead and that are older than STALE_AFTER_S (unknown pid: older than an hour).
    In sandbox_tmp: `harness-sandbox-*` dirs older than SANDBOX_STALE_S.
    """
    now = time.time() if now is None else now
    removed = []

    def old(p: Path, age: float) -> bool:
        try:
            return now - p.lstat().st_mtime > age
        except OSError:
            return False

    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for depth in range(max_depth + 1):
            for p in folder.glob("/".join(["*"] * depth + [".*.tmp-*"])):
                m = _TEMP_RE.match(p.name)
                if not m:
                    continue
                pid = int(m.group(1)) if m.group(1) else None
                if pid is not None and pid != os.getpid() and _pid_alive(pid):
                    continue
                if pid == os.getpid():
                    continue  # ours, in use
                if old(p, STALE_AFTER_S if pid is not None else UNKNOWN_PID_STALE_S) and _remove(p):
                    removed.append(p)
    if sandbox_tmp is not None and Path(sandbox_tmp).is_dir():
        for p in Path(sandbox_tmp).glob(SANDBOX_PREFIX + "*"):
            if p.is_dir() and old(p, SANDBOX_STALE_S) and _remove(p):
                removed.append(p)
    return removed


def clean_leftovers(out: Path) -> list:
    """What a `harness run` calls first: stale temps of killed runs in the results
    dir and the cache, and stale sandbox work dirs in the system temp dir."""
    import tempfile

    from harness.cache import cache_root

    removed = remove_stale_temps([Path(out), cache_root()], sandbox_tmp=Path(tempfile.gettempdir()))
    if removed:
        print(f"harness: note: removed {len(removed)} leftover temp file(s)/dir(s) of killed runs", file=sys.stderr)
    return removed
