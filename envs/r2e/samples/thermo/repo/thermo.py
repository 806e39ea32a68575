"""Classify water temperatures (degrees Celsius)."""


def phase(celsius: float) -> str:
    if celsius < 0:
        return "ice"
    if celsius > 100:
        return "steam"
    return "water"


def is_freezing(celsius: float) -> bool:
    return celsius < 0
