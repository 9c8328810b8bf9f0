"""How much the reasoning rubric gives to answers written to game it.

Grades every adversarial example of suites/data/reasoning_v2_examples.yaml
(hedged, keyword-stuffed, rephrased right, rephrased wrong) and prints, per kind,
the score /100 (min / mean / max) and how many got full marks. With --old FILE,
also grades them with another reasoning.py (e.g. the v1 grader extracted with
`git archive e2a0c67 suites/reasoning.py suites/data/reasoning_v1.yaml | tar -x -C DIR`)
for a before/after comparison.

    .venv/bin/python benchmarks/reasoning_gaming.py [--old DIR/suites/reasoning.py]
"""

import argparse
import importlib.util
from collections import defaultdict

from harness.suites.reasoning_questionnaire import EXAMPLE_KINDS, load_examples, load_questionnaire
from harness.suites.reasoning_rubric import grade_answer


def scores(grade, questions, examples) -> dict:
    out = defaultdict(list)
    for ex in examples:
        g = grade(questions[ex.question], ex.answer)
        out[ex.kind].append(100 * g.points / g.max_points)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", help="path to another reasoning.py (its own data file next to it)")
    args = ap.parse_args()
    examples = load_examples()
    graders = {"now": scores(grade_answer, load_questionnaire().by_id(), examples)}
    if args.old:
        spec = importlib.util.spec_from_file_location("old_reasoning", args.old)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        graders["old"] = scores(old.grade_answer, old.load_questionnaire().by_id(), examples)
    print(f"{len(examples)} examples, {len({e.question for e in examples})} questions; score /100")
    print(f"{'kind':16} {'grader':6} {'min':>6} {'mean':>6} {'max':>6} {'full marks':>10}")
    for kind in EXAMPLE_KINDS:
        for name in ("old", "now"):
            if name in graders:
                v = graders[name][kind]
                full = sum(x >= 100 for x in v)
                print(f"{kind:16} {name:6} {min(v):6.1f} {sum(v) / len(v):6.1f} {max(v):6.1f} {full:>5}/{len(v)}")


if __name__ == "__main__":
    main()
