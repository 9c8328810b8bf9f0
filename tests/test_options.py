"""The one option rule (harness.options) as suites use it: types, choices, ranges,
cross-field checks, scoping and unknown keys."""

from dataclasses import asdict, dataclass
from typing import Optional

import pytest

from harness.errors import HarnessError
from harness.options import NoOptions, describe_options, option, parse_options, parse_pairs, route_options
from harness.suite import SuiteContext, options_for
from harness.suites.lm_eval_task import LMEvalOptions
from harness.suites.mmlu import MMLUOptions, MMLUSuite
from harness.suites.speed import SpeedOptions
from harness.suites.unicode import UnicodeOptions, UnicodeSuite


@dataclass(frozen=True)
class Demo:
    n: int = option(3, min=1, max=10)
    rate: float = option(0.5, min=0.0, max=1.0)
    flag: bool = False
    mode: str = option("a", choices=("a", "b"))
    sizes: tuple[int, ...] = (1, 2)
    path: Optional[str] = None

    def validate(self):
        if self.mode == "b" and self.n > 5:
            raise HarnessError("demo mode=b takes n <= 5")


def test_types_are_converted_from_strings():
    d = parse_options(Demo, {"n": "4", "rate": "0.25", "flag": "yes", "mode": "b", "sizes": "4, 8,", "path": "x"},
                      "demo")
    assert d == Demo(n=4, rate=0.25, flag=True, mode="b", sizes=(4, 8), path="x")
    assert parse_options(Demo, {"path": "none"}, "demo").path is None
    assert parse_options(Demo, {}, "demo") == Demo()


@pytest.mark.parametrize("raw, message", [
    ({"n": "x"}, "demo option n='x' is not an integer"),
    ({"n": "2.5"}, "is not an integer"),
    ({"n": "0"}, "out of range; it must be >= 1"),
    ({"n": "11"}, "out of range; it must be <= 10"),
    ({"rate": "nan"}, "is not a finite number"),
    ({"flag": "maybe"}, "is not true/false"),
    ({"mode": "c"}, "is invalid; use one of: a, b"),
    ({"sizes": "1,x"}, "sizes"),
    ({"bogus": "1"}, "unknown demo option(s) bogus; valid: n, rate, flag, mode, sizes, path"),
])
def test_bad_values_are_one_clear_error(raw, message):
    with pytest.raises(HarnessError) as e:
        parse_options(Demo, raw, "demo")
    assert message in str(e.value)


def test_cross_field_validate():
    with pytest.raises(HarnessError, match="mode=b takes n <= 5"):
        parse_options(Demo, {"mode": "b", "n": "6"}, "demo")


def test_routing_plain_scoped_unknown_and_absent_suite():
    owners = {"mmlu": MMLUOptions, "speed": SpeedOptions, "unicode": UnicodeOptions}
    routed = route_options({"shots": "2", "trials": "1", "unicode.slack": "4", "mmlu.batch_size": "4"}, owners)
    assert routed == {"mmlu": {"shots": "2", "batch_size": "4"}, "speed": {"trials": "1"}, "unicode": {"slack": "4"}}
    # a plain key goes to every suite of the run that declares it
    both = route_options({"batch_size": "2"}, {"mmlu": MMLUOptions, "lm-eval:arc_easy": LMEvalOptions})
    assert both == {"mmlu": {"batch_size": "2"}, "lm-eval:arc_easy": {"batch_size": "2"}}
    # unknown plain key: one error listing every suite's valid keys
    with pytest.raises(HarnessError) as e:
        route_options({"temperature": "0"}, owners)
    msg = str(e.value)
    assert "unknown option 'temperature'" in msg and "mmlu: shots, split" in msg and "unicode: chat, slack" in msg
    # scoped to a suite of the run that lacks the key
    with pytest.raises(HarnessError, match="unknown unicode option 'shots'; valid: chat, slack"):
        route_options({"unicode.shots": "1"}, owners)
    # scoped to a suite not in the run
    with pytest.raises(HarnessError, match="scoped to 'reasoning', which is not in this run"):
        route_options({"reasoning.judge": "http://x"}, owners)
    # a suite with no options takes none
    with pytest.raises(HarnessError, match=r"legacy: \(none\)"):
        route_options({"x": "1"}, {"legacy": NoOptions})


def test_parse_pairs_keeps_strings():
    assert parse_pairs(["shots=5", "subjects=a,b", "url=http://h:1/v1?x=1"]) == \
        {"shots": "5", "subjects": "a,b", "url": "http://h:1/v1?x=1"}
    for bad in (["shots"], ["=5"]):
        with pytest.raises(HarnessError):
            parse_pairs(bad)


def test_suite_options_from_context():
    ctx = SuiteContext(model=None, tokenizer=None, artifact=None, exec_mode="simulated", reference=None,
                       options={"mmlu.shots": "3", "subjects": "anatomy"})
    opts = MMLUSuite().opts(ctx)
    assert opts.shots == 3 and opts.subjects == ("anatomy",)
    ctx.options = opts  # the runner's parsed instance passes through untouched
    assert MMLUSuite().opts(ctx) is opts
    ctx.options = None
    assert UnicodeSuite().opts(ctx) == UnicodeOptions()
    assert options_for(UnicodeSuite(), {"chat": "0"}).use_chat is False
    with pytest.raises(HarnessError):
        options_for(UnicodeSuite(), {"shots": "1"})


def test_suite_defaults_and_listing():
    # the defaults the hand-written parsers had
    assert asdict(MMLUOptions())["batch_tokens"] == 4096 and MMLUOptions().chunk_size == 128
    assert SpeedOptions().contexts == (1024, 4096) and SpeedOptions().prompt == ("random",)
    assert UnicodeOptions().slack == 8 and LMEvalOptions().chunk == 64 and LMEvalOptions().shots is None
    assert parse_options(LMEvalOptions, {"chat_template": "false", "shots": "0"}, "lm-eval:x") == \
        LMEvalOptions(shots=0, chat_template=False)
    rows = {r[0]: r for r in describe_options(MMLUOptions)}
    assert rows["shots"][1:3] == ("int", 0) and "(test|validation|dev)" in rows["split"][3]
