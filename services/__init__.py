"""Platform services every env may use: the HTTP client and process of a service node, owned scratch dirs
and idempotent requests."""

import entry_point  # noqa: F401 - first: keeps ART's import of LiteLLM off the network (entry_point.py)
