"""The agent side of a rollout: prompts, parsing what the model wrote, and keeping messages within budget."""

import entry_point  # noqa: F401 - first: keeps ART's import of LiteLLM off the network (entry_point.py)
