"""Flag parsing, the config hash and the resume check (bad flags: tests/reliability/test_bad_input.py)."""

import subprocess
import sys

import pytest

from tests.helpers import ROOT, read_state, run_train
from train import ConfigError, ExperimentConfig, check_resume, config_from_args


def test_missing_experiment_name_is_reported():
    result = subprocess.run([sys.executable, str(ROOT / "train.py")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--experiment-name" in result.stderr


def test_config_hash_is_stable_and_ignores_run_control_fields():
    a = config_from_args(["--experiment-name", "e"])
    b = config_from_args(["--experiment-name", "e", "--max-training-steps", "9", "--max-concurrent", "3"])
    c = config_from_args(["--experiment-name", "e", "--learning-rate", "0.001"])
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != c.config_hash()
    assert len(a.config_hash()) == 12


def test_changed_config_is_refused_unless_allowed():
    saved = ExperimentConfig(experiment_name="e")
    state = {"config_hash": saved.config_hash(), "config": saved.hashed_fields()}
    changed = ExperimentConfig(experiment_name="e", groups_per_step=7)
    with pytest.raises(ConfigError, match="groups_per_step"):
        check_resume(changed, state)
    check_resume(ExperimentConfig(experiment_name="e", groups_per_step=7, allow_config_change=True), state)


def test_backend_local_without_cuda_gives_its_error(tmp_path):
    result = run_train(tmp_path, "loc", "--env", "toy", "--backend", "local", timeout=180)
    assert result.returncode == 2
    assert "error: --backend local needs a CUDA GPU" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_rerun_with_changed_config_gets_one_line_error(tmp_path):
    first = run_train(tmp_path, "cfg", "--env", "toy", "--max-training-steps", "1", "--groups-per-step", "2",
                      "--dataset-size", "4")
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_train(tmp_path, "cfg", "--env", "toy", "--max-training-steps", "2", "--groups-per-step", "2",
                       "--dataset-size", "4", "--learning-rate", "0.003")
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1].startswith("error: --allow-config-change")
    assert read_state(tmp_path, "cfg")["step"] == 1  # nothing trained


def test_env_defaults_fill_only_the_flags_left_out(tmp_path):
    sft = tmp_path / "d.jsonl"
    sft.write_text('{"prompt": "p", "response": "r"}\n')
    gmsh = config_from_args(["--experiment-name", "x", "--sft-data", str(sft), "--gmsh-url", "http://h:1"])
    assert (gmsh.env, gmsh.groups_per_step, gmsh.max_tokens, gmsh.sft_data) == ("gmsh", 2, 640, [str(sft)])
    mine = config_from_args(["--experiment-name", "x", "--groups-per-step", "3", "--max-tokens", "100"])
    assert (mine.groups_per_step, mine.max_tokens, mine.rollouts_per_group) == (3, 100, 4)
    toy = config_from_args(["--experiment-name", "x", "--env", "toy"])
    assert (toy.groups_per_step, toy.max_tokens, toy.max_training_steps) == (4, 1024, None)


def test_env_flags_reach_only_their_env_and_are_checked(tmp_path, monkeypatch):
    """An env declares its own flags in a light module (registry.ENV_FLAGS); config.py never lists them."""
    from rollouts import registry

    (tmp_path / "demo_env_flags.py").write_text(
        "def add_flags(group):\n"
        "    group.add_argument('--demo-cases', default='a')\n"
        "    group.add_argument('--demo-count', type=int, default=100)\n"
        "def validate(options):\n"
        "    if options['demo_count'] < 1:\n"
        "        raise ValueError('--demo-count must be at least 1')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.ENV_FLAGS, "toy", "demo_env_flags")

    config = config_from_args(["--experiment-name", "x", "--env", "toy", "--demo-count", "3"])
    assert config.env_options == {"demo_cases": "a", "demo_count": 3}
    assert registry.env_options(ExperimentConfig(experiment_name="y", env="toy"), "toy")["demo_count"] == 100
    other = config_from_args(["--experiment-name", "x", "--env", "gmsh"])
    assert other.env_options == {} and "env_options" not in other.hashed_fields()
    assert config.config_hash() != config_from_args(["--experiment-name", "x", "--env", "toy"]).config_hash()
    with pytest.raises(ConfigError, match="--demo-cases belongs to --env toy"):
        config_from_args(["--experiment-name", "x", "--env", "gmsh", "--demo-cases", "b"])
    with pytest.raises(ConfigError, match="--demo-count must be at least 1"):
        config_from_args(["--experiment-name", "x", "--env", "toy", "--demo-count", "0"])
