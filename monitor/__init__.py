"""Watching a run: the health monitor thread, the HTML report and its panels, W&B rollout tables and the report
artifact."""
