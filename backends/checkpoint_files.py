"""Whether a checkpoint folder holds a loadable adapter, checked from file headers before anything loads it."""

from __future__ import annotations

import json
import math
import struct
import zipfile
from pathlib import Path

ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
OPTIMIZER_FILE = "optimizer.pt"
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
                "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


class CheckpointError(RuntimeError):
    """A checkpoint folder cannot be loaded (a file missing, cut short or not what it claims to be)."""


def checkpoint_problem(directory: Path) -> str | None:
    """None when the checkpoint folder holds a loadable adapter, else what is wrong, in a few words.

    Checked before loading because the loaders fail with a traceback that names no file (safetensors:
    "Error while deserializing header") or, worse, a folder missing its adapter used to be refilled with fresh
    weights. Reads headers and sizes only: cheap enough to run on every checkpoint at every start."""
    if not directory.is_dir():
        return "no such folder"
    config = directory / ADAPTER_CONFIG
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{ADAPTER_CONFIG} is missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{ADAPTER_CONFIG} is not valid JSON ({exc.__class__.__name__})"
    if not isinstance(data, dict) or "peft_type" not in data:
        return f"{ADAPTER_CONFIG} is not a PEFT adapter config (no peft_type)"
    weights = directory / ADAPTER_FILE
    if not weights.exists():
        legacy = directory / "adapter_model.bin"
        if legacy.exists():
            return _zip_problem(legacy)
        return f"{ADAPTER_FILE} is missing"
    if (problem := safetensors_problem(weights)) is not None:
        return problem
    optimizer = directory / OPTIMIZER_FILE
    return _zip_problem(optimizer) if optimizer.exists() else None


def safetensors_problem(path: Path) -> str | None:
    """The safetensors layout checked by hand: an 8-byte header length, a JSON header, and tensors whose byte
    ranges match their dtype and shape and exactly fill the rest of the file (a cut file fails the last test)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is cut short ({size} bytes)"
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                return f"{path.name} is cut short (header of {length} bytes, file of {size})"
            header = json.loads(f.read(length).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{path.name}: unreadable header ({exc.__class__.__name__})"
    if not isinstance(header, dict):
        return f"{path.name}: header is not a JSON object"
    data_bytes, end_max = size - 8 - length, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in info["data_offsets"])
            count = math.prod(int(n) for n in info["shape"])
        except (KeyError, TypeError, ValueError):
            return f"{path.name}: malformed entry for tensor {name!r}"
        width = _DTYPE_BYTES.get(str(info.get("dtype")))
        if not 0 <= begin <= end or (width is not None and end - begin != count * width):
            return f"{path.name}: tensor {name!r} has inconsistent offsets"
        end_max = max(end_max, end)
    if end_max != data_bytes:
        return f"{path.name} is cut short or padded ({data_bytes} data bytes, tensors need {end_max})"
    return None


def _zip_problem(path: Path) -> str | None:
    """torch.save writes a zip archive: a cut one has no central directory, a damaged one fails its CRCs."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile) as exc:
        return f"{path.name} is damaged ({exc.__class__.__name__})"
    return f"{path.name} is damaged (bad CRC in {bad})" if bad else None
