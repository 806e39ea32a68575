"""Benchmarks: each script measures one thing and prints its figures (`bench/run_all.py` runs them all)."""

import entry_point  # noqa: F401 - first: keeps ART's import of LiteLLM off the network (entry_point.py)
