"""The functions the generated r2e tasks are built from (envs/r2e/generated.py), each with its tests and its bugs.

Why templates rather than free generation: every bug must be a one-place edit that a 135M model can read in a
short file and undo, and that the tests surely catch; a hand-written function with hand-written bugs guarantees
both, and the generator still checks each task (the bug fails a test, the fix passes them all).

A bug is the correct text and the buggy text that replaces it (once) in the function's source; its fix is the
reverse. A test is (name suffix, call, expected value as Python source).
"""

from __future__ import annotations

from dataclasses import dataclass

BUG_KINDS = ("wrong_operator", "off_by_one", "wrong_constant", "swapped_args", "missing_case")


@dataclass(frozen=True)
class Bug:
    """One kind of mistake in a function: `correct` (in the function's source) becomes `buggy`."""

    kind: str
    correct: str
    buggy: str

    def __post_init__(self) -> None:
        if self.kind not in BUG_KINDS:
            raise ValueError(f"unknown bug kind {self.kind!r}")


@dataclass(frozen=True)
class FunctionTemplate:
    """A short correct function, the tests that pin it down, and the bugs it can be given."""

    name: str
    source: str
    tests: tuple[tuple[str, str, str], ...]
    bugs: tuple[Bug, ...]


def _f(name: str, source: str, tests: list[tuple[str, str, str]], bugs: list[tuple[str, str, str]]) -> FunctionTemplate:
    return FunctionTemplate(name, source.strip("\n") + "\n", tuple(tests), tuple(Bug(*b) for b in bugs))


TEMPLATES: tuple[FunctionTemplate, ...] = (
    _f("add", """
def add(a, b):
    return a + b
""", [("small", "add(2, 3)", "5"), ("negative", "add(-4, 1)", "-3")],
       [("wrong_operator", "return a + b", "return a - b")]),
    _f("subtract", """
def subtract(a, b):
    return a - b
""", [("basic", "subtract(10, 4)", "6"), ("below_zero", "subtract(3, 5)", "-2")],
       [("swapped_args", "return a - b", "return b - a"), ("wrong_operator", "return a - b", "return a + b")]),
    _f("area", """
def area(width, height):
    return width * height
""", [("square", "area(3, 3)", "9"), ("rectangle", "area(2, 5)", "10")],
       [("wrong_operator", "width * height", "width + height")]),
    _f("power", """
def power(base, exp):
    return base ** exp
""", [("square", "power(3, 2)", "9"), ("cube", "power(2, 3)", "8"), ("zero", "power(5, 0)", "1")],
       [("swapped_args", "base ** exp", "exp ** base"), ("wrong_operator", "base ** exp", "base * exp")]),
    _f("is_even", """
def is_even(n):
    return n % 2 == 0
""", [("four", "is_even(4)", "True"), ("seven", "is_even(7)", "False")],
       [("wrong_constant", "n % 2 == 0", "n % 3 == 0"), ("wrong_operator", "n % 2 == 0", "n % 2 != 0")]),
    _f("percent", """
def percent(part, whole):
    return part * 100 / whole
""", [("half", "percent(1, 2)", "50.0"), ("quarter", "percent(5, 20)", "25.0")],
       [("wrong_constant", "part * 100", "part * 10"), ("swapped_args", "part * 100 / whole", "whole * 100 / part")]),
    _f("sign", """
def sign(x):
    if x > 0:
        return 1
    if x < 0:
        return -1
    return 0
""", [("positive", "sign(5)", "1"), ("negative", "sign(-3)", "-1"), ("zero", "sign(0)", "0")],
       [("missing_case", "    if x < 0:\n        return -1\n    return 0", "    return 0"),
        ("wrong_operator", "if x > 0:", "if x >= 0:")]),
    _f("safe_div", """
def safe_div(a, b):
    if b == 0:
        return None
    return a / b
""", [("basic", "safe_div(6, 3)", "2.0"), ("by_zero", "safe_div(1, 0)", "None")],
       [("missing_case", "    if b == 0:\n        return None\n    return a / b", "    return a / b"),
        ("swapped_args", "return a / b", "return b / a")]),
    _f("total", """
def total(values):
    result = 0
    for value in values:
        result += value
    return result
""", [("three", "total([1, 2, 3])", "6"), ("empty", "total([])", "0")],
       [("wrong_constant", "result = 0", "result = 1"), ("wrong_operator", "result += value", "result -= value")]),
    _f("average", """
def average(values):
    if not values:
        return 0.0
    return sum(values) / len(values)
""", [("basic", "average([2, 4, 6])", "4.0"), ("empty", "average([])", "0.0")],
       [("missing_case", "    if not values:\n        return 0.0\n    return sum", "    return sum"),
        ("off_by_one", "sum(values) / len(values)", "sum(values) / (len(values) - 1)")]),
    _f("count_up", """
def count_up(n):
    return list(range(1, n + 1))
""", [("three", "count_up(3)", "[1, 2, 3]"), ("zero", "count_up(0)", "[]")],
       [("off_by_one", "range(1, n + 1)", "range(1, n)"), ("wrong_constant", "range(1, n + 1)", "range(0, n + 1)")]),
    _f("first_n", """
def first_n(items, n):
    return items[:n]
""", [("two", "first_n([5, 6, 7], 2)", "[5, 6]"), ("short_list", "first_n([1], 3)", "[1]")],
       [("off_by_one", "items[:n]", "items[:n - 1]")]),
    _f("to_fahrenheit", """
def to_fahrenheit(celsius):
    return celsius * 9 / 5 + 32
""", [("freezing", "to_fahrenheit(0)", "32.0"), ("boiling", "to_fahrenheit(100)", "212.0")],
       [("wrong_constant", "/ 5 + 32", "/ 5 + 30"), ("wrong_operator", "/ 5 + 32", "/ 5 - 32")]),
    _f("larger", """
def larger(a, b):
    if a > b:
        return a
    return b
""", [("first", "larger(7, 2)", "7"), ("second", "larger(1, 9)", "9")],
       [("wrong_operator", "if a > b:", "if a < b:")]),
    _f("in_range", """
def in_range(x, low, high):
    return low <= x <= high
""", [("inside", "in_range(5, 1, 10)", "True"), ("top_edge", "in_range(10, 1, 10)", "True"),
      ("outside", "in_range(11, 1, 10)", "False")],
       [("off_by_one", "x <= high", "x < high")]),
    _f("fizzbuzz", """
def fizzbuzz(n):
    if n % 15 == 0:
        return "FizzBuzz"
    if n % 3 == 0:
        return "Fizz"
    if n % 5 == 0:
        return "Buzz"
    return str(n)
""", [("fizz", "fizzbuzz(9)", "'Fizz'"), ("buzz", "fizzbuzz(10)", "'Buzz'"), ("both", "fizzbuzz(30)", "'FizzBuzz'"),
      ("number", "fizzbuzz(7)", "'7'")],
       [("missing_case", '    if n % 15 == 0:\n        return "FizzBuzz"\n    if n % 3', "    if n % 3"),
        ("wrong_constant", "n % 5 == 0", "n % 4 == 0")]),
    _f("index_of", """
def index_of(items, target):
    for i, item in enumerate(items):
        if item == target:
            return i
    return -1
""", [("found", "index_of([4, 5, 6], 5)", "1"), ("missing", "index_of([4, 5], 9)", "-1")],
       [("missing_case", "            return i\n    return -1", "            return i"),
        ("off_by_one", "            return i\n", "            return i + 1\n")]),
    _f("pad_left", """
def pad_left(text, width):
    return " " * (width - len(text)) + text
""", [("short", "pad_left('ab', 4)", "'  ab'"), ("exact", "pad_left('abc', 3)", "'abc'")],
       [("off_by_one", "(width - len(text))", "(width - len(text) - 1)"),
        ("wrong_constant", 'return " " *', 'return "-" *')]),
    _f("triangle", """
def triangle(n):
    return n * (n + 1) // 2
""", [("four", "triangle(4)", "10"), ("one", "triangle(1)", "1")],
       [("off_by_one", "n * (n + 1)", "n * (n - 1)"), ("wrong_constant", "// 2", "// 3")]),
    _f("repeat", """
def repeat(word, times):
    return "-".join([word] * times)
""", [("three", "repeat('ab', 3)", "'ab-ab-ab'"), ("once", "repeat('x', 1)", "'x'")],
       [("off_by_one", "[word] * times", "[word] * (times - 1)"), ("wrong_constant", '"-".join', '"+".join')]),
    _f("clamp", """
def clamp(x, low, high):
    if x < low:
        return low
    if x > high:
        return high
    return x
""", [("below", "clamp(-5, 0, 10)", "0"), ("above", "clamp(15, 0, 10)", "10"), ("inside", "clamp(4, 0, 10)", "4")],
       [("missing_case", "    if x > high:\n        return high\n    return x", "    return x"),
        ("wrong_operator", "if x < low:", "if x > low:")]),
    _f("ratio", """
def ratio(a, b):
    return a // b
""", [("basic", "ratio(7, 2)", "3"), ("exact", "ratio(9, 3)", "3")],
       [("swapped_args", "a // b", "b // a"), ("wrong_operator", "a // b", "a % b")]),
    _f("last", """
def last(items):
    return items[len(items) - 1]
""", [("three", "last([1, 2, 3])", "3"), ("one", "last(['a'])", "'a'")],
       [("off_by_one", "items[len(items) - 1]", "items[len(items)]")]),
    _f("distance", """
def distance(a, b):
    return abs(a - b)
""", [("forward", "distance(2, 9)", "7"), ("backward", "distance(9, 2)", "7")],
       [("missing_case", "return abs(a - b)", "return a - b"), ("wrong_operator", "abs(a - b)", "abs(a + b)")]),
)

PACKAGES = ("calc", "mathkit", "numtools", "quickmath", "helpers", "smallops")
MODULES = ("core", "ops", "funcs")
