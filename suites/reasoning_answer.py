"""reasoning: reading a model's answer — the FINAL ANSWER line, the working
around it, and the normalised text the rubric compares (markdown, LaTeX and
Unicode look-alikes removed; numbers as the reader means them)."""

import re

# "FINAL ANSWER: x" (any markdown around the label), or a "### Final answer" line
# with the answer on the lines below it
_LABEL = re.compile(
    r"^[^\w\n]*_*final[ \t]*answer[ \t*_]*(?:[:：=\-–—]+[ \t]*(.*)|[ \t*_#:]*)$", re.IGNORECASE | re.MULTILINE
)
_FENCE = re.compile(r"^\s*(```|~~~)")
CODE_BLOCK = re.compile(r"(```|~~~).*?(?:\1|\Z)", re.DOTALL)
THINK_BLOCK = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL | re.IGNORECASE)


def clean_text(text: str) -> str:
    """Unicode look-alikes to ASCII so regexes see one spelling."""
    table = {
        "\u2212": "-", "\u2010": "-", "\u2011": "-", "\u00a0": " ", "\u202f": " ", "\u2009": " ",
        "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u200b": "", "\ufeff": "",
    }
    return (text or "").translate(str.maketrans(table))


def split_final(answer: str) -> tuple:
    """(final answer or None, working): the last `FINAL ANSWER:` line wins; if its
    text is empty the answer is the following lines up to a blank line."""
    text = clean_text(answer)
    matches = list(_LABEL.finditer(text))
    if not matches:
        return None, text
    m = matches[-1]
    final, end = _strip_markdown(m.group(1) or ""), m.end()
    if not final:  # "FINAL ANSWER:" then the answer on the next lines
        lines, pos = [], m.end()
        while pos < len(text):
            nl = text.find("\n", pos + 1)
            nl = len(text) if nl < 0 else nl
            line = text[pos:nl].strip("\n")
            if not line.strip() and lines:
                break
            if line.strip() and not _FENCE.match(line):
                lines.append(line.strip())
            end = pos = nl
        final = _strip_markdown(" ".join(lines))
    working = text[: m.start()] + text[end:]
    return (final or None), working


def earlier_finals(answer: str) -> list:
    """The text of every FINAL ANSWER line before the last one (a second final
    line that differs is a hedge, like "X or Y" on one line)."""
    matches = list(_LABEL.finditer(clean_text(answer)))
    return [f for f in (_strip_markdown(m.group(1) or "") for m in matches[:-1]) if f]


def _strip_markdown(s: str) -> str:
    s = re.sub(r"\\boxed\{(.*)\}", r"\1", s)
    s = re.sub(r"\\(?:text|mathrm|mathcal|operatorname)\{([^}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:Theta|theta)\b", "θ", s)
    s = re.sub(r"\\(?:left|right|,|;|!)", "", s)
    s = re.sub(r"\\(log|cdot|times|mathcal)\b", lambda m: {"cdot": "*", "times": "×"}.get(m.group(1), m.group(1)), s)
    s = s.replace("**", "").replace("__", "").replace("`", "").replace("$", "")
    return s.strip().strip("*_ \t")


def normalise_final(s: str) -> str:
    """Lower-case, markdown-free, single-spaced, no trailing period or quotes."""
    s = _strip_markdown(clean_text(s)).lower()
    s = re.sub(r"\s+", " ", s)
    s = re.sub(r"\s*,\s*", ", ", s)
    s = re.sub(r"([\[(])\s+", r"\1", s)
    s = re.sub(r"\s+([\])])", r"\1", s)
    return s.strip().rstrip(".").strip().strip("'\"").strip()


def truncate_after_final(text: str) -> str:
    """Cut a generation after its first complete, non-empty FINAL ANSWER line:
    the prompt asks the model to stop there (and batched and streamed
    generation then keep the same text)."""
    for m in _LABEL.finditer(text):
        if _strip_markdown(m.group(1) or "") and m.end() < len(text):
            return text[: m.end()]
    return text


_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?!\w)|(?<![\w.])-?\.\d+(?!\w)")
_NUMBER_LIST = re.compile(r"(?<![\w.])-?(?:\d+)(?:\.\d+)?(?!\w)|(?<![\w.])-?\.\d+(?!\w)")


def numbers_in(s: str, single: bool = True) -> list:
    """Numbers in order, ignoring parenthesised remarks ("3 (should be 4)").
    For a single expected number, 1,234 reads as one number and "17 x 24 = 408"
    as its value after the last '='; for lists of numbers commas separate
    ("fixed=200, sliding=100" -> [200, 100])."""
    s = clean_text(s).replace("_", "")
    while (unnested := re.sub(r"\([^()]*\)", " ", s)) != s:  # nested remarks too: "(use (long) a)"
        s = unnested
    if single and "=" in s:
        s = s.rsplit("=", 1)[1]
    pattern = _NUMBER if single else _NUMBER_LIST
    return [float(m.group(0).replace(",", "")) for m in pattern.finditer(s)]



def short(s: str, n: int = 60) -> str:
    """One line of at most n characters (for failure details)."""
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "…"
