"""Reward for the `toy` env."""

from __future__ import annotations


def target_share(reply: str, target: str) -> tuple[float, dict[str, float]]:
    """Share of the reply's characters that are `target`; an empty reply scores 0 (it said nothing)."""
    hits = reply.count(target)
    share = hits / len(reply) if reply else 0.0
    return share, {"target_chars": float(hits), "reply_chars": float(len(reply)), "target_share": share}
