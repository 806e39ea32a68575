"""ART's engines beyond one machine by flag (`--backend serverless|tinker|megatron`): the one-line refusals when a key,
extra or GPU is missing (exit 2, nothing written), construction of ART's own classes where this machine allows it
(no network here), keys kept out of configs, hashes and logs, and the step loop driving any object that has only the
methods of ART's `Backend` protocol (our CPU backend runs the same loop end to end in tests/test_train_e2e.py)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re

import art
import pytest

from backends import BackendChoice, BackendUnavailable, RemoteSettings, choose_backend, create_backend
from backends.remote import RunNeeds, roll_back_remote_steps, run_problem, train_keywords
from tests.helpers import history_rows, read_state, run_train
from trainer.cli import config_from_args
from trainer.config import ConfigError

FAKE_KEY = "sekrit-key-0123456789"
HOSTED = "OpenPipe/Qwen3-14B-Instruct"


def test_a_missing_key_stops_train_py_with_one_line_exit_2_before_any_work(tmp_path):
    result = run_train(tmp_path, "remote", "--env", "toy", "--backend", "serverless", timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: --backend serverless needs WANDB_API_KEY in the environment")
    assert not (tmp_path / "art-agent-trainer").exists()  # nothing written: no lock, no state, no model dir


@pytest.mark.parametrize("kind, says", [
    ("tinker", "--backend tinker needs TINKER_API_KEY in the environment and ART's tinker extra (missing: tinker, "
               "tinker_cookbook): run `uv pip install 'openpipe-art[tinker]=="),
    ("megatron", "--backend megatron needs ART's megatron extra (missing: megatron.core, megatron.bridge, "
                 "transformer_engine): run `uv pip install 'openpipe-art[backend,megatron]=="),
])
def test_a_missing_extra_is_one_line_saying_what_to_install(monkeypatch, kind, says):
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    with pytest.raises(ConfigError) as error:
        config_from_args(["--experiment-name", "r", "--env", "toy", "--backend", kind])
    assert str(error.value).startswith(says) and "\n" not in str(error.value)


def _config(monkeypatch, *flags: str):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the hub-name check then needs no cached tokenizer
    return config_from_args(["--experiment-name", "s", "--env", "toy", "--backend", "serverless", *flags])


def test_serverless_is_arts_own_class_and_its_key_never_reaches_config_hash_or_output(monkeypatch, capsys):
    config = _config(monkeypatch, "--base-model", HOSTED, "--serverless-url", "http://127.0.0.1:9/v1")
    choice = choose_backend(config.backend)
    backend = create_backend(choice, config.art_path, remote_settings=RemoteSettings(config.serverless_url))
    from art.serverless import ServerlessBackend

    assert type(backend) is ServerlessBackend and backend._base_url.startswith("http://127.0.0.1:9/v1")
    assert FAKE_KEY not in json.dumps(dataclasses.asdict(config), default=str)
    assert FAKE_KEY not in json.dumps(config.hashed_fields(), default=str)
    monkeypatch.setenv("WANDB_API_KEY", "another-key")
    assert _config(monkeypatch, "--base-model", HOSTED).config_hash() == config.config_hash()
    assert FAKE_KEY not in capsys.readouterr().out


@pytest.mark.parametrize("flags, says", [
    ((), "--base-model 'smollm2-135m': --backend serverless trains a model the engine hosts"),
    (("--base-model", "not a name"), "--base-model 'not a name' is neither a local model folder nor a hub name"),
    (("--base-model", HOSTED, "--kl-penalty-coef", "0.1"), "--kl-penalty-coef: ServerlessBackend.train() takes no"),
    (("--base-model", HOSTED, "--keep-checkpoints", "2"), "--keep-checkpoints: with --backend serverless"),
    (("--base-model", HOSTED, "--serverless-url", "ftp://x"), "--serverless-url must start with http://"),
])
def test_flags_the_engine_cannot_honour_are_refused_naming_the_flag(monkeypatch, flags, says):
    with pytest.raises(ConfigError, match="^" + re.escape(says)):
        _config(monkeypatch, *flags)


def test_a_hub_model_without_a_cached_tokenizer_offline_says_how_to_go_online(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is on .* run with HF_HUB_OFFLINE=0"):
        config_from_args(["--experiment-name", "s", "--env", "toy", "--backend", "serverless",
                          "--base-model", "no-such-org/no-such-model"])


def test_tinker_refuses_the_sft_stage_it_cannot_run():
    assert run_problem("tinker", RunNeeds(sft=True)).startswith("--backend tinker cannot run the SFT stage")
    assert run_problem("tinker", RunNeeds()) is None
    assert run_problem("cpu", RunNeeds(sft=True, kl_penalty_coef=1.0)) is None


def test_megatron_is_arts_own_class_when_its_checks_pass(tmp_path):
    backend = create_backend(BackendChoice("megatron", "test"), str(tmp_path))  # the class builds; training needs GPUs
    from art.megatron import MegatronBackend

    # ART's class, with only train()'s packed_sequence_length defaulted to the model's length (backends/remote.py)
    assert type(backend).__bases__ == (MegatronBackend,) and isinstance(backend, art.local.LocalBackend)
    assert [name for name in type(backend).__dict__ if not name.startswith("_")] == ["train"]


def test_tinker_is_arts_own_class_when_its_extra_is_installed(tmp_path, monkeypatch):
    pytest.importorskip("tinker", reason="ART's tinker extra is not installed here (its refusal is tested above)")
    monkeypatch.setenv("TINKER_API_KEY", FAKE_KEY)
    from art.tinker import TinkerBackend

    assert type(create_backend(choose_backend("tinker"), str(tmp_path))) is TinkerBackend


def test_train_keywords_follow_each_engines_signature(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    serverless = create_backend(BackendChoice("serverless", "t"), ".art")
    asked = dict(learning_rate=1e-5, advantage_balance=0.2, scale_rewards=False)
    assert train_keywords(serverless, **asked, loss_fn="ppo") == {**asked, "ppo": True}
    assert train_keywords(serverless, **asked, loss_fn="cispo") == {**asked, "ppo": False}
    with pytest.raises(TypeError, match="takes no 'kl_penalty_coef'"):
        train_keywords(serverless, **asked, loss_fn="cispo", kl_penalty_coef=0.5)

    class AnyKeywords:
        async def train(self, model, groups, **kwargs): ...

    assert train_keywords(AnyKeywords(), loss_fn="ppo", kl_penalty_coef=0.5) == {"loss_fn": "ppo",
                                                                                  "kl_penalty_coef": 0.5}


class EngineSteps:
    """A remote engine's checkpoint list, as ServerlessBackend exposes it through ART's protocol."""

    def __init__(self, steps):
        self.steps = set(steps)

    async def _get_step(self, model):
        return max(self.steps, default=0)

    async def _delete_checkpoint_files(self, model, steps_to_keep):
        self.steps &= set(steps_to_keep)


async def test_a_remote_step_trained_but_never_committed_is_rolled_back():
    engine = EngineSteps([1, 2, 3])
    assert await roll_back_remote_steps(engine, None, committed=2) == [3]
    assert engine.steps == {1, 2}
    assert await roll_back_remote_steps(engine, None, committed=2) == []  # nothing to undo twice


class ProtocolOnlyBackend:
    """Exactly the methods of ART's `Backend` protocol, no base class: the loop must need nothing else."""

    def __init__(self, base_url: str):
        self.base_url, self.step, self.calls, self.closed = base_url, 0, [], False

    def _model_inference_name(self, model, step=None):
        return f"{model.name}@{self.step if step is None else step}"

    async def close(self):
        self.closed = True

    async def register(self, model):
        self.calls.append("register")

    async def _get_step(self, model):
        return self.step

    async def _delete_checkpoint_files(self, model, steps_to_keep):
        self.calls.append(("delete", tuple(steps_to_keep)))

    async def _prepare_backend_for_training(self, model, config=None):
        return self.base_url, "protocol-key"

    async def train(self, model, trajectory_groups, **kwargs):
        groups = list(trajectory_groups)
        self.calls.append(("train", len(groups), sorted(kwargs)))
        self.step += 1
        return art.TrainResult(step=self.step, metrics={"train/loss": 0.25})

    async def _train_sft(self, model, trajectories, config, dev_config, verbose=False):
        raise NotImplementedError
        yield {}


async def test_the_step_loop_drives_any_object_with_only_the_backend_protocol(tmp_path, monkeypatch):
    from tests.fake_openai_server import start_scripted_server
    from trainer.run import run

    replies = itertools.cycle(["aaaa", "bbbb", "abab"])  # a spread of toy rewards, so groups carry a signal
    server = start_scripted_server(lambda messages: next(replies))
    backend = ProtocolOnlyBackend(f"{server.base_url}")
    monkeypatch.setattr("backends.create_backend", lambda *args, **kwargs: backend)
    config = config_from_args(["--experiment-name", "proto", "--env", "toy", "--backend", "cpu", "--base-model",
                               "tiny-random", "--art-path", str(tmp_path), "--log-dir", str(tmp_path / "logs"),
                               "--rollout-root", str(tmp_path / "rollouts"), "--no-eval-before-after",
                               "--groups-per-step", "2", "--rollouts-per-group", "3", "--dataset-size", "4",
                               "--max-training-steps", "2", "--wandb", "disabled"])
    try:
        state = await run(config)
    finally:
        server.stop()
    trains = [c for c in backend.calls if c[0] == "train"]
    assert backend.calls[0] == "register" and len(trains) == 2 and backend.closed
    assert trains[0][2] == ["advantage_balance", "learning_rate", "loss_fn", "scale_rewards"]
    assert state["step"] == 2 == read_state(tmp_path, "proto")["step"]
    assert [row["step"] for row in history_rows(tmp_path, "proto")] == [1, 2]
    assert all(row["train/loss"] == 0.25 for row in history_rows(tmp_path, "proto"))


def test_choose_backend_refuses_remote_kinds_without_their_requirements(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(BackendUnavailable, match="^--backend serverless needs WANDB_API_KEY"):
        choose_backend("serverless")
