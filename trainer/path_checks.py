"""Whether a path a flag names is usable, by looking only (stat, open for reading, a probe folder made and removed at
once), so a refused run leaves no trace: each check returns one line naming the flag, or None. A path of the wrong
kind, a missing or unreadable one, a place that cannot be written, text that is not UTF-8, or a file of the wrong
format used to surface minutes later as a traceback from deep inside a loader. trainer/checks.py decides which flags
need which check."""

from __future__ import annotations

import codecs
import json
import os
import tempfile
from pathlib import Path

PARQUET_MAGIC = b"PAR1"


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
