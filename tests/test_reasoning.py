"""Tests for the reasoning suite: the grader on hand-written answers for every
question (good = full points, partial, bad), self-contradiction, empty
answers, grade bands, questionnaire validation, the judge client against a
local fake server, and a smoke run on a tiny synthetic model."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from harness.errors import HarnessError
from harness.options import parse_options
from harness.suite import SuiteContext
from harness.suites.reasoning import (
    CATEGORIES,
    Options,
    ReasoningSuite,
    category_table,
    grade_band,
    issues_table,
    looping,
    render_summary,
    score_table,
    summarize_records,
)
from harness.suites.reasoning_answer import numbers_in, split_final, truncate_after_final
from harness.suites.reasoning_judge import JudgeClient, parse_judge_reply
from harness.suites.reasoning_questionnaire import DATA_FILE, load_questionnaire
from harness.suites.reasoning_rubric import grade_answer

QN = load_questionnaire()
Q = QN.by_id()

# For every question: a good answer (full points), a partial answer and a bad
# answer with the points each must get. Written like real model output
# (markdown, code fences, hedges), so the grader is tested on what it meets.
ANSWERS = {
    "debug-int-overflow": {
        "good": """The sum `a + b` is computed in 32-bit int arithmetic. 2,000,000,000 + 2,000,000,000 =
4,000,000,000, which exceeds Integer.MAX_VALUE (2,147,483,647), so the addition overflows and
wraps around to -294,967,296. Dividing by 2 gives -147,483,648.

One might expect 2000000000, but Java ints silently wrap.

**Fix:** compute the midpoint without overflow:
```java
static int average(int a, int b) {
    return a + (b - a) / 2;   // or (int) (((long) a + b) / 2)
}
```
FINAL ANSWER: -147483648""",
        "partial": ("""The addition a + b overflows the int range and wraps around, so the method
prints a negative number.

FINAL ANSWER: -147,483,648""", 8),  # no fix
        "bad": ("""The average of 2,000,000,000 and 2,000,000,000 is 2,000,000,000, so it prints that.

FINAL ANSWER: 2000000000""", 1),  # consistent, nothing else
        "contradiction": """a + b overflows and wraps around; use a long to fix it.
So the method prints 2000000000.

FINAL ANSWER: -147483648""",
    },
    "debug-mutable-default": {
        "good": """Default argument values are evaluated once, when the function is defined. Both calls
share the same list object, so after `add_item(2)` the list is `[1, 2]` and `a` and `b`
refer to it.

Fix:
```python
def add_item(item, items=None):
    if items is None:
        items = []
    items.append(item)
    return items
```

FINAL ANSWER: `[1, 2] [1, 2]`""",
        "partial": ("""The default list is shared between calls, so both names point to one list.

**FINAL ANSWER:** [1,2] [1,2]""", 8),  # no fix
        "bad": ("""Each call gets a new empty list, so the output is [1] [2].

FINAL ANSWER: [1] [2]""", 1),
        "contradiction": """The default list is created once, so use items=None instead.
The output is [1] [2].

FINAL ANSWER: [1, 2] [1, 2]""",
    },
    "debug-binary-search": {
        "good": """Trace: lo=0, hi=3. mid=1: xs[1]=3 < 9 so lo=2. mid=2: 5 < 9 so lo=3. Now lo == hi,
the loop stops and it returns 3.

The bug is an off-by-one: `hi` starts at `len(xs) - 1`, so the answer `len(xs)` is outside the
search range and can never be returned. It should return 4 here.

Fix: `lo, hi = 0, len(xs)` (keep `while lo < hi` and `hi = mid`).

FINAL ANSWER: 3""",
        "partial": ("""It ends with lo = 3, so it returns 3 instead of 4: an off-by-one.

FINAL ANSWER: 3""", 8),  # no fix
        "bad": ("""The function is correct, so it returns 4.

FINAL ANSWER: 4""", 1),
        "contradiction": """The bug is an off-by-one; set hi = len(xs). Tracing it, it returns 4.

FINAL ANSWER: 3""",
    },
    "algo-heapify": {
        "good": """Sift-down of a node at height h costs O(h). At most n/2^(h+1) nodes have height h
(half the nodes are leaves, which cost nothing). The total is the sum over h of
n * h / 2^(h+1) <= n * sum h/2^h = 2n, a convergent series. So although a naive bound is
O(n log n), the tight bound is O(n).

FINAL ANSWER: O(n)""",
        "partial": ("""Most nodes are near the bottom, so building the heap is linear.

FINAL ANSWER: $\\Theta(n)$""", 7),  # no summation argument
        "bad": ("""Each of the n nodes sifts down up to log n levels, so the total is O(n log n).

FINAL ANSWER: O(n log n)""", 1),  # still self-consistent
        "contradiction": """Sum over heights h of n*h/2^(h+1), a convergent series.
Therefore the complexity is O(n log n).

FINAL ANSWER: O(n)""",
    },
    "algo-shortest-path": {
        "good": """Dijkstra from A: C = 2, B = min(4, 2 + 1) = 3, D = 3 + 5 = 8, E = min(2 + 10, 8 + 3) = 11.
The shortest path is A -> C -> B -> D -> E with total weight 11 (A-C-E and A-B-D-E weigh 12).

FINAL ANSWER: A, C, B, D, E""",
        "partial": ("""Going through C is cheapest.

FINAL ANSWER: A, C, B, D, E""", 7),  # weight missing
        "bad": ("""A to C is 2, then C to E is 10, total 12.

FINAL ANSWER: A, C, E""", 1),
        "contradiction": """Total weight 11, and the shortest path is A, B, C, D, E.

FINAL ANSWER: A, C, B, D, E""",
    },
    "algo-coin-change": {
        "good": """The minimum is 3 coins: 10 + 10 + 10 = 30.

Greedy takes 25 first and then has to use five 1-cent coins: 25 + 1 + 1 + 1 + 1 + 1, which is
6 coins. So greedy does not find the minimum for this coin system; dynamic programming does.

FINAL ANSWER: 3""",
        "partial": ("""Use three 10s: 10 + 10 + 10.

FINAL ANSWER: 3""", 8),  # says nothing about greedy
        "bad": ("""Greedy is optimal: 25 + 5 x 1 gives the minimum of 6 coins.

FINAL ANSWER: 6""", 3),  # greedy coins named, consistent
        "contradiction": """Three tens, 10 + 10 + 10, work; greedy uses 25 + 5 x 1 = 6 coins.
So the minimum is 6 coins.

FINAL ANSWER: 3""",
    },
    "sec-ssti": {
        "good": """The user input is concatenated into the template *source*, so Jinja2 evaluates it on
the server: `{{7*7}}` renders as 49. This is server-side template injection (SSTI), not XSS,
because the payload runs on the server rather than in a victim's browser.

Impact: remote code execution, e.g. `{{ self.__init__.__globals__.__builtins__ }}` leads to
`os.popen('id').read()`, plus reading secrets from the config.

Fix: keep the template constant and pass the value as a variable:
```python
return render_template_string("<h1>Hello {{ name }}</h1>", name=name)
```

FINAL ANSWER: **Server-Side Template Injection (SSTI)**""",
        "partial": ("""The template engine evaluates the input on the server.

FINAL ANSWER: SSTI""", 8),  # no impact, no fix
        "bad": ("""The name is reflected into the HTML page without escaping, so an attacker can inject
a script: this is reflected cross-site scripting. Escape the output.

FINAL ANSWER: Cross-site scripting (XSS)""", 1),
        "contradiction": """The input is evaluated server-side, allowing remote code execution.
Pass name=name to render_template_string. So the vulnerability is XSS.

FINAL ANSWER: SSTI""",
    },
    "sec-path-traversal": {
        "good": """`os.path.join` discards all previous components when a component is an absolute path,
so `os.path.join("/srv/app/uploads", "/etc/passwd")` is just `/etc/passwd`. That is a path
traversal (CWE-22): any readable file can be downloaded.

Fix: use `flask.send_from_directory(BASE, name)` (which uses `safe_join`), or resolve the
path with `os.path.realpath` and check it is inside BASE.

FINAL ANSWER: /etc/passwd""",
        "partial": ("""os.path.join ignores BASE because the argument is absolute.

FINAL ANSWER: `/etc/passwd`""", 8),  # no class, no fix
        "bad": ("""The file is joined under the upload directory, so the server sends
/srv/app/uploads/etc/passwd, which does not exist. The code is safe.

FINAL ANSWER: /srv/app/uploads/etc/passwd""", 1),
        "contradiction": """os.path.join discards BASE for an absolute path: a path traversal; fix it with
send_from_directory. The server sends /srv/app/uploads/etc/passwd.

FINAL ANSWER: /etc/passwd""",
    },
    "sec-timing": {
        "good": """`expected == tag` short-circuits: it returns as soon as the first character differs. So
the response time reveals how many leading characters of the guess are correct, and an attacker
can recover a valid tag one character at a time. This is a timing side-channel attack, not a
length-extension attack (HMAC is immune to those).

Fix: compare in constant time with `hmac.compare_digest(expected, tag)`.

FINAL ANSWER: Timing attack""",
        "partial": ("""Comparing with == leaks timing information.

FINAL ANSWER: timing attack""", 7),  # no cause, no fix
        "bad": ("""SHA-256 is vulnerable to length extension, so an attacker can append data to the
message and compute a valid tag.

FINAL ANSWER: Length extension attack""", 1),  # consistent only
        "contradiction": """== stops at the first mismatch, so use hmac.compare_digest.
Therefore it is a length-extension attack.

FINAL ANSWER: timing attack""",
    },
    "conc-event-loop": {
        "good": """1. Synchronous code runs first: `A`, then `F`.
2. Then the microtask queue drains: the first `.then` callback logs `C`; `queueMicrotask` logs
   `E`; `D` was only queued when C's callback returned, so it runs after E.
3. Finally the macrotask (timer) queue: `B`.

Output: A → F → C → E → D → B

FINAL ANSWER: A, F, C, E, D, B""",
        "partial": ("""A and F are synchronous; C, E, D are microtasks; B is a timer.

FINAL ANSWER: A, F, C, E, D, B""", 8),  # names microtasks but not the macrotask queue
        "bad": ("""Code runs top to bottom.

FINAL ANSWER: A, B, C, D, E, F""", 2),  # consistent, nothing else
        "contradiction": """Microtasks run before macrotasks, so the output is A, F, C, D, E, B.

FINAL ANSWER: A, F, C, E, D, B""",
    },
    "conc-deadlock": {
        "good": """This is a deadlock. Thread 1 holds lock a and waits for b, while thread 2 holds b and
waits for a: a circular wait, so neither can proceed.

Fix: acquire the locks in the same order everywhere (a before b in both functions), i.e. a global
lock ordering.

FINAL ANSWER: Deadlock""",
        "partial": ("""The threads wait for each other forever.

FINAL ANSWER: deadlock""", 9),  # no fix
        "bad": ("""Both threads modify shared state without synchronisation, so this is a race
condition. Add more locks.

FINAL ANSWER: Race condition""", 1),
        "contradiction": """t1 holds a and waits for b; acquire the locks in the same order.
So the bug is a race condition.

FINAL ANSWER: deadlock""",
    },
    "conc-asyncio-gather": {
        "good": """`asyncio.gather` runs the three coroutines concurrently on one event loop. Each one
prints when its own sleep finishes: y after 0.1 s, z after 0.2 s, x after 0.3 s. The total run
time is about 0.3 seconds (the longest sleep), not 0.6 s.

Output:
y
z
x

FINAL ANSWER: y, z, x""",
        "partial": ("""They run concurrently.

FINAL ANSWER: y, z, x""", 9),  # no total time
        "bad": ("""gather runs the workers one after another in order, taking 0.6 seconds.

FINAL ANSWER: x, y, z""", 1),  # consistent only
        "contradiction": """The coroutines run concurrently and finish after about 0.3 s.
Output: x, y, z.

FINAL ANSWER: y, z, x""",
    },
    "design-rate-limit": {
        "good": """(a) Fixed window: the first 100 requests fall in the 12:00 window and the next 100
in the 12:01 window, which resets the counter, so all 200 are accepted: twice the limit in 0.2
seconds, a burst at the window boundary.
(b) Sliding-window log: each request counts the timestamps in the previous 60 seconds. At
12:01:00.1 there are already 100 requests in that span, so the second burst is rejected: 100 accepted.

FINAL ANSWER: 200, 100""",
        "partial": ("""The fixed window counter resets at 12:01.

FINAL ANSWER: 200, 100""", 7),
        "bad": ("""Both limiters enforce 100 per minute.

FINAL ANSWER: 100, 100""", 0),
    },
    "design-consistent-hashing": {
        "good": """(a) A key stays only if h mod 4 == h mod 5, which holds for 4 of every 20 hash values
(h mod 20 in 0..3), so 80% of keys move.
(b) With consistent hashing only the keys the new node takes over move: about 1/5 of them, 20%.

FINAL ANSWER: 80, 20""",
        "partial": ("""Most keys move with mod N; with a ring only the new node's share (1/5) moves.

FINAL ANSWER: 80%, 20%""", 7),
        "bad": ("""Adding one node of five moves 25% of keys either way.

FINAL ANSWER: 25, 25""", 0),
    },
    "logic-knights": {
        "good": """Suppose Ava is a knave. Then Ben is a knight, so Ava and Cy are the same kind and Cy is a
knave; but then Cy's statement "Ava is a knave" would be true, a contradiction. So Ava is a
knight. Then Ben is a knave, so Ava and Cy differ: Cy is a knave, and Cy's statement is a lie,
consistent.

FINAL ANSWER: knight, knave, knave""",
        "partial": ("""Ava is a knight, Ben a knave and Cy a knave.

FINAL ANSWER: Ava: knight, Ben: knave, Cy: knave""", 8),  # no case analysis
        "bad": ("""Everyone tells the truth.

FINAL ANSWER: knight, knight, knight""", 2),
        "contradiction": """If Ava were a knave we reach a contradiction. So: knave, knight, knave.

FINAL ANSWER: knight, knave, knave""",
    },
    "logic-race-order": {
        "good": """From clue 1, Cal < Ben < Dee. Dee is not last, so the last runner is Eve or Ana; Eve is
immediately followed by Ana, so Ana must be last and Eve fourth. That leaves Cal, Ben, Dee in
places 1-3.

FINAL ANSWER: Cal, Ben, Dee, Eve, Ana""",
        "partial": ("""Clue 1 orders Cal, Ben and Dee.

FINAL ANSWER: Cal, Ben, Dee, Eve, Ana""", 8),
        "bad": ("""Alphabetical order fits.

FINAL ANSWER: Ana, Ben, Cal, Dee, Eve""", 2),
        "contradiction": """Ana must be last. So the order is Eve, Cal, Ben, Dee, Ana.

FINAL ANSWER: Cal, Ben, Dee, Eve, Ana""",
    },
    "logic-bat-ball": {
        "good": """It is tempting to answer $0.10, but then the bat would cost $1.10 and the total $1.20.
Let the ball cost x. The bat costs x + 1.00, so x + (x + 1.00) = 1.10, 2x = 0.10, x = 0.05.
The bat costs $1.05.

FINAL ANSWER: $0.05""",
        "partial": ("""The ball costs 5 cents.

FINAL ANSWER: 5 cents""", 7),  # no equation
        "bad": ("""$1.10 - $1.00 = $0.10, so the ball costs $0.10.

FINAL ANSWER: $0.10""", 2),
        "contradiction": """With 2x + 1.00 = 1.10 the bat is $1.05. So the ball costs $0.10.

FINAL ANSWER: $0.05""",
    },
    "control-arithmetic": {
        "good": """17 × 24 = 17 × 20 + 17 × 4 = 340 + 68 = 408.

FINAL ANSWER: 408""",
        "partial": ("""FINAL ANSWER: 408""", 7),  # no working
        "bad": ("""17 × 24 = 340 + 58 = 398.

FINAL ANSWER: 398""", 1),
        "contradiction": """17 × 20 = 340 and 17 × 4 = 68, so the answer is 418.

FINAL ANSWER: 408""",
    },
    "control-sort": {
        "good": """By first letter: apple (a), banana (b), cherry (c), mango (m), pear (p).

FINAL ANSWER: apple, banana, cherry, mango, pear""",
        "partial": ("""Sorted: apple, banana, mango, cherry, pear.

FINAL ANSWER: apple, banana, cherry, mango, pear""", 6),  # contradicts itself
        "bad": ("""FINAL ANSWER: pear, apple, mango, banana, cherry""", 2),
        "contradiction": """Alphabetically: apple, cherry, banana, mango, pear.

FINAL ANSWER: apple, banana, cherry, mango, pear""",
    },
    "control-reverse": {
        "good": """Reading "stressed" from the last letter: d-e-s-s-e-r-t-s, so it is "desserts".

FINAL ANSWER: desserts""",
        "partial": ("""Backwards it is dessert.

FINAL ANSWER: Desserts.""", 6),  # working says something else
        "bad": ("""FINAL ANSWER: stressed""", 2),
        "contradiction": """Reversed, the word is dessets.

FINAL ANSWER: desserts""",
    },
}


# Other ways a strong model phrases a full-marks answer (markdown, lists,
# remarks in parentheses, mentioning the wrong class while rejecting it).
ALTERNATIVE_GOOD = [
("conc-event-loop", """Synchronous logs first:
```
A
F
```
Then microtasks C, E and D (D is chained on C), then the macrotask B.

Output order:
1. A
2. F
3. C
4. E
5. D
6. B

FINAL ANSWER: A, F, C, E, D, B"""),
("sec-ssti", """While this could also lead to XSS, the core issue is that the template engine evaluates the user input on the server. It's SSTI; XSS is a client-side issue. An attacker achieves remote code execution. Fix: pass the name as a context variable.

FINAL ANSWER: Server-Side Template Injection (SSTI) leading to RCE"""),
("sec-ssti", """This is often confused with XSS, but the payload is evaluated on the server by Jinja2: Server-Side Template Injection. Impact: RCE via `{{ cycler.__init__.__globals__.os.popen('id').read() }}`. Fix: `render_template_string("<h1>Hello {{ name }}</h1>", name=name)`.

FINAL ANSWER: SSTI"""),
("debug-binary-search", """lo=0, hi=3 → mid=1 → lo=2 → mid=2 → lo=3; loop ends, returns 3. Off-by-one: hi should start at len(xs), i.e. `hi = len(xs)`.

FINAL ANSWER: 3 (should be 4)"""),
("algo-heapify", """A simple analysis gives O(n log n): n nodes each sift down O(log n) levels. But a tighter analysis sums the work per height: at most n/2^(h+1) nodes at height h, each O(h), and the series sum h/2^h converges, so the total is O(n).

FINAL ANSWER: Θ(n) — linear time, not O(n log n)"""),
("algo-coin-change", """Greedy: 25 + 1 + 1 + 1 + 1 + 1 = 6 coins. Optimal: 10 + 10 + 10 = 3 coins. So greedy does not find the minimum.

FINAL ANSWER: 3 coins"""),
("logic-race-order", """Ana must be last (Dee isn't, and Eve is directly followed by Ana). Eve is 4th. Cal, Ben, Dee fill 1-3.

FINAL ANSWER: 1. Cal, 2. Ben, 3. Dee, 4. Eve, 5. Ana"""),
("logic-knights", """Assume Ava is a knave: then Ben is a knight, Cy is a knave, and Cy's claim would be true, contradiction. So Ava is a knight, Ben is a knave and Cy is a knave.

FINAL ANSWER: Ava is a knight, Ben is a knave, Cy is a knave"""),
("conc-asyncio-gather", """The three coroutines run concurrently; each prints after its own delay, total ≈ 0.3 s (not 0.6 s).

FINAL ANSWER: y, z, x (total ≈ 0.3 s)"""),
("design-rate-limit", """Fixed windows reset at 12:01, so a burst of 200 passes at the boundary; the sliding log checks the previous 60 seconds and rejects the second 100.

FINAL ANSWER: 200 (fixed), 100 (sliding)"""),
("design-consistent-hashing", """h mod 4 == h mod 5 only for h mod 20 in 0..3, so 80% move; consistent hashing moves only the new node's 1/5 share.

FINAL ANSWER: 80% (mod N), 20% (consistent hashing)"""),
("logic-bat-ball", """Let the ball be x: x + (x + 1.00) = 1.10, so 2x = 0.10 and x = 0.05. If the ball cost $0.10, the bat would cost $1.10 and the total $1.20.

FINAL ANSWER: $0.05 (5 cents)"""),
("debug-mutable-default", """The default list is created once at definition time and shared; fix with `items=None`.

FINAL ANSWER: [1, 2], [1, 2]"""),
("debug-int-overflow", """4,000,000,000 overflows int and wraps around to -294,967,296; halved, -147,483,648. With a long sum, (int)(((long) a + b) / 2), it would print 2000000000.

FINAL ANSWER: It prints -147483648"""),
("conc-deadlock", """Classic deadlock: t1 holds a and waits for b while t2 holds b and waits for a. Always acquire a before b (consistent lock ordering).

FINAL ANSWER: Deadlock (lock-order inversion)"""),
("sec-timing", """`==` returns early at the first mismatching character, so response time leaks the length of the correct prefix. Use hmac.compare_digest for a constant-time comparison.

FINAL ANSWER: Timing side-channel attack"""),
("sec-path-traversal", """os.path.join("/srv/app/uploads", "/etc/passwd") returns "/etc/passwd" because an absolute second argument discards the base. This is directory traversal. Use send_from_directory.

FINAL ANSWER: /etc/passwd"""),
("control-arithmetic", """24 × 17 = 240 + 168 = 408

FINAL ANSWER: 17 × 24 = 408"""),
]


@pytest.mark.parametrize("qid, answer", ALTERNATIVE_GOOD)
def test_alternative_good_answers_score_full_points(qid, answer):
    grade = grade_answer(Q[qid], answer)
    assert grade.failed == [] and grade.points == Q[qid].max_points


@pytest.mark.parametrize(
    "qid, final",
    [
        ("conc-event-loop", "A, F, C, E, D, B or A, B, C, D, E, F"),
        ("logic-race-order", "Cal, Ben, Dee, Eve, Ana / Eve, Ana, Cal, Ben, Dee"),
        ("debug-binary-search", "3 or 4"),
        ("sec-ssti", "SSTI or XSS"),
        ("conc-deadlock", "deadlock or a race condition"),
        ("sec-timing", "timing attack or length extension"),
        ("algo-heapify", "O(n) or O(n log n)"),
        ("design-rate-limit", "200, 100, or 100, 100"),
    ],
)
def test_hedged_double_answers_lose_critical_points(qid, final):
    grade = grade_answer(Q[qid], ANSWERS[qid]["good"].rsplit("FINAL ANSWER", 1)[0] + "FINAL ANSWER: " + final)
    assert any(f["severity"] == "critical" for f in grade.failed), grade.failed


def test_questionnaire_shape():
    assert len(QN.questions) >= 12
    assert set(QN.categories) == {
        "debugging", "algorithms", "security", "concurrency", "system_design", "logic", "control"
    }
    assert all(q.max_points > 0 and q.reference for q in QN.questions)
    assert set(ANSWERS) == set(Q), "every question needs hand-written answers"


@pytest.mark.parametrize("qid", sorted(ANSWERS))
def test_good_answer_scores_full_points(qid):
    grade = grade_answer(Q[qid], ANSWERS[qid]["good"])
    assert grade.failed == []
    assert grade.points == grade.max_points == Q[qid].max_points
    assert grade.correct


@pytest.mark.parametrize("qid", sorted(ANSWERS))
def test_partial_answer(qid):
    answer, expected = ANSWERS[qid]["partial"]
    grade = grade_answer(Q[qid], answer)
    assert grade.points == expected, grade.failed
    assert 0 < grade.points < grade.max_points
    assert not grade.correct


@pytest.mark.parametrize("qid", sorted(ANSWERS))
def test_bad_answer(qid):
    answer, expected = ANSWERS[qid]["bad"]
    grade = grade_answer(Q[qid], answer)
    assert grade.points == expected, grade.failed
    # every critical criterion fails on a bad answer
    critical = [r for r in grade.results if r.severity == "critical"]
    assert critical and not any(r.passed for r in critical)


@pytest.mark.parametrize("qid", sorted(q for q in ANSWERS if "contradiction" in ANSWERS[q]))
def test_self_contradiction_loses_consistency_points(qid):
    grade = grade_answer(Q[qid], ANSWERS[qid]["contradiction"])
    by_type = {r.type: r for r in grade.results}
    assert by_type["consistent"].points == 0, by_type["consistent"]
    assert "working" in by_type["consistent"].detail
    # the final answer itself is still right
    final = by_type.get("final_exact") or by_type.get("final_order")
    assert final.passed
    consistency_points = sum(c.points for c in Q[qid].criteria if c.type == "consistent")
    assert grade.points <= grade.max_points - consistency_points


def test_every_question_with_consistency_has_a_contradiction_case():
    for q in QN.questions:
        if any(c.type == "consistent" for c in q.criteria):
            assert "contradiction" in ANSWERS[q.id], q.id


@pytest.mark.parametrize("answer", ["", "   \n\n", None])
def test_empty_answer_scores_zero(answer):
    for q in QN.questions:
        grade = grade_answer(q, answer)
        assert grade.points == 0, (q.id, grade.failed)
        assert len(grade.failed) == len(q.criteria)


def test_unfinished_answer_gets_no_guard_points():
    # forbids/consistent need a final answer: rambling without one scores 0
    grade = grade_answer(Q["sec-timing"], "Let me think about HMAC and SHA-256 for a while")
    assert grade.points == 0
    assert {f["detail"] for f in grade.failed if f["severity"] == "critical"} == {"no FINAL ANSWER line"}


def test_final_answer_robust_to_formatting():
    q = Q["conc-event-loop"]
    for final in [
        "FINAL ANSWER: A, F, C, E, D, B",
        "**FINAL ANSWER:** `A` → `F` → `C` → `E` → `D` → `B`",
        "## Final answer: A F C E D B",
        "final answer - A,F,C,E,D,B.",
        "FINAL ANSWER:\n```\nA\nF\nC\nE\nD\nB\n```",
        "**Final Answer**: A, F, C, E, D, B (A and F are synchronous)",
        "### Final answer\n\nA → F → C → E → D → B",
    ]:
        grade = grade_answer(q, "Microtasks run before the macrotask queue.\n\n" + final)
        assert grade.correct, (final, grade.failed)
    # the case of single-letter labels matters: 'a' is not 'A'
    assert not grade_answer(q, "FINAL ANSWER: a, f, c, e, d, b").results[0].passed
    # the last FINAL ANSWER line is the answer, but an earlier one that differs is a hedge
    # (generation stops at the first complete FINAL ANSWER line, so a suite run never has two)
    wrong_then_right = "FINAL ANSWER: A, B, C, D, E, F\nWait.\nFINAL ANSWER: A, F, C, E, D, B"
    assert "earlier FINAL ANSWER line" in grade_answer(q, wrong_then_right).results[0].detail
    assert grade_answer(q, "**FINAL ANSWER:** A, F, C, E, D, B\nFINAL ANSWER: A F C E D B").results[0].passed
    assert grade_answer(q, "FINAL ANSWER: A / F / C / E / D / B").results[0].passed  # a slash list is one order


def test_final_exact_normalisation_and_numbers():
    overflow = Q["debug-int-overflow"]
    for final in ["-147483648", "−147,483,648", "**-147483648**", "$\\boxed{-147483648}$", "(a+b)/2 = -147483648"]:
        assert grade_answer(overflow, f"FINAL ANSWER: {final}").results[0].passed, final
    for final in ["147483648", "-147483648 or 2000000000", "-1474836480"]:
        assert not grade_answer(overflow, f"FINAL ANSWER: {final}").results[0].passed, final
    assert numbers_in("fixed=200, sliding=100", single=False) == [200.0, 100.0]
    assert numbers_in("-147,483,648") == [-147483648.0]
    assert numbers_in("$.05") == [0.05]
    ball = Q["logic-bat-ball"]
    for final in ["$0.05", "0.05 dollars", "5 cents", "$.05"]:
        assert grade_answer(ball, f"FINAL ANSWER: {final}").results[0].passed, final
    assert not grade_answer(ball, "FINAL ANSWER: $0.10").results[0].passed


def test_forbids_respects_negation_but_not_hedging_in_final():
    q = Q["sec-ssti"]
    ok = grade_answer(q, "FINAL ANSWER: server-side template injection, not XSS")
    assert ok.results[0].passed and ok.results[1].passed
    assert grade_answer(q, "FINAL ANSWER: SSTI (not XSS or SQL injection)").correct is False  # no working
    assert grade_answer(q, "FINAL ANSWER: SSTI (not XSS or SQL injection)").results[0].passed
    both = grade_answer(q, "FINAL ANSWER: SSTI and XSS")
    # asserting the wrong class as well voids the classification, and the forbids criterion fails too
    assert not both.results[0].passed and not both.results[1].passed
    assert "hedges" in both.results[0].detail and "XSS" in both.results[1].detail
    # client-side template injection is a different class
    assert not grade_answer(q, "FINAL ANSWER: client-side template injection").results[0].passed


def test_requires_ignores_negated_mentions():
    q = Q["conc-deadlock"]
    grade = grade_answer(q, "There is no circular wait here.\nFINAL ANSWER: deadlock")
    cause = next(r for r in grade.results if r.criterion == "cause")
    assert not cause.passed


def test_looping_detects_greedy_loops():
    assert looping([1, 2, 3] * 22)  # period 3, 66 tokens
    assert looping(list(range(50)) + [7] * 64)
    assert not looping([7] * 63)  # too short a span to call it a loop
    assert not looping([1, 2, 3] * 10)
    assert not looping(list(range(200)))
    assert not looping(list(range(40)) * 3)  # period 40 > 32: a long repeated block is allowed


def test_split_final_and_truncate():
    final, working = split_final("work\n**FINAL ANSWER:** 42\n")
    assert final == "42" and "FINAL" not in working and "work" in working
    assert split_final("no label here") == (None, "no label here")
    text = "reasoning\nFINAL ANSWER: 42\nmore text the model kept writing"
    assert truncate_after_final(text) == "reasoning\nFINAL ANSWER: 42"
    assert truncate_after_final("FINAL ANSWER: 4") == "FINAL ANSWER: 4"  # may still be generating
    assert truncate_after_final("FINAL ANSWER:\n42\n") == "FINAL ANSWER:\n42\n"  # empty label line


@pytest.mark.parametrize(
    "score, band",
    [(100, "S"), (95, "S"), (94.99, "A+"), (90, "A+"), (89.99, "A"), (80, "A"), (79.99, "B"),
     (70, "B"), (69.99, "C"), (60, "C"), (59.99, "D"), (0, "D")],
)
def test_grade_bands(score, band):
    assert grade_band(score) == band


def _record(qid, answer):
    q, grade = Q[qid], grade_answer(Q[qid], answer)
    return {"id": qid, "category": q.category, "points": grade.points, "max_points": grade.max_points,
            "correct": grade.correct, "failed": grade.failed}


def test_summary_scores_and_tables():
    records = [_record(qid, ANSWERS[qid]["good"]) for qid in Q]
    summary = summarize_records(records, QN.categories)
    assert summary["score"] == 100.0 and summary["grade"] == "S" and summary["n"] == 20
    assert summary["accuracy"] == 1.0
    assert all(summary[f"score_{c}"] == 100.0 for c in QN.categories)
    # one bad answer: every question weighs 1/20 of the total
    records[0] = _record(records[0]["id"], ANSWERS[records[0]["id"]]["bad"][0])
    bad_fraction = records[0]["points"] / records[0]["max_points"]
    summary = summarize_records(records, QN.categories)
    assert summary["score"] == pytest.approx(round(100 * (19 + bad_fraction) / 20, 2))
    assert summary["grade"] == "S"
    cat = records[0]["category"]
    n_cat = sum(r["category"] == cat for r in records)
    assert summary[f"score_{cat}"] == pytest.approx(round(100 * (n_cat - 1 + bad_fraction) / n_cat, 2))
    assert summary["failed_critical"] >= 1
    lo, hi = summary["score_ci95"]
    assert lo <= summary["score"] <= hi

    table = score_table([("oq4", summary["score"]), {"model": "float", "score": 100.0}])
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:4]] == ["Model", "Score", "Grade"]
    assert "| oq4     | " in table and "| S " in table and "100.0/100" in table

    cats = category_table([{"model": "oq4", **summary}], QN.categories).splitlines()
    assert [c.strip() for c in cats[0].split("|")[1:-1]] == ["Model", *(c.replace("_", " ") for c in QN.categories), "Score"]
    assert cats[2].split("|")[-2].strip() == f"{summary['score']:.1f}"

    issues = issues_table(records).splitlines()
    assert [c.strip() for c in issues[0].split("|")[1:-1]] == ["Question", "Category", "Points", "Critical", "Major", "Minor"]
    assert len(issues) == 3  # header, rule, the one question that lost points
    cells = [c.strip() for c in issues[2].split("|")[1:-1]]
    assert cells[0] == records[0]["id"] and cells[2] == f"{records[0]['points']:g}/{records[0]['max_points']:g}"
    critical = [f["criterion"] for f in records[0]["failed"] if f["severity"] == "critical"]
    assert critical and all(name in cells[3] for name in critical)
    assert issues_table(records[1:]) == "No failed criteria."

    # the stored summary is data (no pre-rendered markdown); render_summary draws the tables from it
    assert not any(isinstance(v, str) and "|" in v for v in summary.values())
    assert [i["id"] for i in summary["issues"]] == [records[0]["id"]]
    assert issues_table(summary["issues"]) == issues_table(records)
    json.dumps(summary)
    text = ReasoningSuite().render(summary)
    assert text == render_summary(summary)
    head = text.splitlines()
    assert [c.strip() for c in head[0].split("|")[1:4]] == ["Grader", "Score", "Grade"]
    assert [c.strip() for c in head[2].split("|")[1:4]] == ["rubric", f"{summary['score']:.1f}/100", "S"]
    assert issues_table(records) in text and "LLM judge" not in text


def _write(tmp_path, data) -> Path:
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _minimal():
    return {
        "version": 1,
        "categories": ["control"],
        "questions": [{
            "id": "q1", "category": "control", "question": "2+2?", "answer_format": "<n>",
            "criteria": [{"type": "final_exact", "numbers": [4], "points": 1, "severity": "critical"}],
        }],
    }


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda q: q["criteria"][0].update(type="final_fuzzy"), "unknown type 'final_fuzzy'"),
        (lambda q: q["criteria"][0].update(points=0), "points must be a positive number"),
        (lambda q: q["criteria"][0].update(severity="huge"), "severity must be one of"),
        (lambda q: q.update(category="poetry"), "category 'poetry'"),
        (lambda q: q.pop("answer_format"), "'answer_format'"),
        (lambda q: q["criteria"].append({"type": "requires", "concepts": [{"name": "x", "any": ["(unclosed"]}],
                                         "points": 1, "severity": "minor"}), "invalid regex"),
        (lambda q: q["criteria"].append({"type": "consistent", "points": 1, "severity": "minor"}),
         "consistent needs options"),
        (lambda q: q.update(criteria=[{"type": "requires", "concepts": [["x"]], "points": 1, "severity": "minor"}]),
         "needs a final_exact or final_order"),
        (lambda q: q["criteria"].append({"type": "requires", "concepts": [["x"]], "min": 3, "points": 1,
                                         "severity": "minor"}), "min must be"),
        (lambda q: q["criteria"].append({"type": "forbids", "pattern": ["x"], "points": 1, "severity": "minor"}),
         "unknown field(s) pattern"),
        (lambda q: q["criteria"][0].update(wrong="5"), "wrong must map wrong-answer names to regex lists"),
        (lambda q: q["criteria"][0].update(wrong={"five": ["(5"]}), "invalid regex"),
    ],
)
def test_malformed_question_names_its_id(tmp_path, mutate, message):
    data = _minimal()
    mutate(data["questions"][0])
    with pytest.raises(HarnessError) as e:
        load_questionnaire(_write(tmp_path, data))
    assert "question 'q1'" in str(e.value) and message in str(e.value)


def test_duplicate_ids_and_json_questionnaire(tmp_path):
    data = _minimal()
    assert load_questionnaire(_write(tmp_path, data)).questions[0].id == "q1"
    data["questions"].append(dict(data["questions"][0]))
    with pytest.raises(HarnessError, match="question 'q1': duplicate id"):
        load_questionnaire(_write(tmp_path, data))
    path = tmp_path / "q.json"
    path.write_text(json.dumps(_minimal()), encoding="utf-8")
    assert grade_answer(load_questionnaire(path).questions[0], "FINAL ANSWER: 4").correct


def test_items_interleave_categories_and_limit():
    suite = ReasoningSuite()
    ctx = SuiteContext(model=None, tokenizer=None, artifact=Path("."), exec_mode="simulated",
                       reference=lambda: None, limit=7)
    items = suite.items(ctx)
    assert [i["category"] for i in items] == QN.categories
    assert items == suite.items(ctx)  # stable
    ctx.limit = None
    all_items = suite.items(ctx)
    assert len(all_items) == len(QN.questions) and len({i["id"] for i in all_items}) == len(all_items)
    assert all("FINAL ANSWER:" in i["prompt"] for i in all_items)
    info = suite.data_info(ctx)
    assert info["sha256"] and info["questions"] == len(QN.questions) and info["source"] == f"built-in {DATA_FILE.name}"


# ---------------------------------------------------------------------------- judge


class _FakeJudge(BaseHTTPRequestHandler):
    reply = '{"met": [true, false]}'
    requests = []

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"data": []}')

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        out = {"choices": [{"message": {"role": "assistant", "content": type(self).reply}}]}
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(out).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_judge():
    server = HTTPServer(("127.0.0.1", 0), _FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeJudge.requests = []
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_judge_grades_free_form_criteria(fake_judge):
    q = Q["debug-int-overflow"]  # two judge criteria
    judge = JudgeClient(fake_judge + "/v1", model="m")
    judge.check()
    out = judge.grade(q, ANSWERS[q.id]["good"])
    assert out == {"judge_points": 1.0, "judge_max_points": 2.0, "judge_failed": [q.judge[1]]}
    path, body = _FakeJudge.requests[-1]
    assert path == "/v1/chat/completions" and body["model"] == "m" and body["temperature"] == 0.0
    assert q.judge[0] in body["messages"][1]["content"] and q.reference in body["messages"][1]["content"]
    # judge scores are summarised separately from the deterministic score
    rec = {**_record(q.id, ANSWERS[q.id]["good"]), **out}
    summary = summarize_records([rec])
    assert summary["score"] == 100.0 and summary["judge_score"] == 50.0 and summary["judge_n"] == 1


def test_judge_unparseable_reply(fake_judge):
    _FakeJudge.reply = "I think it is fine."
    try:
        out = JudgeClient(fake_judge).grade(Q["control-sort"], "FINAL ANSWER: apple")
    finally:
        _FakeJudge.reply = '{"met": [true, false]}'
    assert out["judge_points"] is None and "unparseable" in out["judge_error"]
    summary = summarize_records([{**_record("control-sort", "FINAL ANSWER: apple"), **out}])
    assert summary["judge_errors"] == 1 and "judge_score" not in summary


def test_parse_judge_reply():
    assert parse_judge_reply('<think>{"met": [false]}</think> Sure: {"met": [true, "no"]}', 2) == [True, False]
    assert parse_judge_reply('{"met": [true]}', 2) is None
    assert parse_judge_reply("no json", 1) is None


def test_unreachable_judge_fails_before_generating():
    suite = ReasoningSuite()
    ctx = SuiteContext(model=None, tokenizer=None, artifact=Path("."), exec_mode="simulated",
                       reference=lambda: None, options={"judge": "http://127.0.0.1:9"})
    items = suite.items(ctx)[:1]
    with pytest.raises(HarnessError, match="judge endpoint http://127.0.0.1:9 is unreachable"):
        next(suite.run(ctx, items))


@pytest.mark.parametrize("options, message", [
    ({"max_tokens": "lots"}, "max_tokens='lots' is not an integer"),
    ({"batch_size": 0}, "batch_size=0 is out of range"),
    ({"judge_timeout": "-1"}, "judge_timeout='-1' is out of range"),
    ({"stop_on_repeat": "maybe"}, "stop_on_repeat='maybe' is not true/false"),
    ({"judge": "127.0.0.1:8080"}, "not an http(s) URL"),
    ({"questions": "/nonexistent/q.yaml"}, "questionnaire /nonexistent/q.yaml not found"),
])
def test_bad_option_values(options, message):
    suite = ReasoningSuite()
    ctx = SuiteContext(model=None, tokenizer=None, artifact=Path("."), exec_mode="simulated",
                       reference=lambda: None, options=options)
    with pytest.raises(HarnessError) as e:
        suite.items(ctx)  # before any work starts
    assert message in str(e.value)
    with pytest.raises(HarnessError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_options(Options, options, "reasoning")  # what the runner does before building anything


def test_options_and_metrics_declared():

    suite = ReasoningSuite()
    defaults = Options()
    assert (defaults.max_tokens, defaults.batch_size, defaults.stop_on_repeat, defaults.judge,
            defaults.judge_model, defaults.judge_timeout) == (1024, 8, True, None, "default_model", 120)
    # budgets in the thousands suit a thinking model (documented in the suite's docstring)
    assert (defaults.thinking, defaults.thinking_budget) == ("auto", 4096)
    # the runner hands over parsed options; direct callers may pass a dict (the same rule parses it)
    parsed = parse_options(Options, {"max_tokens": "64", "judge": "http://x:1"}, "reasoning")
    ctx = SuiteContext(model=None, tokenizer=None, artifact=Path("."), exec_mode="simulated",
                       reference=lambda: None, options=parsed)
    assert suite.opts(ctx) is parsed
    ctx.options = {"max_tokens": "64", "reasoning.batch_size": "2"}
    assert suite.opts(ctx) == Options(max_tokens=64, batch_size=2)
    ctx.options = {"shots": 5}
    with pytest.raises(HarnessError, match="unknown option 'shots'.*max_tokens"):
        suite.opts(ctx)
    specs = {m.name: m for m in suite.metrics}
    assert specs["score"].kind == "points" and specs["score"].higher_is_better and specs["score"].max_drop == 5.0
    assert specs["judge_score"].max_drop is None and specs["n"].higher_is_better is None
    assert tuple(QN.categories) == CATEGORIES and all(f"score_{c}" in specs for c in CATEGORIES)
    # every numeric summary key is declared
    summary = summarize_records([_record(qid, ANSWERS[qid]["good"]) for qid in Q], QN.categories)
    numeric = {k for k, v in summary.items() if isinstance(v, (int, float)) and not k.endswith("_ci95")}
    assert numeric <= set(specs), numeric - set(specs)
    # a questionnaire with other categories declares those
    ctx.options = {}
    assert {m.name for m in suite.metric_specs(ctx)} == set(specs)


def test_custom_questionnaire_categories_are_declared(tmp_path):
    suite = ReasoningSuite()
    ctx = SuiteContext(model=None, tokenizer=None, artifact=Path("."), exec_mode="simulated",
                       reference=lambda: None, options={"questions": str(_write(tmp_path, _minimal()))})
    names = {m.name for m in suite.metric_specs(ctx)}
    assert "score_control" in names and "score_debugging" not in names and "score" in names


# ---------------------------------------------------------------------------- smoke run


def test_run_on_tiny_model(tmp_path):
    synthetic = pytest.importorskip("harness.sources.synthetic")
    import mlx_lm

    model_dir = synthetic.write_synthetic("llama", tmp_path / "llama")
    model, tokenizer = mlx_lm.load(str(model_dir))
    suite = ReasoningSuite()
    ctx = SuiteContext(model=model, tokenizer=tokenizer, artifact=model_dir, exec_mode="native",
                       reference=lambda: None, limit=3, options={"max_tokens": 8, "batch_size": 1},
                       progress=False)
    items = suite.items(ctx)
    records = list(suite.run(ctx, items))
    assert [r["id"] for r in records] == [i["id"] for i in items]
    for r in records:
        assert r["prompt"] == Q[r["id"]].prompt and isinstance(r["answer"], str)
        assert 0 < r["generated_tokens"] <= 8
        assert r["stop"] in ("eos", "max_tokens", "final_answer", "repetition")
        assert r["max_points"] == Q[r["id"]].max_points
        assert r["points"] == grade_answer(Q[r["id"]], r["answer"]).points
        assert len(r["failed"]) >= 1 and {"criterion", "severity", "detail"} <= set(r["failed"][0])
        json.dumps(r)
    # greedy: batched generation gives the same answers as streaming
    ctx.options = {"max_tokens": "8", "batch_size": "3"}
    batched = {r["id"]: r for r in suite.run(ctx, items)}
    assert {i: r["answer"] for i, r in batched.items()} == {r["id"]: r["answer"] for r in records}
    assert {i: r["generated_tokens"] for i, r in batched.items()} == {r["id"]: r["generated_tokens"] for r in records}
    summary = suite.summarize(ctx, records)
    assert summary["n"] == 3 and summary["grade"] == grade_band(summary["score"])
