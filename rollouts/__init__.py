"""Rollouts: gather groups under one concurrency bound, one rollout per env, trajectory logs, health monitor."""

import entry_point  # noqa: F401 - first: keeps ART's import of LiteLLM off the network (entry_point.py)
