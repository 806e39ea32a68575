"""A stand-in for ART's `art.megatron.model_support` where ART's megatron extra is absent.

ART 0.5.18's `LocalBackend._get_service` (and TinkerBackend's) calls `art.dev.get_model_config`, which imports
`art.megatron.model_support` for one thing, the default LoRA target list, and that package imports
`megatron.core`, which `openpipe-art[backend]` (our gpu extra) does not install: the first `register` would end in
`No module named 'megatron'`. Its own module, because both the GPU config (backends/local_config.py) and ART's
remote engines (backends/remote.py) need it, and those two import each other's neighbours otherwise.
"""

from __future__ import annotations

import importlib.util
import sys
import types

MODEL_SUPPORT = "art.megatron.model_support"
# ART's dense default (q/k/v/o and the MLP projections), what model_support gives a dense model.
DENSE_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _megatron_installed() -> bool:
    try:
        return importlib.util.find_spec("megatron.core") is not None
    except ModuleNotFoundError:
        return False


def _dense_target_modules(base_model: str, *, allow_unvalidated_arch: bool = False) -> list[str]:
    return list(DENSE_TARGET_MODULES)


def ensure_model_config_importable() -> bool:
    """Let ART's LocalBackend build its service without ART's megatron extra; True when the stand-in was installed.

    ART 0.5.18's `LocalBackend._get_service` (and TinkerBackend's) calls `art.dev.get_model_config`, which imports
    `art.megatron.model_support` for one thing, the default LoRA target list, and that package imports
    `megatron.core`, which `openpipe-art[backend]` (our gpu extra) does not install: the first `register` would
    end in `No module named 'megatron'`. Where megatron is absent, that module is stood in for by one giving ART's
    dense default; with megatron installed, ART's own registry is used. Our flags set the targets where they name
    them (`peft_args.target_modules`), so the stand-in decides them only for "all-linear".
    """
    if MODEL_SUPPORT in sys.modules or _megatron_installed():
        return False
    module = types.ModuleType(MODEL_SUPPORT, ensure_model_config_importable.__doc__)
    module.default_target_modules_for_model = _dense_target_modules  # type: ignore[attr-defined]
    sys.modules[MODEL_SUPPORT] = module
    return True
