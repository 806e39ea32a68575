"""Date helpers for ISO dates (YYYY-MM-DD)."""

from datetime import datetime


def parse(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d")


def days_between(a: str, b: str) -> int:
    return abs((parse(b) - parse(a)).seconds)
