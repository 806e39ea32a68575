"""The toy env's options: one frozen dataclass whose fields are its train.py flags (envs/options.py makes them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ToyOptions:
    """Answer with one target character."""

    # "top": hashed where it lived before envs declared their options, so older runs keep their config hash.
    toy_target: str = field(default="a", metadata={"hash": "top", "help": "toy env: the character to learn"})

    def validate(self) -> None:
        if len(self.toy_target) != 1:
            raise ValueError("--toy-target must be exactly one character")
