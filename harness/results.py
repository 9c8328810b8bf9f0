"""Results store: one JSON per (model, recipe, suite) plus an append-only item log.

Layout under the results dir (default ./results):

    <model>/<recipe>/<suite>.json         summary + provenance (schema below), written atomically
    <model>/<recipe>/<suite>.items.jsonl  one record per line, appended (fsync) as items finish

Schema "harness.result/1" (the report and the gate read only this):

    {"schema": "harness.result/1", "model": str, "recipe": str, "suite": str,
     "run_key": str,              # hash of what makes items comparable (artifact, suite version, options, seed)
     "complete": bool, "n_items": int,
     "summary": {metric: value, "<metric>_ci95": [lo, hi], "n": int, ...},
     "paired": {"vs": "float", "right_to_wrong": int, "wrong_to_right": int, "p_value": float, ...} | absent,
     "artifact": {"path", "key", "recipe_params", "plan_sha256", "bpw", "bpw_mlx", "plan_summary"},
     "provenance": {"versions", "host", "hardware", "exec_mode", "seed", "limit", "options",
                    "suite_version", "data", "time", ...},
     "items_file": "<suite>.items.jsonl"}

Resume: records whose run_key matches are kept; a torn last line (the process was
killed mid-write) is dropped; ids already present are never appended twice.
"""

import json
import os
from pathlib import Path

from harness.cache import atomic_write_text
from harness.errors import HarnessError

SCHEMA = "harness.result/1"


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
                  "(artifact, options or suite version changed); starting this suite over")
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


def result_dir(root: Path, model_slug: str, recipe: str) -> Path:
    return Path(root) / model_slug / recipe


def write_result(path: Path, result: dict) -> None:
    result = {"schema": SCHEMA, **result}
    atomic_write_text(path, json.dumps(result, indent=1, sort_keys=True, ensure_ascii=False,
                                       default=_json_default))


def read_result(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise HarnessError(f"cannot read results {path} ({e.strerror}); check the path")
    except json.JSONDecodeError as e:
        raise HarnessError(f"{path} is not valid JSON ({e}); re-run the suite to regenerate it")
    if data.get("schema") != SCHEMA:
        raise HarnessError(f"{path} is not a harness result (schema {data.get('schema')!r}); "
                           "point at files written by `harness run`")
    return data


def read_items(result_path: Path) -> list:
    """Per-item records stored beside a result JSON (empty list if none)."""
    result_path = Path(result_path)
    items = result_path.with_name(result_path.name.replace(".json", ".items.jsonl"))
    if not items.is_file():
        return []
    out = []
    for line in items.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("id") != "_header":
            out.append(rec)
    return out


def find_results(root: Path) -> list:
    """Every result JSON under `root` (a results dir or a single file)."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise HarnessError(f"results {root} not found; run `harness run ... --out {root}` first")
    return sorted(p for p in root.rglob("*.json") if not p.name.startswith("."))
