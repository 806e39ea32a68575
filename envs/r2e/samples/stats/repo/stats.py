"""Small descriptive statistics."""


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values)


def median(values: list[float]) -> float | None:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]
