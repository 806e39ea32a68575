"""Rewards: pure functions of what a rollout produced, returning a score and a breakdown that explains it."""
