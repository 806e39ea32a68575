"""The embedded base models by name, as `train.py --base-model NAME` takes them: a local folder and LoRA targets."""

from __future__ import annotations

TINY_RANDOM = "tiny-random"
SMOLLM2 = "smollm2-135m"


def embedded_model(name: str, art_path: str) -> tuple[str, str | list[str]]:
    """Build (tiny-random) or convert (smollm2-135m) the named model once under `art_path`; return its folder and
    the LoRA target modules that suit it."""
    if name == TINY_RANDOM:
        from backends.tiny_random_model import LORA_TARGETS, ensure_tiny_model

        return ensure_tiny_model(art_path), LORA_TARGETS
    if name == SMOLLM2:
        from backends.smollm2 import ensure_pretrained

        return ensure_pretrained(SMOLLM2, art_path), "all-linear"
    raise ValueError(f"unknown embedded model {name!r}; known: {TINY_RANDOM}, {SMOLLM2}")
