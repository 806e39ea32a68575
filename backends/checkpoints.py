"""Checkpoint housekeeping in ART's layout: which steps to keep, and exporting one as a standard PEFT adapter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def best_val_step(model_dir: Path, metric: str = "val/reward") -> int | None:
    history = model_dir / "history.jsonl"
    best: tuple[float, int] | None = None
    for line in history.read_text().splitlines() if history.exists() else []:
        row = json.loads(line)
        if metric in row and (best is None or row[metric] > best[0]):
            best = (float(row[metric]), int(row["step"]))
    return None if best is None else best[1]


def steps_to_keep(existing: list[int], latest: int, keep: int, save_every: int, best: int | None,
                  pinned: int | None = None) -> list[int]:
    """The latest step, the best eval step, a pinned step (the KL reference), and the `keep` newest steps that fall
    on `save_every`."""
    kept = {latest} | {s for s in (best, pinned) if s is not None}
    saved = sorted(s for s in existing if s % save_every == 0 and s != latest)
    kept |= set(saved[-keep:] if keep > 0 else [])
    return sorted(s for s in kept if s in existing)


def export_adapter(checkpoint: Path, out: Path, merge: bool, base_model: str) -> Path:
    """Copy the adapter (a PEFT directory) to `out`; with `merge`, write the merged full model instead."""
    if not (checkpoint / "adapter_config.json").exists():
        raise FileNotFoundError(f"{checkpoint} holds no PEFT adapter (adapter_config.json)")
    out.mkdir(parents=True, exist_ok=True)
    if not merge:
        for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
                     "special_tokens_map.json", "chat_template.jinja"):
            if (checkpoint / name).exists():
                shutil.copy2(checkpoint / name, out / name)
        return out
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_model)
    merged = PeftModel.from_pretrained(base, str(checkpoint)).merge_and_unload()
    merged.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(base_model).save_pretrained(str(out))
    return out
