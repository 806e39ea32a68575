"""ART's engines beyond one machine, by flag: `ServerlessBackend` (W&B Serverless RL), `TinkerBackend` (Thinking
Machines' Tinker) and `MegatronBackend` (multi-GPU Megatron training + vLLM serving on this host).

Nothing here is a cluster of our own: each kind is ART's own class, built with ART's own arguments. What this module
adds is what a run needs before and around it:
- `requirements_problem`: the keys, extras and hardware each engine needs, as one line saying what to set or install,
  checked with the other start-up checks (trainer/config.py), so a run that cannot reach its engine touches nothing.
- `run_problem`: flags an engine cannot honour (SFT on Tinker, a KL term on Serverless, local checkpoint pruning where
  checkpoints live remotely), refused up front instead of failing at the first step.
- `train_keywords`: our loop speaks `LocalBackend.train()`'s keywords; Serverless spells `loss_fn` as `ppo`.
- `roll_back_remote_steps`: the resume contract (state.json is the commit point) where checkpoints live on the engine.

API keys are read by ART from the environment (WANDB_API_KEY, TINKER_API_KEY) and never pass through our config, its
hash or our logs. `TinkerBackend(tinker_api_key=...)` would print the key, so it is never passed.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import inspect
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REMOTE_KINDS = ("serverless", "tinker", "megatron")
# Engines that host the base model themselves: it must be a name they know, never a folder on this machine.
HOSTED_KINDS = ("serverless", "tinker")
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
EXAMPLE_MODEL = {"serverless": "OpenPipe/Qwen3-14B-Instruct", "tinker": "Qwen/Qwen3-8B",
                 "megatron": "Qwen/Qwen3-30B-A3B-Instruct-2507"}
API_KEY_ENV = {"serverless": "WANDB_API_KEY", "tinker": "TINKER_API_KEY"}
KEY_HINT = {"serverless": " (a W&B API key: https://wandb.ai/authorize)"}
EXTRA_MODULES = {"tinker": ("tinker", "tinker_cookbook"),
                 "megatron": ("megatron.core", "megatron.bridge", "transformer_engine")}
EXTRA_NAME = {"tinker": "tinker", "megatron": "backend,megatron"}


@dataclass(frozen=True)
class RemoteSettings:
    """The non-secret settings of the remote engines (flags); keys stay in the environment."""

    serverless_url: str | None = None  # None: ART's default, https://api.training.wandb.ai/v1


def _missing_modules(names: tuple[str, ...]) -> list[str]:
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # the parent package is absent
            found = False
        if not found:
            missing.append(name)
    return missing


def _art_version() -> str:
    try:
        return importlib.metadata.version("openpipe-art")
    except importlib.metadata.PackageNotFoundError:
        return "0.5.18"


def requirements_problem(kind: str) -> str | None:
    """What this machine lacks to run `kind` (keys, ART's extra, GPUs), as one line; None when all is there."""
    if kind not in REMOTE_KINDS:
        return None
    needs = []
    key = API_KEY_ENV.get(kind)
    if key and not os.environ.get(key):
        needs.append(f"{key} in the environment" + KEY_HINT.get(kind, ""))
    missing = _missing_modules(EXTRA_MODULES.get(kind, ()))
    if missing:
        install = f"uv pip install 'openpipe-art[{EXTRA_NAME[kind]}]=={_art_version()}'"
        if kind == "megatron":
            install += " (then ART's art/megatron/setup.sh for its CUDA build tools)"
        needs.append(f"ART's {kind} extra (missing: {', '.join(missing)}): run `{install}`")
    if needs:
        return f"--backend {kind} needs " + " and ".join(needs)
    if kind == "megatron":
        import torch

        if not torch.cuda.is_available():
            return "--backend megatron needs CUDA GPUs, and torch sees none here; use --backend cpu (or auto)"
    return None


def _tokenizer_cached(repo: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "tokenizer_config.json"), str)


def base_model_problem(kind: str, base_model: str, named: tuple[str, ...]) -> str | None:
    """Hosted engines train a model they host: a hub name. Megatron also takes a local folder or a named model."""
    local = base_model in named or Path(base_model).exists()
    if kind in HOSTED_KINDS and local:
        return (f"--base-model {base_model!r}: --backend {kind} trains a model the engine hosts; give its hub name, "
                f"e.g. --base-model {EXAMPLE_MODEL[kind]} (a local or embedded model stays on this machine)")
    if local:
        return None
    if not HUB_NAME.fullmatch(base_model):
        return f"--base-model {base_model!r} is neither a local model folder nor a hub name like {EXAMPLE_MODEL[kind]}"
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline and not _tokenizer_cached(base_model):
        return (f"--base-model {base_model}: its tokenizer (for context budgets and ART's tokenisation) is not in the "
                "Hugging Face cache and HF_HUB_OFFLINE is on (train.py's default): run with HF_HUB_OFFLINE=0")
    return None


@dataclass(frozen=True)
class RunNeeds:
    """What a run asks of its engine beyond RL steps (from the experiment config)."""

    sft: bool = False
    keep_checkpoints: int = 0
    kl_penalty_coef: float = 0.0
    init_adapter: str | None = None
    checkpoint: int | None = None
    vllm_url: str | None = None


def run_problem(kind: str, needs: RunNeeds) -> str | None:
    """Flags the engine cannot honour, refused before any work (one line naming the flag). `local` (ART's
    LocalBackend) is checked too: --init-adapter and --checkpoint are CPU-backend features, and `local` would start
    vLLM (minutes) before finding out."""
    if kind not in (*REMOTE_KINDS, "local"):
        return None
    if kind == "tinker" and needs.sft:
        return ("--backend tinker cannot run the SFT stage (ART's TinkerService has no train_sft): give no "
                "--sft-data and --sft-demos off")
    if kind == "serverless" and needs.kl_penalty_coef:
        return "--kl-penalty-coef: ServerlessBackend.train() takes no KL term; leave it at 0 with --backend serverless"
    if kind == "serverless" and needs.keep_checkpoints:
        return ("--keep-checkpoints: with --backend serverless checkpoints are W&B artifacts, not local folders; prune "
                "them in W&B")
    if needs.init_adapter:
        return f"--init-adapter: warm-starting from a local adapter is for the CPU backend, not --backend {kind}"
    if needs.checkpoint is not None:
        return f"--checkpoint: evaluating an older checkpoint is for the CPU backend only, not --backend {kind}"
    if needs.vllm_url is not None:  # ART's engines serve each new adapter themselves; an outside server would not
        return (f"--vllm-url: --backend {kind} serves rollouts from its own engine (it loads each new adapter); "
                "an external server is for --backend cpu only")
    return None


def create(kind: str, art_path: str, settings: RemoteSettings | None = None) -> Any:
    """ART's own class for `kind`, built the way ART's docs build it (keys come from the environment)."""
    settings = settings or RemoteSettings()
    if kind == "serverless":
        from art.serverless import ServerlessBackend

        return ServerlessBackend(base_url=settings.serverless_url)
    if kind == "tinker":
        from art.tinker import TinkerBackend

        from backends.megatron_standin import ensure_model_config_importable

        ensure_model_config_importable()  # TinkerBackend builds its service through ART's get_model_config too

        return TinkerBackend(path=art_path)  # never tinker_api_key=...: ART prints it
    if kind == "megatron":
        from backends.megatron_standin import ensure_model_config_importable

        ensure_model_config_importable()  # a no-op where the megatron extra is installed, as Megatron needs
        return _packed_megatron_class()(path=art_path)
    raise ValueError(f"not a remote backend kind: {kind!r}")


def packed_sequence_length(model: Any) -> int:
    """The packed row length Megatron trains on: the model's own `max_seq_length` (backends/local_config.py sets it
    from --max-context-tokens and the model's positions), ART's 32768 where a model has no internal config."""
    init_args = (getattr(model, "_internal_config", None) or {}).get("init_args") or {}
    return int(init_args.get("max_seq_length") or 32768)


@functools.cache
def _packed_megatron_class() -> type:
    """ART's `MegatronBackend`, which refuses `train()` without `packed_sequence_length` (art/local/backend.py) where
    LocalBackend picks one: this subclass passes the model's own length unless the caller gives one. Everything
    else, and `train()`'s signature as `train_keywords` reads it, is ART's."""
    from art.megatron import MegatronBackend

    class PackedMegatronBackend(MegatronBackend):
        @functools.wraps(MegatronBackend.train)
        async def train(self, model: Any, trajectory_groups: Any, **kwargs: Any) -> Any:
            if kwargs.get("packed_sequence_length") is None:
                kwargs["packed_sequence_length"] = packed_sequence_length(model)
            return await super().train(model, trajectory_groups, **kwargs)

    return PackedMegatronBackend


def train_keywords(backend: Any, **wanted: Any) -> dict[str, Any]:
    """Our loop's `LocalBackend.train()` keywords, as `backend.train()` takes them.

    ServerlessBackend has `ppo: bool` where LocalBackend has `loss_fn="cispo"|"ppo"` (ART maps one to the other).
    A keyword the backend does not take is refused unless it holds its neutral value: a silently dropped option
    would train something other than what was asked.
    """
    params = inspect.signature(backend.train).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return wanted
    out = dict(wanted)
    if "loss_fn" in out and "loss_fn" not in params and "ppo" in params:
        out["ppo"] = out.pop("loss_fn") == "ppo"
    neutral = {"kl_penalty_coef": 0.0, "advantage_balance": 0.0, "scale_rewards": True, "loss_fn": "cispo",
               "kl_penalty_reference_step": None}
    for key in [k for k in out if k not in params]:
        if key in neutral and out[key] == neutral[key]:
            del out[key]
        else:
            raise TypeError(f"{type(backend).__name__}.train() takes no {key!r} (asked for {out[key]!r})")
    return out


async def roll_back_remote_steps(backend: Any, model: Any, committed: int) -> list[int]:
    """Where checkpoints live on the engine (Serverless), a run killed between `train()` and the state.json commit
    left a step the engine has and the run never committed: delete it through ART's `_delete_checkpoint_files`, so
    the step is trained again and none is lost or counted twice. Returns the steps rolled back."""
    step = await backend._get_step(model)
    if step <= committed:
        return []
    await backend._delete_checkpoint_files(model, list(range(committed + 1)))
    after = await backend._get_step(model)
    if after != committed:
        raise RuntimeError(f"the engine still reports step {after} after rolling back to the committed step "
                           f"{committed}; delete the newer checkpoints there, or restore state.json")
    return list(range(committed + 1, step + 1))
