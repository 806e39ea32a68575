"""Sampled trajectory logs that the RLM visualizer (alexzhang13/rlm, `visualizer/`) opens and renders.

One `.jsonl` file per logged rollout under `logs/<experiment>/step_NNNN/`: a metadata line (holding the rollout's
turn count), then one iteration line per assistant turn, also a turn whose reply held no code (`code_blocks: []`,
with the `observation` the agent got). The shapes are the visualizer's (`src/lib/types.ts`), as RLM's own logger
writes them: every iteration's `prompt` is the list of chat messages the model was sent for that turn (strings for
role and content, since the panels render each one as text), and every sub-call carries `prompt_tokens` and
`completion_tokens` (the visualizer's token badges) beside RLM's `usage_summary`.
Which rollouts are logged is a pure function of (seed, step, group, index), so a resumed step logs the same ones.
Each file is written to a temp name, fsynced and renamed (backends/atomic.py), off the event loop, so a killed run
never leaves half a file and a full disk raises `DiskFull` naming it.
`art` is imported for type hints only, so `python -m rollouts.logs validate` starts without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import shutil
import sys
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backends.atomic import atomic_write_jsonl

if TYPE_CHECKING:
    import art


def is_sampled(seed: int, step: int, group: int, index: int, rate: float) -> bool:
    digest = hashlib.sha256(f"{seed}:{step}:{group}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


TURNS_KEY = "rlm_turns"
PREFIX_KEY = "prompt_prefix"  # a turn whose prompt is the first N messages of the conversation keeps only N
_ITERATION_FIELDS = ("type", "iteration", "timestamp", "prompt", "response", "code_blocks", "final_answer",
                     "iteration_time", "observation")


def approx_tokens(text: str) -> int:
    """About 4 characters a token: the count a sub-call gets when its server reported none."""
    return len(text) // 4 + 1 if text else 0


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, list):  # content parts: the text ones, in order
        return "".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return content if isinstance(content, str) else str(content)


def chat_messages(messages: Iterable[Any]) -> list[dict[str, str]]:
    """Messages as the visualizer renders them: `role` and `content` strings, never null (a null content, as a
    reply of only tool calls has, crashes its trajectory panel)."""
    out = []
    for m in messages:
        role = m.get("role") if isinstance(m, dict) else getattr(getattr(m, "message", m), "role", "assistant")
        content = m.get("content") if isinstance(m, dict) else getattr(getattr(m, "message", m), "content", "")
        out.append({"role": str(role or "user"), "content": _text(content)})
    return out


def attach_turns(trajectory: art.Trajectory, turns: list[dict[str, Any]]) -> None:
    """Rollouts keep each turn's prompt, reply, code blocks and results here, for `rlm_lines` to write out.

    A turn's `prompt` is the list of messages sent to the model. Trajectory metadata holds scalars only (ART stores
    it in parquet), so the turns travel as one JSON string; a prompt that is a prefix of the conversation (every
    turn's, unless the context was trimmed) is kept as its length, so a long rollout's metadata does not grow with
    the square of its turns.
    """
    history = chat_messages(trajectory.messages())
    kept = []
    for turn in turns:
        prompt = turn.get("prompt")
        if not isinstance(prompt, list):
            raise TypeError(f"a logged turn's prompt must be the list of messages sent, got {type(prompt).__name__}")
        messages = chat_messages(prompt)
        entry = {k: v for k, v in turn.items() if k != "prompt"}
        entry |= {PREFIX_KEY: len(messages)} if messages == history[:len(messages)] else {"prompt": messages}
        kept.append(entry)
    trajectory.metadata[TURNS_KEY] = json.dumps(kept, default=repr)


def choice_tokens(choice: Any, prompt: str, count: Callable[[str], int] | None = None) -> tuple[int, int]:
    """(prompt, completion) tokens of one policy completion: the completion's from its token logprobs, the prompt's
    from the policy's tokenizer where the rollout has one, else estimated."""
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    reply = _text(getattr(getattr(choice, "message", None), "content", ""))
    return (count or approx_tokens)(prompt), len(content) if content else approx_tokens(reply)


def sub_call(prompt: Any, response: str, model: str, prompt_tokens: int | None = None,
             completion_tokens: int | None = None, execution_time: float = 0.0) -> dict[str, Any]:
    """One sub-LM call (an `llm_query`, an executor call) in RLM's shape plus the visualizer's token fields; counts
    the server did not report are estimated from the text."""
    prompt = prompt if isinstance(prompt, str | dict) else _text(prompt)
    p = int(prompt_tokens) if prompt_tokens is not None else approx_tokens(_text(prompt) if isinstance(prompt, str)
                                                                          else json.dumps(prompt, default=repr))
    c = int(completion_tokens) if completion_tokens is not None else approx_tokens(str(response))
    return {"root_model": model, "prompt": prompt, "response": str(response), "prompt_tokens": p,
            "completion_tokens": c,
            "usage_summary": {"model_usage_summaries": {model: {"total_calls": 1, "total_input_tokens": p,
                                                                "total_output_tokens": c}}},
            "execution_time": float(execution_time)}


def code_block(code: str, stdout: str = "", stderr: str = "", local_vars: dict[str, str] | None = None,
               execution_time: float = 0.0, calls: list[dict[str, Any]] | None = None,
               model: str = "") -> dict[str, Any]:
    """One code block and its result in the RLM visualizer's shape; `calls` are the sub-calls it made, each
    {"prompt", "response"} with optional "prompt_tokens", "completion_tokens", "execution_time"."""
    rlm_calls = [sub_call(c["prompt"], c["response"], model, c.get("prompt_tokens"), c.get("completion_tokens"),
                          float(c.get("execution_time", 0.0))) for c in calls or []]
    return {"code": code, "result": {"stdout": stdout, "stderr": stderr, "locals": dict(local_vars or {}),
                                     "execution_time": float(execution_time), "rlm_calls": rlm_calls}}


def count_turns(trajectory: art.Trajectory) -> int:
    """The model's replies in the conversation: the log owes one iteration line to each, code or not."""
    return sum(1 for item in trajectory.messages_and_choices
               if not isinstance(item, dict) or item.get("role") == "assistant")


def rlm_lines(trajectory: art.Trajectory, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The metadata line (with the rollout's turn count, so a validator can tell a short log) and one iteration
    line per turn: the env's own record where it kept one, else one per reply read off the conversation."""
    now = datetime.now(UTC).isoformat()
    history = chat_messages(trajectory.messages())
    lines: list[dict[str, Any]] = [_metadata_line(now, meta, count_turns(trajectory))]
    if TURNS_KEY in trajectory.metadata:
        for turn in json.loads(str(trajectory.metadata[TURNS_KEY])):
            prompt = history[:int(turn[PREFIX_KEY])] if PREFIX_KEY in turn else turn.get("prompt", [])
            lines.append(_iteration_line(len(lines), now, prompt, turn))
        return _finite(lines)
    seen: list[dict[str, str]] = []
    for message in history:
        if message["role"] != "assistant":
            seen.append(message)
            if len(lines) > 1:  # what the environment said back after the last reply
                said = lines[-1]["observation"]
                lines[-1]["observation"] = f"{said}\n{message['content']}" if said else message["content"]
            continue
        lines.append(_iteration_line(len(lines), now, list(seen), {"response": message["content"]}))
        seen.append(message)
    if len(lines) > 1:
        lines[-1]["final_answer"] = lines[-1]["response"]
    return _finite(lines)


def _iteration_line(number: int, now: str, prompt: list[dict[str, str]], turn: dict[str, Any]) -> dict[str, Any]:
    answer = turn.get("final_answer")
    if not (answer is None or isinstance(answer, str) or _is_pair(answer)):
        answer = str(answer)
    seconds = turn.get("iteration_time", 0.0)
    observation = turn.get("observation")
    extras = {k: v for k, v in turn.items() if k not in _ITERATION_FIELDS and k != PREFIX_KEY}
    return {"type": "iteration", "iteration": number, "timestamp": now, "prompt": chat_messages(prompt),
            "response": _text(turn.get("response")), "code_blocks": list(turn.get("code_blocks") or []),
            "final_answer": answer, "iteration_time": None if seconds is None else float(seconds),
            **extras, "observation": None if observation is None else str(observation)}


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)


def _finite(value: Any) -> Any:
    """NaN and infinities become null: Python writes them, but the visualizer's JSON.parse skips a line that has
    one, silently dropping the metadata or an iteration."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _metadata_line(now: str, meta: dict[str, Any], turns: int) -> dict[str, Any]:
    model = meta.get("base_model") or meta.get("model", "")  # the model's name, not the run's, where it is known
    return {"type": "metadata", "timestamp": now, "root_model": str(model), "max_depth": 1,
            "max_iterations": int(meta.get("max_steps") or 1), "backend": "openai", "backend_kwargs": {},
            "environment_type": str(meta.get("env", "")), "environment_kwargs": meta, "other_backends": None,
            "turns": turns}


def _write_atomic(path: Path, lines: list[dict[str, Any]]) -> None:
    atomic_write_jsonl(path, lines, default=repr)


async def write_step(log_dir: str, experiment: str, step: int, groups: list[art.TrajectoryGroup], *, seed: int,
                     rate: float, meta: dict[str, Any]) -> int:
    """Write the sampled rollouts of one step; returns how many files were written."""
    if rate <= 0:
        return 0
    step_dir = Path(log_dir) / experiment / f"step_{step:04d}"
    jobs = []
    for g, group in enumerate(groups):
        for i, trajectory in enumerate(group.trajectories):
            if not is_sampled(seed, step, g, i, rate):
                continue
            scenario = str(trajectory.metadata.get("scenario_id", f"g{g}"))
            extra = {**meta, "step": step, "scenario_id": scenario, "reward": trajectory.reward,
                     "policy_step": trajectory.initial_policy_version,  # the policy that sampled it (None: unknown)
                     "reward_breakdown": dict(trajectory.metrics),
                     "logs": trajectory.logs[-20:]}
            name = f"{meta.get('env', 'env')}_{scenario}_{uuid.uuid4().hex[:8]}.jsonl".replace("/", "-")
            jobs.append((step_dir / name, rlm_lines(trajectory, extra)))
    if jobs:
        shutil.rmtree(step_dir, ignore_errors=True)  # a retried step replaces, never adds to, its logs
    await asyncio.gather(*(asyncio.to_thread(_write_atomic, path, lines) for path, lines in jobs))
    return len(jobs)


def remove_steps_after(log_dir: str, experiment: str, committed_step: int) -> list[str]:
    """Resume: logs of steps past the committed one belong to work that is being redone."""
    removed = []
    root = Path(log_dir) / experiment
    for entry in root.glob("step_*") if root.is_dir() else []:
        number = entry.name.removeprefix("step_")
        if number.isdigit() and int(number) > committed_step:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(str(entry))
    return removed


# ---- validation: `python -m rollouts.logs validate PATH...` -------------------------------------------------------
# As strict as the visualizer's parser and panels are: every type below is one it reads (types.ts) and a wrong one
# either stops the file loading ("Failed to read file") or crashes the page on render. Beyond that, our own promise:
# the metadata line comes first and says how many turns the rollout had, and there is one iteration line for each.

_NUMBER = "a number"
_KINDS: dict[str, Callable[[Any], bool]] = {
    "a string": lambda v: isinstance(v, str),
    "a string or null": lambda v: v is None or isinstance(v, str),
    "an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "an integer or null": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
    _NUMBER: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "a number or null": lambda v: v is None or (isinstance(v, int | float) and not isinstance(v, bool)),
    "an object": lambda v: isinstance(v, dict),
    "an object or null": lambda v: v is None or isinstance(v, dict),
    "a list": lambda v: isinstance(v, list),
    "a list of strings or null": lambda v: v is None or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "a string or an object": lambda v: isinstance(v, str | dict),
    "a string, a [string, string] pair or null": lambda v: v is None or isinstance(v, str) or _is_pair(v),
}
_METADATA = {"timestamp": "a string", "root_model": "a string or null", "max_depth": "an integer or null",
             "max_iterations": "an integer or null", "backend": "a string or null",
             "backend_kwargs": "an object or null", "environment_type": "a string or null",
             "environment_kwargs": "an object or null", "other_backends": "a list of strings or null"}
_ITERATION = {"iteration": "an integer", "timestamp": "a string", "prompt": "a list", "response": "a string",
              "code_blocks": "a list", "final_answer": "a string, a [string, string] pair or null",
              "iteration_time": "a number or null", "observation": "a string or null"}
_MESSAGE = {"role": "a string", "content": "a string"}
_BLOCK = {"code": "a string", "result": "an object"}
_RESULT = {"stdout": "a string", "stderr": "a string", "locals": "an object", "execution_time": _NUMBER,
           "rlm_calls": "a list"}
_CALL = {"prompt": "a string or an object", "response": "a string", "prompt_tokens": _NUMBER,
         "completion_tokens": _NUMBER, "execution_time": _NUMBER}


def _check(obj: Any, fields: dict[str, str], where: str) -> str | None:
    if not isinstance(obj, dict):
        return f"{where} must be an object"
    for key, kind in fields.items():
        if key not in obj:
            return f"{where}: missing '{key}'"
        if not _KINDS[kind](obj[key]):
            return f"{where}: '{key}' must be {kind}, is {type(obj[key]).__name__}"
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (the visualizer's parser skips the line)")


def validate_file(path: Path) -> str | None:
    """None when the RLM visualizer loads and renders the file and it holds every turn of its rollout, else
    'LINE: reason' for the first problem: a log that drops turns is as useless to a reader as a broken one."""
    if path.suffix != ".jsonl":
        return "0: the name must end in .jsonl (the visualizer's uploader refuses other files)"
    turns, iterations, number = 0, 0, 0
    for number, text in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not text.strip():
            continue  # the visualizer skips blank lines
        try:
            obj = json.loads(text, parse_constant=_no_constant)
        except ValueError as exc:
            return f"{number}: not JSON ({getattr(exc, 'msg', exc)})"
        if not isinstance(obj, dict):
            return f"{number}: not a JSON object"
        kind = obj.get("type")
        if turns == 0:
            if kind != "metadata":
                return f"{number}: first line must have type 'metadata', has {kind!r}"
            problem = _check(obj, _METADATA, str(number))
            if problem:
                return problem
            turns = obj.get("turns")
            if not _KINDS["an integer"](turns) or turns < 1:
                return f"{number}: 'turns' must be the rollout's turn count (an integer >= 1), is {turns!r}"
            continue
        if kind != "iteration":  # the visualizer takes every line but the metadata for an iteration
            return f"{number}: line type must be 'iteration' after the metadata line, is {kind!r}"
        iterations += 1
        problem = _check_iteration(obj, str(number), iterations)
        if problem:
            return problem
    if turns == 0:
        return "1: empty file"
    if iterations == 0:
        return f"{number}: no iteration lines (the rollout had {turns} turn(s))"
    if iterations != turns:
        return f"{number}: {iterations} iteration line(s) for a rollout of {turns} turn(s)"
    return None


def _check_iteration(obj: dict[str, Any], where: str, expected: int) -> str | None:
    problem = _check(obj, _ITERATION, where)
    if problem:
        return problem
    if obj["iteration"] != expected:
        return f"{where}: iteration {obj['iteration']}, expected {expected}"
    if not obj["prompt"]:
        return f"{where}: 'prompt' must hold the messages the model was sent, is empty"
    for m, message in enumerate(obj["prompt"]):
        problem = _check(message, _MESSAGE, f"{where}: prompt[{m}]")
        if problem:
            return problem
    for b, block in enumerate(obj["code_blocks"]):
        problem = _check(block, _BLOCK, f"{where}: code_blocks[{b}]") or _check(
            block["result"], _RESULT, f"{where}: code_blocks[{b}].result")
        if problem:
            return problem
        for c, call in enumerate(block["result"]["rlm_calls"]):
            problem = _check(call, _CALL, f"{where}: code_blocks[{b}].result.rlm_calls[{c}]")
            if problem:
                return problem
    return None


def main(argv: list[str] | None = None) -> int:
    import argparse

    class OneLine(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    parser = OneLine(
        prog="python -m rollouts.logs", description="check trajectory logs against what the RLM visualizer loads",
        epilog="exit status: 0 every file is valid; 1 some file is not (one line per file on stderr: PATH:LINE: "
               "reason); 2 bad input (a path that does not exist, or no .jsonl file to check)")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("validate", help="check files (or every .jsonl under folders) against the RLM format",
                           epilog=parser.epilog)
    check.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    args = parser.parse_args(argv)
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        parser.exit(2, f"python -m rollouts.logs validate: no such file or folder: {missing[0]}\n")
    files = sorted({f for p in args.paths for f in ([p] if p.is_file() else p.rglob("*.jsonl"))})
    if not files:
        parser.exit(2, f"python -m rollouts.logs validate: no .jsonl file under {', '.join(map(str, args.paths))}\n")
    bad = 0
    for path in files:
        try:
            problem = validate_file(path)
        except OSError as exc:
            problem = f"0: unreadable ({exc.strerror or exc})"
        if problem:
            bad += 1
            print(f"{path}:{problem}", file=sys.stderr)
    print(f"{len(files) - bad} of {len(files)} file(s) valid")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
