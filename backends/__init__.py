"""ART backend selection: `LocalBackend` (unsloth + vLLM) on a CUDA GPU, our `CPUBackend` everywhere else, and ART's
engines beyond one machine by flag (`backends.remote`: ServerlessBackend, TinkerBackend, MegatronBackend)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import entry_point  # noqa: F401 - first: keeps ART's import of LiteLLM off the network (entry_point.py)
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


# What `--extra gpu` (openpipe-art[backend]) brings that ART's LocalBackend imports when it builds its service
# (art/unsloth/service.py, art/unsloth/train.py), module -> distribution. Not vLLM: ART 0.5.18 runs vLLM out of
# process from a runtime it installs itself at the first `register` (art/vllm_runtime.py).
GPU_EXTRA_MODULES = {"unsloth": "unsloth", "unsloth_zoo": "unsloth-zoo", "trl": "trl", "peft": "peft"}
GPU_EXTRA = "the gpu extra (openpipe-art[backend]: unsloth, trl, peft; ART installs its own vLLM runtime)"


def _missing_gpu_modules() -> list[str]:
    return [name for name in GPU_EXTRA_MODULES if importlib.util.find_spec(name) is None]


def _gpu_extra_installed() -> bool:
    return not _missing_gpu_modules()


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
                f"--backend local needs {GPU_EXTRA} (missing: {', '.join(_missing_gpu_modules())}): "
                "run `uv sync --extra gpu` first"
            )
        return BackendChoice("local", "asked for with --backend local")
    if cuda and extra:
        return BackendChoice("local", "CUDA is available and the gpu extra is installed")
    missing = "no CUDA GPU" if not cuda else f"{GPU_EXTRA} is not installed (`uv sync --extra gpu`)"
    return BackendChoice("cpu", f"{missing}, so the CPU backend (transformers + peft) is used")


def create_backend(choice: BackendChoice, art_path: str, cpu_settings: Any = None,
                   remote_settings: RemoteSettings | None = None) -> Any:
    if choice.kind in REMOTE_KINDS:
        from backends.remote import create

        return create(choice.kind, art_path, remote_settings)
    if choice.kind == "local":
        from art.local import LocalBackend

        from backends.megatron_standin import ensure_model_config_importable

        ensure_model_config_importable()
        return LocalBackend(path=art_path)
    from backends.cpu import CPUBackend

    return CPUBackend(path=art_path, settings=cpu_settings)
