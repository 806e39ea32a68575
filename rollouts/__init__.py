"""Rollouts: gather groups under one concurrency bound, one rollout per env, trajectory logs, health monitor."""
