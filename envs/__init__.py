"""Environments: where scenarios come from (datasets, bundled samples, generators) and the services they use."""

import entry_point  # noqa: F401 - first: keeps ART's import of LiteLLM off the network (entry_point.py)
