"""Watching a run: the health monitor thread and the HTML report."""
