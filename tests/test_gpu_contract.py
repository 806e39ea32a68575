"""The GPU path (`--backend local`, `--backend megatron`) held to ART 0.5.18's own code, on CPU.

Everything here runs ART's real `LocalBackend` / `MegatronBackend`, `TrainableModel.register`, `train()`,
`train_sft()`, `_delete_checkpoint_files`, the provenance step and model naming. The one thing replaced is the GPU
process ART starts behind the backend: the class `_get_service` builds (art.unsloth.service.UnslothService,
art.megatron.service.MegatronService) becomes `RecordingService`, and `move_to_child_process` keeps it in this
process. What ART hands that class (its init, engine, peft and trainer args; the packed tensors' dev config) is what
unsloth and vLLM would get, so that is what is asserted. The recorder serves an OpenAI endpoint that answers only to
the names ART's vLLM runtime serves (`<name>@<step>`, art_vllm_runtime/dedicated_server.py) and 404s the rest, and
refuses (400) a prompt plus `max_tokens` over the engine's `max_model_len`, as vLLM does.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import itertools
import json
import os
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.fake_openai_server import completion_body

REPLIES = itertools.cycle(["aaaa", "bbbb", "abab", "aabb"])  # toy rewards that differ within a group


class RecordingService:
    """Stands where unsloth + vLLM run: records what ART passes, writes checkpoints where ART's service writes them,
    and serves the names ART's runtime serves."""

    instances: list[RecordingService] = []

    def __init__(self, model_name: str, base_model: str, config: dict[str, Any], output_dir: str, **_: Any):
        from backends.openai_server import ServerThread

        self.model_name, self.base_model, self.config, self.output_dir = model_name, base_model, config, output_dir
        self.served: set[str] = set()
        self.requests: list[tuple[str, bool]] = []  # (model asked for, served at that moment)
        self.lengths: list[tuple[int, int]] = []  # (prompt tokens, max_tokens) of each request
        self.trains: list[dict[str, Any]] = []
        self.sft_batches: list[Any] = []
        self.server = ServerThread(self._app())
        RecordingService.instances.append(self)

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            body = await request.json()
            served = body["model"] in self.served
            self.requests.append((body["model"], served))
            if not served:  # as vLLM answers a name it does not serve
                return JSONResponse({"error": {"message": f"The model `{body['model']}` does not exist."}}, 404)
            prompt, wanted = self._prompt_tokens(body["messages"]), body.get("max_tokens") or 0
            self.lengths.append((prompt, wanted))
            limit = self.config.get("engine_args", {}).get("max_model_len")
            if limit is not None and prompt + wanted > limit:
                return JSONResponse({"error": {"message": "This model's maximum context length is exceeded"}}, 400)
            return completion_body(body["model"], next(REPLIES))

        return app

    def _prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        from transformers import AutoTokenizer

        from backends.token_check import sampler_prompt

        return len(sampler_prompt(AutoTokenizer.from_pretrained(self.base_model), messages))

    def _save(self, step: int) -> None:
        from art.utils.output_dirs import get_step_checkpoint_dir

        folder = Path(get_step_checkpoint_dir(self.output_dir, step))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "adapter_config.json").write_text(json.dumps({"r": self.config["peft_args"]["r"]}))
        self.served.add(f"{self.model_name}@{step}")  # the runtime loads the new adapter under this name

    def _next_step(self) -> int:
        from art.utils.get_model_step import get_step_from_dir

        return get_step_from_dir(self.output_dir) + 1

    async def start_openai_server(self, config: dict[str, Any] | None) -> tuple[str, int]:
        from art.utils.get_model_step import get_step_from_dir

        self.server_config = config
        step = get_step_from_dir(self.output_dir)
        self._save(step)  # --served-model-name=<name>@<step>: the base weights, and the adapter of that step
        self.server.start()
        host, port = self.server.base_url.removeprefix("http://").removesuffix("/v1").split(":")
        return host, int(port)

    async def vllm_engine_is_sleeping(self) -> bool:
        return False

    async def train(self, disk_packed_tensors: Any, config: Any, _config: dict[str, Any], verbose: bool = False):
        self.trains.append({"config": config, "dev_config": dict(_config), "tensors": disk_packed_tensors})
        yield {"loss/train": 0.25, "loss/grad_norm": 1.0}
        self._save(self._next_step())

    async def train_sft(self, batches: list[Any], config: Any, verbose: bool = False):
        self.sft_batches.extend(batches)
        for _ in batches:
            yield {"loss/train": 0.5, "loss/learning_rate": 1e-5, "loss/grad_norm": 1.0}
        self._save(self._next_step())

    async def register_lora_for_step(self, step: int, checkpoint_dir: str) -> None:
        self.served.add(f"{self.model_name}@{step}")

    def close(self) -> None:
        self.server.stop()


@pytest.fixture
def gpu_side(monkeypatch) -> type[RecordingService]:
    """ART's GPU services, replaced by the recorder for this test only (nothing else of ART is touched)."""
    RecordingService.instances = []
    for name, cls in (("art.unsloth.service", "UnslothService"), ("art.megatron.service", "MegatronService")):
        module = types.ModuleType(name)
        setattr(module, cls, RecordingService)
        monkeypatch.setitem(sys.modules, name, module)
    import art.local.backend
    import art.megatron.runtime.backend

    for where in (art.local.backend, art.megatron.runtime.backend):
        monkeypatch.setattr(where, "move_to_child_process", lambda service, **_: service)
    for name in ("art.megatron.model_support", "art.dev.get_model_config"):  # our stand-in stays in this test
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setenv("IMPORT_UNSLOTH", "")  # ART sets it when it builds the service; restored after the test
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    yield RecordingService
    for service in RecordingService.instances:
        service.close()


@pytest.fixture
def no_wandb_key(monkeypatch):
    """A new user's machine: no W&B key, no WANDB_MODE (conftest disables W&B for every other test)."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)


def art_backend_extra_modules() -> set[str]:
    """The top-level modules of what `openpipe-art[backend]` (our gpu extra) installs, from ART's own metadata."""
    names = set()
    for requirement in importlib.metadata.requires("openpipe-art") or []:
        if "extra == 'backend'" in requirement:
            names.add(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].replace("-", "_").lower())
    return names


def fake_gpu_machine(monkeypatch) -> None:
    """CUDA and the gpu extra, faked at their probes only: our CUDA probe says yes (ART's own torch.cuda calls still
    see this machine), and the modules of ART's backend extra are found."""
    extra, real = art_backend_extra_modules(), importlib.util.find_spec
    monkeypatch.setattr("backends._cuda_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: (
        importlib.machinery.ModuleSpec(name, None) if name.split(".")[0] in extra else real(name, package)))


# ---- defect 1: the gpu extra is what ART's backend extra brings -------------------------------------------------


def test_auto_picks_local_on_a_machine_with_cuda_and_the_gpu_extra(monkeypatch):
    from backends import choose_backend

    fake_gpu_machine(monkeypatch)
    assert "vllm" not in art_backend_extra_modules()  # ART 0.5.18 installs vLLM in its own runtime
    assert choose_backend("auto").kind == "local"
    assert choose_backend("local").kind == "local"


def test_local_without_the_extra_says_so_in_one_line(monkeypatch):
    import torch

    from backends import GPU_EXTRA_MODULES, BackendUnavailable, choose_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, package=None: None if name == "unsloth" else real(name, package))
    with pytest.raises(BackendUnavailable) as error:
        choose_backend("local")
    assert "\n" not in str(error.value) and "missing: unsloth" in str(error.value)
    assert "uv sync --extra gpu" in str(error.value)
    assert choose_backend("auto").kind == "cpu"
    assert set(GPU_EXTRA_MODULES) <= art_backend_extra_modules() | {"unsloth_zoo"}


# ---- defects 2, 5, 6 and naming: our trainer through ART's real LocalBackend --------------------------------


def local_run_config(tmp_path: Path, *flags: str, backend: str = "local") -> Any:
    from trainer.cli import config_from_args

    return config_from_args(["--experiment-name", "gpu", "--env", "toy", "--backend", backend, "--base-model",
                             "tiny-random", "--art-path", str(tmp_path), "--log-dir", str(tmp_path / "logs"),
                             "--rollout-root", str(tmp_path / "rollouts"), "--no-eval-before-after",
                             "--groups-per-step", "2", "--rollouts-per-group", "3", "--dataset-size", "4",
                             "--max-training-steps", "2", "--keep-checkpoints", "1", *flags])


async def test_a_local_run_without_a_wandb_key_trains_through_arts_local_backend(tmp_path, monkeypatch, gpu_side,
                                                                                  no_wandb_key):
    from trainer.run import run

    fake_gpu_machine(monkeypatch)
    config = local_run_config(tmp_path, "--lora-rank", "4", "--seed", "7", "--max-context-tokens", "4096",
                              "--gpu-memory-utilization", "0.5", "--enforce-eager")
    state = await run(config)
    (service,) = gpu_side.instances
    assert state["step"] == 2 and len(service.trains) == 2
    # What reaches unsloth and vLLM: our flags, not ART's defaults (max_seq_length capped at the model's positions)
    init, peft, engine = service.config["init_args"], service.config["peft_args"], service.config["engine_args"]
    assert init["max_seq_length"] == 2048 == engine["max_model_len"]  # the tiny model has 2048 positions
    assert init["load_in_4bit"] is False and init["random_state"] == 7 == peft["random_state"]
    assert (peft["r"], peft["lora_alpha"]) == (4, 8)
    from backends.tiny_random_model import LORA_TARGETS

    assert peft["target_modules"] == list(LORA_TARGETS) == engine["lora_target_modules"]
    assert engine["gpu_memory_utilization"] == 0.5 and engine["enforce_eager"] is True
    assert service.config["trainer_args"]["max_grad_norm"] == 1.0
    model_dir = tmp_path / "art-agent-trainer" / "models" / "gpu"
    stored = json.loads((model_dir / "model.json").read_text())["_internal_config"]
    assert stored["init_args"]["max_seq_length"] == 2048  # the resolved config is stored with the run
    # Every rollout named a model the runtime served, and each step's rollouts the adapter of the step before
    assert service.requests and all(served for _, served in service.requests)
    assert {name for name, _ in service.requests} == {"gpu@0", "gpu@1"}
    kept = sorted(p.name for p in (model_dir / "checkpoints").iterdir())
    assert "0000" not in kept and kept[-1] == "0002"  # --keep-checkpoints 1, pruned by ART's _delete_checkpoint_files
    assert list((model_dir / "wandb").rglob("offline-run-*")), "the run is still recorded offline"


async def test_max_context_tokens_holds_on_vllm_rollouts_shorten_max_tokens_to_the_room_left(tmp_path, monkeypatch,
                                                                                            gpu_side):
    """vLLM refuses what the CPU server shortens: the toy prompts (93 to 133 tokens) plus their 16-token replies do
    not all fit 144, so every request must ask for at most the room left, and the run trains as on the CPU backend."""
    from trainer.run import run

    fake_gpu_machine(monkeypatch)
    state = await run(local_run_config(tmp_path, "--max-context-tokens", "144"))
    (service,) = gpu_side.instances
    assert state["step"] == 2 and service.config["engine_args"]["max_model_len"] == 144
    assert service.lengths and all(prompt + wanted <= 144 for prompt, wanted in service.lengths)
    assert any(wanted < 16 for _, wanted in service.lengths), "no request needed shortening: the test shows nothing"


async def test_train_sft_and_delete_checkpoint_files_reach_the_gpu_side(tmp_path, monkeypatch, gpu_side,
                                                                         no_wandb_key):
    """ART's SFT tokenisation masks the prompt with unsloth_zoo's `train_on_responses_only` (it imports unsloth,
    which needs CUDA): that call is stood in for too, and records the length limit ART passes it."""
    import art
    import art.local.backend

    tokenized: list[dict[str, Any]] = []

    def tokenize_sft_batch(**kwargs: Any) -> Any:
        tokenized.append(kwargs)
        return types.SimpleNamespace(num_trainable_tokens=3, num_dropped_trajectories=0)

    monkeypatch.setattr(art.local.backend, "tokenize_sft_batch", tokenize_sft_batch)

    from backends import BackendChoice, create_backend
    from backends.local_config import configure_model
    from backends.tiny_random_model import LORA_TARGETS, ensure_tiny_model
    from backends.trainer_model import TrainerModel
    from trainer.config import ExperimentConfig

    tiny = ensure_tiny_model(tmp_path / "base")
    model = TrainerModel(name="sft", project="p", base_model=tiny, base_path=str(tmp_path))
    configure_model(model, ExperimentConfig(experiment_name="sft"), tiny, list(LORA_TARGETS), "local")
    backend = create_backend(BackendChoice("local", "test"), str(tmp_path))
    await model.register(backend)
    demo = art.Trajectory(messages_and_choices=[{"role": "user", "content": "Say a."},
                                                {"role": "assistant", "content": "a"}], reward=0.0)
    await model.train_sft([demo] * 4, art.TrainSFTConfig(learning_rate=1e-5, batch_size=2))
    (service,) = gpu_side.instances
    assert len(service.sft_batches) == 2 and await model.get_step() == 1
    assert [t["max_seq_length"] for t in tokenized] == [2048, 2048]  # --max-context-tokens, not ART's 32768
    assert f"sft@{await model.get_step()}" in service.served
    await backend._delete_checkpoint_files(model, [1])
    assert sorted(p.name for p in (Path(model._get_output_dir()) / "checkpoints").iterdir()) == ["0001"]
    await backend.close()


# ---- defect 3: the planner/workflow executor names a served model ----------------------------------------------


async def test_the_default_executor_names_a_model_the_runtime_serves(tmp_path, gpu_side):
    from agent.openai_executor import ExecutorOwner
    from backends import BackendChoice, create_backend
    from backends.tiny_random_model import ensure_tiny_model
    from backends.trainer_model import TrainerModel

    tiny = ensure_tiny_model(tmp_path / "base")
    model = TrainerModel(name="plan", project="p", base_model=tiny, base_path=str(tmp_path))
    backend = create_backend(BackendChoice("local", "test"), str(tmp_path))
    await model.register(backend)
    owner = ExecutorOwner()
    executor = owner.executor_for_model(model, timeout_s=10)
    reply = await executor.complete([{"role": "user", "content": "2+2?"}], max_tokens=4)
    (service,) = gpu_side.instances
    assert reply.text and service.requests == [("plan@0", True)]  # the base weights' served name, not the folder
    await owner.aclose()
    await backend.close()


# ---- defect 4: megatron gets its packed length and may train a local folder -------------------------------------


async def test_megatron_trains_with_the_models_packed_length(tmp_path, gpu_side, no_wandb_key):
    from art.utils.output_dirs import get_model_dir

    from backends import BackendChoice, create_backend, train_keywords
    from backends.local_config import configure_model
    from backends.tiny_random_model import ensure_tiny_model
    from backends.trainer_model import TrainerModel
    from trainer.config import ExperimentConfig

    tiny = ensure_tiny_model(tmp_path / "base")
    model = TrainerModel(name="mega", project="p", base_model=tiny, base_path=str(tmp_path))
    configure_model(model, ExperimentConfig(experiment_name="m", max_context_tokens=1024), tiny, "all-linear",
                    "megatron")
    backend = create_backend(BackendChoice("megatron", "test"), str(tmp_path))
    await model.register(backend)
    client = model.openai_client()
    groups = []
    for _ in range(2):
        choices = [(await client.chat.completions.create(
            model=model.get_inference_name(), messages=[{"role": "user", "content": "a?"}], logprobs=True)
        ).choices[0] for _ in range(2)]
        import art

        groups.append(art.TrajectoryGroup([art.Trajectory(
            messages_and_choices=[{"role": "user", "content": "a?"}, choice], reward=float(i))
            for i, choice in enumerate(choices)]))
    result = await backend.train(model, groups, **train_keywords(backend, learning_rate=1e-5))  # as trainer/rl.py
    (service,) = gpu_side.instances
    assert result.step == 1 and service.trains[0]["dev_config"]["packed_sequence_length"] == 1024
    assert service.config["allow_unvalidated_arch"] is True  # a folder is not in ART's validated registry
    assert os.path.isdir(get_model_dir(model=model, art_path=str(tmp_path)))
    await backend.close()


# ---- defect 5: the mapping itself (a pure function) ----------------------------------------------------------


def test_the_mapping_caps_the_length_at_the_models_positions_and_keeps_arts_defaults_where_unset():
    from backends.local_config import GpuSettings, internal_config

    small = internal_config(GpuSettings(max_context_tokens=16384, lora_rank=16, max_positions=8192))
    assert small["init_args"]["max_seq_length"] == 8192  # not 16384: unsloth would scale RoPE, vLLM would not
    assert small["init_args"]["load_in_4bit"] is False and "target_modules" not in small["peft_args"]
    assert "gpu_memory_utilization" not in small["engine_args"] and "enforce_eager" not in small["engine_args"]
    assert "allow_unvalidated_arch" not in small
    quant = internal_config(GpuSettings(max_context_tokens=1024, lora_rank=8, load_in_4bit=True, kind="megatron",
                                        local_folder=True, lora_targets=("q_proj",)))
    assert quant["init_args"] == {"max_seq_length": 1024, "load_in_4bit": True, "random_state": 0}
    assert quant["peft_args"]["target_modules"] == ["q_proj"] and quant["allow_unvalidated_arch"] is True


def test_the_mapped_flags_change_the_gpu_config_so_a_resume_that_changes_them_is_refused_for_a_reason():
    from backends.local_config import gpu_settings, internal_config
    from trainer.config import ExperimentConfig

    base = ExperimentConfig(experiment_name="r")
    configs = [internal_config(gpu_settings(c, "hub/name", "all-linear", "local")) for c in (
        base, ExperimentConfig(experiment_name="r", lora_rank=4), ExperimentConfig(experiment_name="r", seed=1),
        ExperimentConfig(experiment_name="r", max_context_tokens=1024))]
    assert len({json.dumps(c, sort_keys=True) for c in configs}) == 4  # each hashed flag reaches the GPU side
    assert base.config_hash() == ExperimentConfig(experiment_name="r", gpu_memory_utilization=0.5,
                                                  enforce_eager=True).config_hash()  # run control, not hashed


# ---- defect 6: CPU-only flags on local are refused before any work -----------------------------------------------


@pytest.mark.parametrize("flags, says", [
    (("--init-adapter", "x"), "--init-adapter: warm-starting from a local adapter is for the CPU backend"),
    (("--eval-only", "--checkpoint", "1"), "--checkpoint: evaluating an older checkpoint is for the CPU backend"),
    (("--vllm-url", "http://127.0.0.1:9"), "--vllm-url: --backend local serves rollouts from its own engine"),
])
def test_cpu_only_flags_on_local_are_one_line_refusals(tmp_path, flags, says):
    from trainer.config import ConfigError

    with pytest.raises(ConfigError, match="^" + re.escape(says)) as error:
        local_run_config(tmp_path, *flags)
    assert "\n" not in str(error.value) and not (tmp_path / "art-agent-trainer").exists()


async def test_auto_on_a_gpu_machine_refuses_a_cpu_only_flag_before_registering(tmp_path, monkeypatch, gpu_side):
    from backends import BackendUnavailable
    from trainer.run import run

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    config = local_run_config(tmp_path, "--init-adapter", str(adapter), backend="auto")  # a GPU user's default
    fake_gpu_machine(monkeypatch)
    with pytest.raises(BackendUnavailable, match="^--init-adapter: warm-starting from a local adapter is for the CPU"):
        await run(config)
    assert gpu_side.instances == []  # no GPU service was built


# ---- the smoke script: refuses in one line without CUDA, before installing anything ------------------------------


def test_the_gpu_smoke_script_refuses_in_one_line_without_cuda(tmp_path):
    import shutil
    import subprocess

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_smoke.sh"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    (fake / "nvidia-smi").chmod(0o755)
    (fake / "uv").write_text(f"#!/bin/sh\ntouch {tmp_path}/uv-ran\n")  # must never be reached
    (fake / "uv").chmod(0o755)
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PATH": f"{fake}:/usr/bin:/bin", "GPU_SMOKE_DIR": str(tmp_path / "o")})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("gpu_smoke: no CUDA GPU here")
    assert not (tmp_path / "uv-ran").exists() and not (tmp_path / "o").exists()
    if shutil.which("shellcheck"):
        assert subprocess.run(["shellcheck", str(script)], capture_output=True).returncode == 0
