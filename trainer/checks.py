"""Checks for every flag that names a path, run by `ExperimentConfig.validate()` before any work starts.

A path of the wrong kind (a file where a folder is needed), a missing or unreadable one, a place that cannot be
written, text that is not UTF-8, or a file of the wrong format for the chosen env used to surface minutes later as
a traceback from deep inside a loader. Each check here returns one line that names the flag and the problem, or
None. They only look (stat, open for reading, a probe folder made and removed at once), so a refused run leaves no
trace.
"""

from __future__ import annotations

import codecs
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # trainer.config imports this module
    from trainer.config import ExperimentConfig

# What `--dataset` may be for the envs that read one (suffix -> format); other envs' datasets get the generic checks.
DATASET_SUFFIXES: dict[str, tuple[str, ...]] = {"gmsh": (".parquet",), "r2e": (".jsonl", ".parquet")}
PARQUET_MAGIC = b"PAR1"
LOCK_FILE = ".run.lock"  # in the model's folder: held by the run that trains it (trainer.resume.ExperimentLock)
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def _error(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def readable_file(flag: str, path: str) -> str | None:
    """An existing regular file that this process can open and read."""
    p = Path(path)
    if not p.exists():
        return f"{flag} {path}: no such file"
    if p.is_dir():
        return f"{flag} {path}: is a directory, not a file"
    if not p.is_file():
        return f"{flag} {path}: not a regular file"
    try:
        with open(p, "rb") as f:
            f.read(1)
    except OSError as exc:
        return f"{flag} {path}: cannot be read ({_error(exc)})"
    return None


def utf8_text(flag: str, path: str) -> str | None:
    """The whole file decodes as UTF-8 (read in chunks: a large dataset is checked without holding it)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:  # exc.object: the bytes held back from the last chunk + this one
                    at = offset + exc.start - (len(exc.object) - len(chunk))
                    return f"{flag} {path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {at})"
                offset += len(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return f"{flag} {path}: not UTF-8 text (it ends inside a character)"
    except OSError as exc:
        return f"{flag} {path}: cannot be read ({_error(exc)})"
    return None


def jsonl_file(flag: str, path: str) -> str | None:
    """UTF-8, and its first non-blank line is a JSON object (the loaders name bad rows further down themselves)."""
    if (problem := utf8_text(flag, path)) is not None:
        return problem
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    return f"{flag} {path}: line {number} is not JSON ({exc.msg}); expected JSON Lines"
                return None if isinstance(row, dict) else f"{flag} {path}: line {number} is not a JSON object"
    return f"{flag} {path}: empty (no rows)"


def parquet_file(flag: str, path: str) -> str | None:
    """Starts and ends with parquet's magic bytes: a text file or a cut download named .parquet is caught here."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(0, os.SEEK_END)
            if f.tell() >= 8:
                f.seek(-4, os.SEEK_END)
            tail = f.read(4)
    except OSError as exc:
        return f"{flag} {path}: cannot be read ({_error(exc)})"
    if head != PARQUET_MAGIC or tail != PARQUET_MAGIC:
        return f"{flag} {path}: not a parquet file"
    return None


def data_file(flag: str, path: str, suffixes: tuple[str, ...]) -> str | None:
    """A readable file with one of `suffixes`, whose content matches its suffix."""
    if (problem := readable_file(flag, path)) is not None:
        return problem
    suffix = Path(path).suffix
    if suffix not in suffixes:
        return f"{flag} {path}: must be a {' or '.join(suffixes)} file"
    return parquet_file(flag, path) if suffix == ".parquet" else jsonl_file(flag, path)


def json_file(flag: str, path: Path) -> str | None:
    """A readable UTF-8 file holding one JSON object (a model's config.json, an adapter's adapter_config.json)."""
    if (problem := readable_file(flag, str(path)) or utf8_text(flag, str(path))) is not None:
        return problem
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return f"{flag} {path}: not JSON ({exc.msg})"
    return None if isinstance(data, dict) else f"{flag} {path}: not a JSON object"


def readable_dir(flag: str, path: str, holds: str | None = None, what: str = "",
                 weights: tuple[str, ...] = ()) -> str | None:
    """An existing folder this process can list; `holds` names a JSON file it must contain (checked too), and
    `weights` the files of which at least one must be there (a config without weights fails only when loaded)."""
    p = Path(path)
    if not p.exists():
        return f"{flag} {path}: no such directory"
    if not p.is_dir():
        return f"{flag} {path}: is a file, not a directory"
    if not os.access(p, os.R_OK | os.X_OK):
        return f"{flag} {path}: cannot be read (permission denied)"
    if holds is not None:
        if not (p / holds).exists():
            return f"{flag} {path}: not {what} (no {holds})"
        if (problem := json_file(flag, p / holds)) is not None:
            return problem
    if weights and not any((p / name).is_file() for name in weights):
        return f"{flag} {path}: not {what} (no weights: {' or '.join(weights)})"
    return None


def writable_dir(flag: str, path: str) -> str | None:
    """A folder the run may create and write in: it exists and is writable, or its nearest existing parent is a
    writable folder (so `mkdir -p` will work). Only a probe folder is made there and removed at once."""
    p = Path(path).absolute()
    if p.exists() and not p.is_dir():
        return f"{flag} {path}: is a file, not a directory"
    existing = p
    while not existing.exists():
        if existing.is_symlink():
            return f"{flag} {path}: {existing} is a dangling symlink"
        existing = existing.parent
    if not existing.is_dir():
        return f"{flag} {path}: cannot be created ({existing} is a file, not a directory)"
    try:  # a real try, not os.access: root passes every mode check, yet not a read-only or special file system
        os.rmdir(tempfile.mkdtemp(prefix=".art-write-probe-", dir=existing))
    except OSError as exc:
        where = "" if existing == p else f" ({existing} cannot be written)"
        return f"{flag} {path}: not writable: {_error(exc)}{where}"
    return None


def _run_envs(c: ExperimentConfig) -> set[str]:
    """The envs a run loads: its own, or each env of its mix (the mix is checked before any path is)."""
    if c.mix is None:
        return {c.env}
    from envs.mix.mix import parse_mix

    return set(parse_mix(c.mix))


def path_problems(c: ExperimentConfig) -> list[str]:
    """Every path flag of `config` (an ExperimentConfig) checked; the first problem is what the user sees."""
    found: list[str | None] = [
        writable_dir("--art-path", c.art_path),
        writable_dir("--log-dir", c.log_dir),
        writable_dir("--rollout-root", c.rollout_root),
    ]
    if c.dataset is not None:
        found.append(data_file("--dataset", c.dataset, DATASET_SUFFIXES[c.env]) if c.env in DATASET_SUFFIXES
                     else readable_file("--dataset", c.dataset))
    if c.cache_dir is not None:
        envs = _run_envs(c)
        if "r2e" in envs:  # a built repo cache: read as it is, never written by the trainer
            found.append(readable_dir("--cache-dir", c.cache_dir, "index.json", "an r2e repo cache"))
        if envs != {"r2e"}:  # gmsh writes its generated task store there (in a mix with r2e too: the same folder)
            found.append(writable_dir("--cache-dir", c.cache_dir))
    for path in c.sft_data:
        found.append(data_file("--sft-data", path, (".jsonl", ".parquet")))
    if c.init_adapter is not None:
        found.append(readable_dir("--init-adapter", c.init_adapter, "adapter_config.json",
                                  "a PEFT adapter directory", ADAPTER_WEIGHTS))
    return [p for p in found if p is not None]


def base_model_problem(base_model: str, named: tuple[str, ...]) -> str | None:
    """`--base-model` is a named embedded model or a local Hugging Face model folder (nothing is downloaded)."""
    if base_model in named:
        return None
    hint = f" (nothing is downloaded at run time; pass a Hugging Face model folder, or one of: {', '.join(named)})"
    p = Path(base_model)
    if not p.exists():
        return f"--base-model {base_model!r} is not a local model directory{hint}"
    problem = readable_dir("--base-model", base_model, "config.json", "a Hugging Face model folder", MODEL_WEIGHTS)
    return None if problem is None else problem + (hint if "no config.json" in problem else "")


def checkpoint_problem(c: ExperimentConfig) -> str | None:
    """`--checkpoint N` (with --eval-only) names a saved step of this experiment."""
    if c.checkpoint is None:
        return None
    folder = (Path(c.art_path) / c.project / "models" / str(c.model_name)
              / "checkpoints" / f"{c.checkpoint:04d}")
    if not folder.is_dir():
        return f"--checkpoint {c.checkpoint}: no checkpoint at {folder}"
    return readable_dir("--checkpoint", str(folder))


def busy_message(experiment: str, holder: str, lock: Path) -> str:
    return (f"--experiment-name {experiment}: another run (pid {holder}) is training this experiment ({lock} is "
            "locked); wait for it to end, or choose another --experiment-name")


def experiment_busy(c: ExperimentConfig) -> str | None:
    """A live run holds this experiment's lock: said here, before the trainer's heavy imports, so a second run
    stops at once. Only looks (no file is created); the run takes the lock itself later (`ExperimentLock`)."""
    lock = Path(c.art_path) / c.project / "models" / str(c.model_name) / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return busy_message(c.experiment_name, os.read(fd, 64).decode(errors="replace").strip() or "unknown", lock)
    finally:
        os.close(fd)
