"""verl's task layout, in and out, the same way for every env.

verl (and verl-tool, which reads the same files) keeps an RL task set as `train.parquet` / `val.parquet`, one task
per row, with these columns (verl's data-preparation docs):

- `data_source`: the name of the data set; verl's reward manager picks the reward function by it.
- `prompt`: the chat messages the policy is shown, `[{"role": ..., "content": ...}, ...]`; verl applies the
  tokenizer's chat template to them.
- `ability`: the task's category (`math`, `game`...), free text.
- `reward_model`: `{"style": "rule", "ground_truth": ...}`: what the rule reward checks an answer against.
- `extra_info`: anything else about the task (`index`, `split` by verl's convention); verl passes it to the
  reward function untouched.

Our envs write `ground_truth` as a string (a structured one as JSON text) and put what rebuilds the task in
`extra_info` (always `env`, `task_id`, `index`, `split`). Reading, a file is this layout when it has a `prompt`
column and a `reward_model` or `data_source` column; every row is checked before any work and the first bad one
stops the load with one line naming the file, the row (0-based, as pandas counts) and the field. A key whose value
is null in `extra_info` counts as absent (parquet gives every row of a struct column every key). Read back, a task
is rebuilt from `extra_info` and the ground truth; a rollout then sends the env's own messages, so of `prompt` only
the last user message is used, as the task's text, where `extra_info` does not hold it.

As in verl, one file is one split: a loaded file's rows are its tasks, whole and in order (no mixing, no hold-out);
evaluation reads the file beside it named with `train` -> `val` (or `test`), else the same file (`val_file`).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollouts.scenario import DatasetError, Scenario

COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")
ROLES = ("system", "user", "assistant", "tool")
EVAL_NAMES = ("val", "test")  # what verl's own preprocessing names the evaluation file: train -> val / test


@dataclass(frozen=True)
class VerlRow:
    """One checked row; `fail(field, problem)` makes the one-line error for a field an env finds wrong."""

    source: str  # "--dataset FILE"
    index: int
    data_source: str
    prompt: list[dict[str, str]]
    ability: str
    ground_truth: Any
    style: str = "rule"
    extra_info: dict[str, Any] = field(default_factory=dict)

    def fail(self, name: str, problem: str) -> DatasetError:
        return DatasetError(f"{self.source}, row {self.index}: field '{name}' {problem}")

    def user_text(self) -> str:
        """The last user message: the task as the file's author phrased it for the policy."""
        return next(m["content"] for m in reversed(self.prompt) if m["role"] == "user")

    def text(self, key: str) -> str | None:
        """A non-empty string in `extra_info[key]`, None when absent; any other value is a bad field."""
        value = self.extra_info.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"extra_info.{key}", "must be a non-empty string")
        return value

    def task_id(self, prefix: str) -> str:
        """`extra_info.task_id`, else `extra_info.index` / the row number under `prefix` (a verl file of
        someone else's has no ids of ours)."""
        given = self.extra_info.get("task_id")
        if given is not None:
            return str(given)
        return f"{prefix}-{self.extra_info.get('index', self.index)}"


def row(data_source: str, prompt: list[dict[str, str]], ability: str, ground_truth: str,
        extra_info: dict[str, Any]) -> dict[str, Any]:
    """One task in verl's columns; `extra_info` should hold env, task_id, index and split."""
    return {"data_source": data_source, "prompt": [{"role": m["role"], "content": m["content"]} for m in prompt],
            "ability": ability, "reward_model": {"style": "rule", "ground_truth": ground_truth},
            "extra_info": extra_info}


def write(out: Path, rows: list[dict[str, Any]]) -> int:
    """The rows as one parquet file at `out`, whole or not at all (a temp file renamed into place); the same rows
    give the same bytes. Returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if out.suffix != ".parquet":
        raise DatasetError(f"--out {out}: must end with .parquet (verl reads parquet)")
    if not rows:
        raise DatasetError(f"--out {out}: no tasks to write (the split is empty with these flags)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return len(rows)


def _columns(path: Path) -> list[str] | None:
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except Exception:  # not parquet at all: the env's own reader says so in its words
        return None


def is_verl(path: str | Path | None) -> bool:
    """A .parquet file in verl's layout (decided by its columns alone; nothing else is read)."""
    if path is None or Path(path).suffix != ".parquet" or not Path(path).is_file():
        return False
    names = _columns(Path(path)) or []
    return "prompt" in names and ("reward_model" in names or "data_source" in names)


def val_file(path: Path) -> Path:
    """The evaluation file of a train file, as verl keeps them: `train` -> `val`, else -> `test`, in the file's
    name; the file itself when neither exists (or its name has no `train`)."""
    if "train" in path.name:
        for name in EVAL_NAMES:
            candidate = path.with_name(path.name.replace("train", name))
            if candidate.is_file():
                return candidate
    return path


def _messages(value: Any, where: Callable[[str, str], DatasetError]) -> list[dict[str, str]]:
    if isinstance(value, str):
        raise where("prompt", "is a string; verl's layout holds a list of {role, content} chat messages")
    if not isinstance(value, list) or not value:
        raise where("prompt", "must be a non-empty list of {role, content} chat messages")
    messages = []
    for number, message in enumerate(value):
        if not isinstance(message, dict):
            raise where(f"prompt[{number}]", "must be a {role, content} message")
        if message.get("role") not in ROLES:
            raise where(f"prompt[{number}].role", f"must be one of {', '.join(ROLES)}, got {message.get('role')!r}")
        if not isinstance(message.get("content"), str):
            raise where(f"prompt[{number}].content", "must be a string")
        messages.append({"role": message["role"], "content": message["content"]})
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise where("prompt", "holds no user message with text")
    return messages


def check_row(raw: Any, index: int, source: str) -> VerlRow:
    """One row of the file -> a VerlRow, or a DatasetError naming the row and its first bad field."""

    def where(name: str, problem: str) -> DatasetError:
        return DatasetError(f"{source}, row {index}: field '{name}' {problem}")

    data_source = raw.get("data_source")
    if not isinstance(data_source, str) or not data_source.strip():
        raise where("data_source", "must be a non-empty string")
    prompt = _messages(raw.get("prompt"), where)
    ability = raw.get("ability")
    if ability is not None and not isinstance(ability, str):
        raise where("ability", "must be a string")
    reward = raw.get("reward_model")
    if not isinstance(reward, dict):
        raise where("reward_model", "must be a struct with ground_truth (and style)")
    if reward.get("ground_truth") is None:
        raise where("reward_model.ground_truth", "is missing")
    style = reward.get("style") or "rule"
    if not isinstance(style, str):
        raise where("reward_model.style", "must be a string")
    extra = raw.get("extra_info")
    if extra is not None and not isinstance(extra, dict):
        raise where("extra_info", "must be a struct (key -> value)")
    extra = {k: v for k, v in (extra or {}).items() if v is not None}
    return VerlRow(source, index, data_source, prompt, ability or "", reward["ground_truth"], style, extra)


def read(path: Path, flag: str = "--dataset") -> list[VerlRow]:
    """Every row of a verl-layout file, checked; DatasetError (one line) at the first bad one."""
    import pyarrow.parquet as pq

    source = f"{flag} {path}"
    if not path.is_file():
        raise DatasetError(f"{source}: no such file")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # a text file named .parquet, a cut download
        raise DatasetError(f"{source}: not a readable parquet file ({exc.__class__.__name__})") from None
    missing = [c for c in ("data_source", "prompt", "reward_model") if c not in table.column_names]
    if missing:
        raise DatasetError(f"{source}: missing verl column(s) {', '.join(missing)} (verl's layout: "
                           f"{', '.join(COLUMNS)})")
    rows = [check_row(raw, index, source) for index, raw in enumerate(table.to_pylist())]
    if not rows:
        raise DatasetError(f"{source}: no rows")
    return rows


# ---- `python -m envs.<env> tasks`: the same command for every env ------------------------------------------------

ToRows = Callable[[list[tuple[Scenario, str]], Path, Any], list[dict[str, Any]]]


def add_tasks_command(sub: Any, options: type | None, only: tuple[str, ...] | None = None,
                      splits: tuple[str, ...] = ("train", "val"), default_split: str = "train",
                      cache_help: str | None = None) -> argparse.ArgumentParser:
    """The `tasks` subcommand: --out, --split, --seed, --dataset, --dataset-size (train.py's meanings) and the
    env's flags that shape its tasks (`only`: those fields; None: all), so with the same flags it writes exactly
    the tasks a run trains (or evaluates) on."""
    from envs.options import add_option_flags

    command = sub.add_parser("tasks", help="write the env's tasks in verl's parquet layout (train.py's flags and "
                                           "seed: the same tasks)")
    command.add_argument("--out", type=Path, required=True, help="the .parquet file to write")
    command.add_argument("--split", default=default_split, choices=splits,
                         help="train: the tasks a run trains on; val: those it evaluates on")
    command.add_argument("--seed", type=int, default=0, help="as train.py's --seed: the same tasks")
    command.add_argument("--dataset", default=None, metavar="FILE",
                         help="as train.py's --dataset: write that file's tasks (its own layout or verl's)")
    command.add_argument("--dataset-size", type=int, default=None, metavar="N", help="as train.py's --dataset-size")
    if cache_help:
        command.add_argument("--cache-dir", default=None, metavar="DIR", help=cache_help)
    names = tuple(f.name for f in dataclasses.fields(options) if only is None or f.name in only) if options else ()
    if names:
        add_option_flags(command.add_argument_group("env"), options, only=names)
    command.set_defaults(option_fields=names)
    return command


def task_config(env: str, args: argparse.Namespace, art_path: str) -> Any:
    """The run config `train.py --env ENV` would build from these flags (what the env's loaders read)."""
    from envs.options import build_options, check_options
    from envs.registry import load_spec

    cls = load_spec(env).options
    given = {name: getattr(args, name) for name in args.option_fields}  # not --split: r2e's hub split shares it
    options = build_options(cls, given) if cls is not None else None
    if options is not None:
        check_options(options)
    return LoaderSettings(env=env, dataset=args.dataset, dataset_size=args.dataset_size, seed=args.seed,
                          art_path=art_path, rollout_root=art_path, cache_dir=getattr(args, "cache_dir", None),
                          env_options=options)


@dataclasses.dataclass(frozen=True)
class LoaderSettings:
    """The part of a run's config that an env's task loaders read (train.py hands them the whole
    ExperimentConfig): enough for `tasks` to load exactly what a run would, without the trainer's config above."""

    env: str
    dataset: str | None
    dataset_size: int | None
    seed: int
    art_path: str
    rollout_root: str
    cache_dir: str | None
    env_options: Any
    max_concurrent: int = 1


def load_split(env: str, cfg: Any, split: str) -> list[tuple[Scenario, str]]:
    """The split's scenarios through the env's own loaders (`all`: train, then val), each with its split."""
    from envs.registry import load_spec

    spec = load_spec(env)
    parts = ("train", "val") if split == "all" else (split,)
    found: list[tuple[Scenario, str]] = []
    for part in parts:
        loader = spec.load_scenarios if part == "train" else spec.load_val
        if loader is None:
            raise DatasetError(f"--split {part}: {env} has no {part} tasks")
        found.extend((s, part) for s in loader(cfg))
    return found


def run_tasks(env: str, args: argparse.Namespace, to_rows: ToRows,
              load: Callable[[Any, str], list[tuple[Scenario, str]]] | None = None) -> int:
    """`tasks`: load the split as train.py would, write it; one `error:` line and exit 2 for bad input."""
    import sys

    if args.dataset_size is not None and args.dataset_size < 1:
        print("error: --dataset-size must be at least 1", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix=f"{env}-tasks-") as scratch:  # generated stores, sample caches
            cfg = task_config(env, args, scratch)
            items = (load or (lambda c, s: load_split(env, c, s)))(cfg, args.split)
            count = write(args.out, to_rows(items, args.out, cfg))
    except (DatasetError, ValueError) as exc:  # ValueError: EnvFlagError of a bad flag value
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the --out place: not writable, a file where a folder is needed
        print(f"error: --out {args.out}: {exc.strerror or exc} ({exc.filename or args.out})", file=sys.stderr)
        return 2
    print(f"wrote {count} {args.split} task(s) in verl's layout to {args.out}")
    return 0
