"""ART backend selection: `LocalBackend` (unsloth + vLLM) on a CUDA GPU, our `CPUBackend` everywhere else, and ART's
engines beyond one machine by flag (`backends.remote`: ServerlessBackend, TinkerBackend, MegatronBackend)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from backends.remote import REMOTE_KINDS, RemoteSettings, requirements_problem, train_keywords

BACKEND_KINDS = ("auto", "local", "cpu", *REMOTE_KINDS)

__all__ = ["BACKEND_KINDS", "BackendChoice", "BackendUnavailable", "RemoteSettings", "choose_backend",
           "create_backend", "train_keywords"]


class BackendUnavailable(RuntimeError):
    """The asked-for backend cannot run on this machine; the message says why and what to use instead."""


@dataclass(frozen=True)
class BackendChoice:
    kind: str  # "local", "cpu", or one of REMOTE_KINDS
    reason: str


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _gpu_extra_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("unsloth", "vllm"))


def choose_backend(requested: str) -> BackendChoice:
    if requested == "cpu":
        return BackendChoice("cpu", "asked for with --backend cpu")
    if requested in REMOTE_KINDS:
        if problem := requirements_problem(requested):
            raise BackendUnavailable(problem)
        return BackendChoice(requested, f"asked for with --backend {requested}")
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


def create_backend(choice: BackendChoice, art_path: str, cpu_settings: Any = None,
                   remote_settings: RemoteSettings | None = None) -> Any:
    if choice.kind in REMOTE_KINDS:
        from backends.remote import create

        return create(choice.kind, art_path, remote_settings)
    if choice.kind == "local":
        from art.local import LocalBackend

        return LocalBackend(path=art_path)
    from backends.cpu import CPUBackend

    return CPUBackend(path=art_path, settings=cpu_settings)
