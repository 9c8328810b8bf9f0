"""reasoning: the optional LLM judge — any OpenAI-compatible chat endpoint
(mlx_lm.server, omlx, vLLM, ...) grades each question's free-form `judge`
criteria. Its score is reported separately and never mixes into the rubric's.
"""

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Optional

from harness.errors import HarnessError
from harness.suites.reasoning_answer import THINK_BLOCK, short
from harness.suites.reasoning_questionnaire import Question

JUDGE_SYSTEM = (
    "You grade answers to reasoning questions. For each numbered criterion decide "
    "strictly whether the answer meets it. Reply with JSON only, of the form "
    '{"met": [true, false, ...]} with exactly one boolean per criterion, in order.'
)


@dataclass
class JudgeClient:
    """Any OpenAI-compatible chat endpoint (mlx_lm.server, omlx, vLLM, ...)."""

    url: str
    model: str = "default_model"  # mlx_lm.server's name for the model it was started with
    timeout: float = 120.0

    def _base(self) -> str:
        base = self.url.rstrip("/")
        for suffix in ("/chat/completions", "/v1"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        return base

    def _fail(self, err) -> HarnessError:
        return HarnessError(
            f"judge endpoint {self.url} is unreachable ({err}); start an OpenAI-compatible "
            "server (e.g. `mlx_lm.server --model MODEL --port 8080`, then --judge "
            "http://127.0.0.1:8080) or drop --judge"
        )

    def check(self) -> None:
        """Fail early, before any generation, if nothing listens at the URL."""
        try:
            with urllib.request.urlopen(self._base() + "/v1/models", timeout=min(self.timeout, 10)):
                pass
        except urllib.error.HTTPError:
            pass  # something answered: the chat endpoint may still work
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise self._fail(getattr(e, "reason", e)) from None

    def complete(self, messages: list, max_tokens: int = 256) -> str:
        body = json.dumps(
            {"model": self.model, "messages": messages, "temperature": 0.0, "max_tokens": max_tokens}
        ).encode()
        request = urllib.request.Request(
            self._base() + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            raise HarnessError(
                f"judge endpoint {self.url} returned HTTP {e.code}; check the URL and "
                "--opt judge_model=NAME (the model the server serves)"
            ) from None
        except (urllib.error.URLError, OSError) as e:
            raise self._fail(getattr(e, "reason", e)) from None
        except ValueError:
            raise HarnessError(f"judge endpoint {self.url} did not return JSON; is it OpenAI-compatible?") from None
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise HarnessError(
                f"judge endpoint {self.url} returned no choices[0].message; is it OpenAI-compatible?"
            ) from None

    def grade(self, question: Question, answer: str) -> dict:
        """{"judge_points", "judge_max_points", "judge_failed"} (+ "judge_error")."""
        rubric = question.judge or ["The reasoning is correct and supports the final answer."]
        out = {"judge_points": 0.0, "judge_max_points": float(len(rubric)), "judge_failed": list(rubric)}
        if not (answer or "").strip():
            return out
        criteria = "\n".join(f"{i + 1}. {text}" for i, text in enumerate(rubric))
        user = (
            f"Question:\n{question.prompt}\n\nReference answer:\n{question.reference or '(none)'}\n\n"
            f"Answer to grade:\n{answer}\n\nCriteria:\n{criteria}"
        )
        reply = self.complete([{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}])
        met = parse_judge_reply(reply, len(rubric))
        if met is None:
            return {**out, "judge_points": None, "judge_error": f"unparseable judge reply: {short(reply, 120)!r}"}
        return {
            "judge_points": float(sum(met)),
            "judge_max_points": float(len(rubric)),
            "judge_failed": [text for text, ok in zip(rubric, met) if not ok],
        }


def parse_judge_reply(reply: str, n: int) -> Optional[list]:
    """The judge's list of n booleans, or None if the reply does not hold one."""
    reply = THINK_BLOCK.sub(" ", reply or "")
    for candidate in reversed(re.findall(r"\{.*?\}", reply, re.DOTALL)):
        try:
            met = json.loads(candidate).get("met")
        except (ValueError, AttributeError):
            continue
        if isinstance(met, list) and len(met) == n:
            values = [str(v).strip().lower() for v in met]
            if all(v in ("true", "false", "1", "0", "yes", "no", "1.0", "0.0") for v in values):
                return [v in ("true", "1", "yes", "1.0") for v in values]
    return None
