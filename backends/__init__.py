"""ART backend selection: `LocalBackend` (unsloth + vLLM) on a CUDA GPU, our `CPUBackend` everywhere else."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


class BackendUnavailable(RuntimeError):
    """The asked-for backend cannot run on this machine; the message says why and what to use instead."""


@dataclass(frozen=True)
class BackendChoice:
    kind: str  # "local" or "cpu"
    reason: str


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _gpu_extra_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("unsloth", "vllm"))


def choose_backend(requested: str) -> BackendChoice:
    if requested == "cpu":
        return BackendChoice("cpu", "asked for with --backend cpu")
    cuda, extra = _cuda_available(), _gpu_extra_installed()
    if requested == "local":
        if not cuda:
            raise BackendUnavailable(
                "--backend local needs a CUDA GPU, and torch sees none here; use --backend cpu (or auto)"
            )
        if not extra:
            raise BackendUnavailable(
                "--backend local needs the gpu extra (unsloth, vLLM): run `uv sync --extra gpu` first"
            )
        return BackendChoice("local", "asked for with --backend local")
    if cuda and extra:
        return BackendChoice("local", "CUDA is available and the gpu extra (unsloth, vLLM) is installed")
    missing = "no CUDA GPU" if not cuda else "the gpu extra (unsloth, vLLM) is not installed"
    return BackendChoice("cpu", f"{missing}, so the CPU backend (transformers + peft) is used")


def create_backend(choice: BackendChoice, art_path: str, cpu_settings=None):
    if choice.kind == "local":
        from art.local import LocalBackend

        return LocalBackend(path=art_path)
    from backends.cpu import CPUBackend

    return CPUBackend(path=art_path, settings=cpu_settings)
