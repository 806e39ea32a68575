"""The SFT stage: demonstrations -> `model.train_sft()` (ART's API), before RL, resumable like any step.

Data: a .jsonl of OpenAI chat `messages` (with optional `tools`), read as ART's `art.utils.sft` reads it, or a
.jsonl/.parquet of `prompt`/`response` columns (verl's SFT layout; `prompt` a string or a list of messages). Every
row is checked before any model is loaded; a bad one stops the run with one line naming the file, row and field.

Schedule: ART's `create_sft_dataset_iterator` (linear decay with warmup over the whole stage, reshuffled per
epoch), cut into one chunk per epoch. Each chunk is one `model.train_sft()` call, which the backend turns into one
new checkpoint, so each SFT epoch is one ART step, committed in `state.json` like an RL step (with
`sft.epochs_done`). A run killed during SFT rolls back the uncommitted epoch and redoes it; a finished SFT stage
is never repeated, and RL steps follow it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = {"system", "user", "assistant", "tool", "developer"}


class SFTDataError(ValueError):
    """A --sft-data file, row or field is unusable; the message names all three."""


@dataclass(frozen=True)
class SFTPlan:
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int

    def batches_per_epoch(self, rows: int) -> int:
        return math.ceil(rows / self.batch_size)


def _check_messages(path: str, row: int, messages: Any, field: str) -> list[dict[str, Any]]:
    where = f"--sft-data {path}: row {row}: field {field!r}"
    if not isinstance(messages, list) or not messages:
        raise SFTDataError(f"{where} must be a non-empty list of chat messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise SFTDataError(f"{where}[{index}] needs a 'role' among {', '.join(sorted(ROLES))}")
        content = message.get("content")
        if not isinstance(content, str) and not (content is None and message.get("tool_calls")):
            raise SFTDataError(f"{where}[{index}] needs a string 'content'")
    return messages


def _row_to_conversation(path: str, row: int, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise SFTDataError(f"--sft-data {path}: row {row}: not a JSON object")
    if "messages" in data:
        messages = _check_messages(path, row, data["messages"], "messages")
        tools = data.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise SFTDataError(f"--sft-data {path}: row {row}: field 'tools' must be a list")
    elif "prompt" in data and "response" in data:
        prompt, response = data["prompt"], data["response"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        prompt = _check_messages(path, row, prompt, "prompt")
        if not isinstance(response, str) or not response:
            raise SFTDataError(f"--sft-data {path}: row {row}: field 'response' must be a non-empty string")
        messages, tools = [*prompt, {"role": "assistant", "content": response}], None
    else:
        missing = "messages" if "prompt" not in data else "response"
        raise SFTDataError(f"--sft-data {path}: row {row}: field {missing!r} is missing "
                           "(rows hold 'messages', or 'prompt' and 'response')")
    if not any(m.get("role") == "assistant" for m in messages):
        raise SFTDataError(f"--sft-data {path}: row {row}: field 'messages' has no assistant turn to learn from")
    return {"messages": messages, "tools": tools}


def _rows(path: str) -> list[Any]:
    try:
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        rows = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise SFTDataError(f"--sft-data {path}: row {number}: not valid JSON ({exc.msg})") from exc
        return rows
    except UnicodeDecodeError as exc:
        raise SFTDataError(f"--sft-data {path}: not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise SFTDataError(f"--sft-data {path}: cannot be read ({exc.strerror or exc})") from exc
    except Exception as exc:  # pyarrow's errors for a file that is no parquet
        if isinstance(exc, SFTDataError):
            raise
        raise SFTDataError(f"--sft-data {path}: cannot be read as parquet ({exc.__class__.__name__})") from exc


def load_sft_conversations(paths: list[str]) -> list[dict[str, Any]]:
    """All rows of all files as `{"messages", "tools"}` dicts, validated; rows are numbered from 1."""
    conversations = []
    for path in paths:
        rows = _rows(path)
        if not rows:
            raise SFTDataError(f"--sft-data {path}: no rows")
        conversations += [_row_to_conversation(path, i, row) for i, row in enumerate(rows, start=1)]
    return conversations


def to_trajectories(conversations: list[dict[str, Any]]) -> list[Any]:
    import art

    return [art.Trajectory(messages_and_choices=c["messages"], tools=c["tools"], reward=0.0) for c in conversations]


async def run_sft_stage(model: Any, conversations: list[dict[str, Any]], plan: SFTPlan, commit: Any) -> int:
    """Train the epochs not yet committed; `commit(step, epochs_done, metrics)` records each one. Returns the
    number of epochs trained now."""
    from art.utils.sft import create_sft_dataset_iterator

    state = model.read_state() or {}
    done = int((state.get("sft") or {}).get("epochs_done", 0))
    if done >= plan.epochs:
        return 0
    trajectories = to_trajectories(conversations)
    per_epoch = plan.batches_per_epoch(len(trajectories))
    chunks = create_sft_dataset_iterator(trajectories, chunk_size=per_epoch, epochs=plan.epochs,
                                         batch_size=plan.batch_size, peak_lr=plan.learning_rate,
                                         seed=plan.seed, initial_step=done * per_epoch, show_progress=False)
    trained = 0
    for chunk in chunks:
        started = time.monotonic()
        await model.train_sft(chunk.trajectories, chunk.config)
        step = await model.get_step()
        metrics = _last_sft_row(model, step) | {"sft/epoch": float(chunk.epoch + 1),
                                                "sft/seconds": time.monotonic() - started}
        commit(step, chunk.epoch + 1, metrics)
        trained += 1
    return trained


def _last_sft_row(model: Any, step: int) -> dict[str, float]:
    history = Path(model._get_output_dir()) / "history.jsonl"
    rows = [json.loads(line) for line in history.read_text().splitlines() if line.strip()] if history.exists() else []
    for row in reversed(rows):
        if row.get("step") == step:
            return {k: v for k, v in row.items() if isinstance(v, int | float) and k != "step"}
    return {}
