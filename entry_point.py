"""What every entry point shares: imports that stay off the network, and bad input refused in one line.

ART imports LiteLLM, and LiteLLM fetches its model price map from the network when it is imported unless
`LITELLM_LOCAL_MODEL_COST_MAP` is set: offline that is a warning and a wait on every command, `--help` included,
for a map no run of ours reads. Every package's `__init__` imports this module first, so `train.py`, each
`python -m ...` entry point, each service and any script that imports one of our packages before ART has it set;
a value the user set wins (setdefault). A script that imports ART before any of our packages sets it itself.

`OneLineParser` is argparse for every command line of ours: a bad flag is one line on stderr naming it, exit 2,
instead of the usage block with the reason at its end.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

OFFLINE_AT_IMPORT = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}

for _name, _value in OFFLINE_AT_IMPORT.items():
    os.environ.setdefault(_name, _value)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming it (the usage text buries the reason); subcommands' parsers
    are of this class too (argparse makes them with the parent's class)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see --help)\n")


def at_least(minimum: float, kind: type[int] | type[float] = int) -> Callable[[str], Any]:
    """An argparse `type` for a count or a duration: a bad value is argparse's one line naming the flag
    ("argument --steps: must be at least 1, not 0") instead of a traceback from deep in the work."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not value >= minimum:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {text}")
        return value

    return parse
