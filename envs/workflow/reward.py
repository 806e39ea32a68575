"""The workflow env's 5-tier score: 1.0 perfect, 0.7 near-correct, 0.4 partially correct, 0.2 produced an answer
of the expected kind, 0.0 wrong in kind or none. Pure: code answers are scored from the test counts the env
measured in the sandbox (`envs.workflow.code_check`), so nothing here runs anything.

Why tiers instead of 0/1: a small generator rarely writes a perfect workflow at first; the lower tiers give GRPO a
gradient between "ran and answered something" and "answered nothing". Each domain's rule is in its function's
docstring and every tier has a unit test (tests/test_workflow.py).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

PERFECT, NEAR, PARTIAL, ANSWERED, NONE = 1.0, 0.7, 0.4, 0.2, 0.0
TIER_NAMES = {PERFECT: "perfect", NEAR: "near", PARTIAL: "partial", ANSWERED: "answered", NONE: "none"}

# A number as people write it: sign, currency, thousands commas, decimals, a fraction or a mixed number, percent.
_NUMBER = re.compile(r"(?<![\w.])-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s+\d+/\d+|/\d+)?\s?%?")
_ANSWER_MARK = re.compile(r"(?:####|answer\s*(?:is|:|=))", re.IGNORECASE)


@dataclass(frozen=True)
class Score:
    reward: float
    tier: str
    reason: str

    def breakdown(self) -> dict[str, float]:
        return {"workflow_score": self.reward, **{f"tier_{n}": float(n == self.tier) for n in TIER_NAMES.values()}}


def _score(reward: float, reason: str) -> Score:
    return Score(reward, TIER_NAMES[reward], reason)


def parse_number(text: str) -> Fraction | None:
    """One written number -> its exact value: '1,234' 1234, '$12.50' 25/2, '3/4', '1 1/2' 3/2, '25%' 25 (the
    percent sign is dropped; `score_math` also accepts the value / 100). None when it is not a number."""
    cleaned = text.strip().replace("$", "").replace(",", "").rstrip("%").strip()
    try:
        if " " in cleaned:  # a mixed number
            whole, frac = cleaned.split(None, 1)
            value = Fraction(frac)
            return Fraction(whole) - value if whole.startswith("-") else Fraction(whole) + value
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def numbers_in(text: str) -> list[Fraction]:
    """Every number in the text, in order (units and words around them are ignored)."""
    values = (parse_number(m.group(0)) for m in _NUMBER.finditer(text))
    return [v for v in values if v is not None]


def final_number(text: str) -> Fraction | None:
    """The answer's number: the first after an 'answer:' / '####' mark when there is one, else the last one."""
    marks = list(_ANSWER_MARK.finditer(text))
    if marks:
        after = numbers_in(text[marks[-1].end():])
        if after:
            return after[0]
    found = numbers_in(text)
    return found[-1] if found else None


def _relative_error(value: Fraction, gold: Fraction) -> float:
    return float(abs(value - gold) / max(abs(gold), Fraction(1)))


def score_math(answer: str | None, gold: str | float | int, *, tolerance: float = 1e-6) -> Score:
    """Numeric answers. The answer's number is `final_number`; a percent may also mean its value / 100.
    - 1.0: within `tolerance` (relative to max(|gold|, 1)) of the gold value.
    - 0.7: within 1 %: a rounding slip or a near miss.
    - 0.4: within 10 %, or the gold value appears among the answer's numbers but is not its final one (the right
      intermediate work, the wrong number reported).
    - 0.2: the answer holds a number, just a wrong one.
    - 0.0: no answer, or no number in it."""
    gold_value = parse_number(str(gold))
    if gold_value is None:
        raise ValueError(f"gold answer {gold!r} is not a number")
    if not answer or not answer.strip():
        return _score(NONE, "no answer")
    value = final_number(answer)
    if value is None:
        return _score(NONE, "no number in the answer")
    candidates = [value, value / 100] if "%" in answer else [value]
    error = min(_relative_error(v, gold_value) for v in candidates)
    if error <= tolerance:
        return _score(PERFECT, f"{float(value):g} equals {float(gold_value):g}")
    if error <= 0.01:
        return _score(NEAR, f"{float(value):g} within 1% of {float(gold_value):g}")
    if error <= 0.10:
        return _score(PARTIAL, f"{float(value):g} within 10% of {float(gold_value):g}")
    if any(_relative_error(v, gold_value) <= tolerance for v in numbers_in(answer)):
        return _score(PARTIAL, f"{float(gold_value):g} appears but the final number is {float(value):g}")
    return _score(ANSWERED, f"{float(value):g} is not {float(gold_value):g}")


def normalize_text(text: str) -> str:
    """SQuAD-style: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(w for w in text.split() if w not in {"a", "an", "the"})


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_text(prediction).split(), normalize_text(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _contains(prediction: str, gold: str) -> bool:
    pred, ref = normalize_text(prediction).split(), normalize_text(gold).split()
    return bool(ref) and any(pred[i:i + len(ref)] == ref for i in range(len(pred) - len(ref) + 1))


def score_qa(answer: str | None, golds: list[str]) -> Score:
    """Short-answer QA against every accepted gold string, best match wins (text normalised by `normalize_text`).
    - 1.0: exact match after normalisation.
    - 0.7: token F1 >= 0.8, or the gold answer appears whole inside a reply of at most 3x its length in tokens
      ("It is Paris." for "Paris").
    - 0.4: token F1 >= 0.4.
    - 0.2: a non-empty answer that misses.
    - 0.0: no answer (empty after normalisation)."""
    if not golds:
        raise ValueError("a QA task needs at least one gold answer")
    if not answer or not normalize_text(answer):
        return _score(NONE, "no answer")
    if any(normalize_text(answer) == normalize_text(g) for g in golds):
        return _score(PERFECT, "exact match")
    f1 = max(token_f1(answer, g) for g in golds)
    length = len(normalize_text(answer).split())
    if f1 >= 0.8 or any(_contains(answer, g) and length <= 3 * len(normalize_text(g).split()) for g in golds):
        return _score(NEAR, f"near match (F1 {f1:.2f})")
    if f1 >= 0.4:
        return _score(PARTIAL, f"partial match (F1 {f1:.2f})")
    return _score(ANSWERED, f"wrong answer (F1 {f1:.2f})")


@dataclass(frozen=True)
class CodeOutcome:
    """What running a code answer against its task's tests found (measured in the sandbox by the env)."""

    produced: bool  # a non-empty answer
    loads: bool  # it compiled, ran and defined the entry point
    passed: int
    total: int


def score_code(outcome: CodeOutcome) -> Score:
    """Code answers, from the task's tests run in the sandbox.
    - 1.0: every test passes.
    - 0.7: at least half pass.
    - 0.4: at least one passes.
    - 0.2: the code loads and defines the entry point, but no test passes.
    - 0.0: no code, or code that does not load (syntax error, crash on import, entry point missing)."""
    if not outcome.produced:
        return _score(NONE, "no code")
    if not outcome.loads or outcome.total <= 0:
        return _score(NONE, "the code does not load or define the entry point")
    share = f"{outcome.passed}/{outcome.total} tests pass"
    if outcome.passed == outcome.total:
        return _score(PERFECT, share)
    if 2 * outcome.passed >= outcome.total:
        return _score(NEAR, share)
    if outcome.passed > 0:
        return _score(PARTIAL, share)
    return _score(ANSWERED, share)
