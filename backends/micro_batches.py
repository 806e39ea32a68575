"""Which rows the CPU trainer runs through the model together: consecutive rows, as many as fit a token budget.

One row per forward keeps one sequence's activations in memory, but short rows then make every matmul a few hundred
rows tall, where the CPU runs far below its speed, and every layer's small operations run once per row
(bench/train_step.py times the step). Rows that run together are padded to the longest of them, so the budget counts
padded tokens: rows x the longest row's length.
"""

from __future__ import annotations

TOKEN_BUDGET = 1024  # padded tokens per forward: short rows together, a long row alone (two gain nothing)


def micro_batches(lengths: list[int], budget: int | None = None) -> list[list[int]]:
    """`lengths`' indices in order, cut into runs of consecutive rows whose count x longest length fits `budget`
    (TOKEN_BUDGET by default; a row longer than the budget runs alone). Rows of length 0 (nothing to compute) are
    left out."""
    budget = TOKEN_BUDGET if budget is None else budget
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index, length in enumerate(lengths):
        if length <= 0:
            continue
        if current and (len(current) + 1) * max(longest, length) > budget:
            batches.append(current)
            current, longest = [], 0
        current.append(index)
        longest = max(longest, length)
    if current:
        batches.append(current)
    return batches
