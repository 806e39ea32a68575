"""The trainer behind `train.py`: config and CLI, resume, the SFT stage, the GRPO loop, export."""

import entry_point  # noqa: F401 - first: keeps ART's import of LiteLLM off the network (entry_point.py)
