"""The sandbox that runs model-written code: an allowlisted bubblewrap view (view.py), the launch
command (launch.py), the process runner (run.py), the start-up check (check.py, `python -m sandbox check`)."""

import entry_point  # noqa: F401 - first: keeps ART's import of LiteLLM off the network (entry_point.py)
