"""`train.py --config FILE`: any flag from a TOML (or YAML) file, the command line overriding it, a bad file one line;
the resolved config printed by `--print-config`, written beside state.json at start and shown in the report."""

import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT, model_dir, read_state, run_train, subprocess_env
from trainer.cli import build_parser, config_from_args
from trainer.config import ConfigError
from trainer.config_file import load_config_file, render_resolved, resolved_config


def write(path, text):
    path.write_text(text)
    return str(path)


def flags(tmp_path, *more):
    """Where a config built here may write: nothing lands in the repository's .art or logs."""
    return ["--art-path", str(tmp_path / ".art"), "--log-dir", str(tmp_path / "logs"), *more]


def train(*argv, timeout=120):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], capture_output=True, text=True,
                          timeout=timeout, env=subprocess_env(), cwd=ROOT)


def test_file_settings_fill_the_config_and_the_command_line_overrides_them(tmp_path):
    file = write(tmp_path / "exp.toml", 'experiment_name = "from-file"\nenv = "toy"\nbase-model = "tiny-random"\n'
                                        "[run]\nseed = 7\n[rl]\ngroups_per_step = 3\n[sampling]\nmax_tokens = 256\n"
                                        'temperature = 1\n[toy]\ntoy_target = "b"\n')
    config = config_from_args(["--config", file, "--max-tokens", "100", *flags(tmp_path)])
    assert config.experiment_name == "from-file"  # a required flag may live in the file
    assert (config.env, config.seed, config.groups_per_step, config.max_tokens) == ("toy", 7, 3, 100)
    assert config.temperature == 1.0 and isinstance(config.temperature, float)  # the flag's type applied
    assert config.env_options.toy_target == "b"  # an env's option, from the table named after the env


def test_the_env_defaults_fill_only_what_neither_the_file_nor_the_command_line_gives(tmp_path):
    file = write(tmp_path / "exp.toml", "[sampling]\nmax_tokens = 300\n")
    config = config_from_args(["--config", file, "--experiment-name", "x", "--env", "gmsh", *flags(tmp_path)])
    assert config.max_tokens == 300  # gmsh's own default (640) does not override the file
    assert config.refill_ahead == 2  # the file leaves it out: gmsh's default, not the global 0


def test_a_list_flag_on_the_command_line_replaces_the_files_list(tmp_path):
    data = [write(tmp_path / f"{name}.jsonl", '{"prompt": "p", "response": "r"}\n') for name in ("a", "b")]
    file = write(tmp_path / "exp.toml", f"sft_data = [{data[0]!r}]\n".replace("'", '"'))
    base = ["--config", file, "--experiment-name", "x", "--env", "toy", *flags(tmp_path)]
    assert config_from_args(base).sft_data == [data[0]]
    assert config_from_args([*base, "--sft-data", data[1]]).sft_data == [data[1]]


def test_an_unknown_key_is_one_line_exit_2_naming_the_file_and_a_close_match(tmp_path):
    bad = write(tmp_path / "bad.toml", "[rl]\ngroups_per_stp = 3\n")
    result = train("--config", bad, "--experiment-name", "x")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: --config {bad}: unknown key 'rl.groups_per_stp' "
                                     "(did you mean groups_per_step?)")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("text", "message"), [
    ("max_tokens = 256\nseed = \n", r"--config \S+bad.toml:2:8: not valid TOML: "),
    ("groups_per_step = 1.5\n", r"--config \S+bad.toml: groups_per_step = 1.5: expected an integer$"),
    ('loss_fn = "sgd"\n', r"--config \S+bad.toml: loss_fn = 'sgd': choose from cispo, ppo$"),
    ("scale_rewards = 1\n", r"--config \S+bad.toml: scale_rewards = 1: expected true or false$"),
    ('config = "other.toml"\n', r"--config \S+bad.toml: config can only be given on the command line$"),
    ("max_tokens = 1\n[sampling]\nmax_tokens = 2\n", r"sampling.max_tokens = 2 sets max_tokens again"),
])
def test_a_bad_file_is_one_line_naming_the_file_and_the_key(tmp_path, text, message):
    bad = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as caught:
        config_from_args(["--config", bad, "--experiment-name", "x", *flags(tmp_path)])
    assert re.search(message, str(caught.value)) and "\n" not in str(caught.value)


@pytest.mark.parametrize(("name", "message"), [("missing.toml", "no such file"),
                                               ("exp.json", "expected a .toml file (or .yaml/.yml)")])
def test_a_missing_or_foreign_file_is_one_line_naming_config(tmp_path, name, message):
    with pytest.raises(ConfigError, match=f"^--config {re.escape(str(tmp_path / name))}: {re.escape(message)}"):
        config_from_args(["--config", str(tmp_path / name), "--experiment-name", "x"])


def test_yaml_reads_like_toml(tmp_path):
    pytest.importorskip("yaml")
    file = write(tmp_path / "exp.yaml", "env: toy\nrl:\n  groups-per-step: 3\nscale_rewards: false\n")
    assert load_config_file(file, build_parser()) == {"env": "toy", "groups_per_step": 3, "scale_rewards": False}


@pytest.mark.parametrize("argv", [
    ["--env", "toy", "--toy-target", "b", "--groups-per-step", "3", "--temperature-schedule", "0.5:0.1:10"],
    ["--env", "gmsh", "--sft-data", "SFT", "--kl-penalty-coef", "0.25"],
    ["--mix", "toy=0.5,openspiel=0.5", "--max-tokens", "64"],
    ["--mix", "toy=0.5,openspiel=0.5"],  # each env keeps its own turn limits
])
def test_the_resolved_config_reads_back_to_the_same_config(tmp_path, argv):
    sft = write(tmp_path / "d.jsonl", '{"prompt": "p", "response": "r"}\n')
    config = config_from_args(["--experiment-name", "x", "--base-model", "tiny-random", *flags(tmp_path),
                               *[sft if a == "SFT" else a for a in argv]])
    text = render_resolved(config)
    again = config_from_args(["--config", write(tmp_path / "resolved.toml", text)])
    assert again.config_hash() == config.config_hash()
    assert resolved_config(again) == resolved_config(config)
    assert f'# config_hash = "{config.config_hash()}"' in text


def test_print_config_prints_toml_that_config_reads_back_to_the_same_hash(tmp_path):
    argv = ["--experiment-name", "pc", "--env", "toy", "--base-model", "tiny-random", "--groups-per-step", "3",
            *flags(tmp_path)]
    printed = train("--print-config", *argv)
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert "[rl]" in printed.stdout and "groups_per_step = 3" in printed.stdout
    again = config_from_args(["--config", write(tmp_path / "printed.toml", printed.stdout)])
    assert again.config_hash() == config_from_args(argv).config_hash()
    assert not (tmp_path / ".art").exists()  # printing runs nothing


def test_the_report_shows_the_resolved_config_collapsed(tmp_path):
    from monitor.report import write_report

    models = tmp_path / "model"
    models.mkdir()
    (models / "history.jsonl").write_text('{"step": 1, "train/reward_mean": 0.5}\n')
    (models / "config.toml").write_text('[rl]\ngroups_per_step = 3\nexperiment_name = "<b>"\n')
    page = write_report(tmp_path / "logs" / "e", models / "history.jsonl").read_text()
    block = re.search(r'<details id="config">(.*?)</details>', page, re.S)
    assert block and "groups_per_step = 3" in block[1] and "&lt;b&gt;" in block[1]
    (models / "config.toml").unlink()
    assert 'id="config"' not in write_report(tmp_path / "logs" / "e", models / "history.jsonl").read_text()


@pytest.mark.slow
def test_a_run_writes_its_resolved_config_beside_state_json_and_into_the_report(tmp_path):
    file = write(tmp_path / "exp.toml", 'env = "toy"\nskip_reward_check = true\n[rl]\ngroups_per_step = 2\n'
                                        "rollouts_per_group = 2\n[data]\ndataset_size = 2\n[run]\n"
                                        "max_training_steps = 1\n")
    result = run_train(tmp_path, "cfg", "--config", file, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = model_dir(tmp_path, "cfg")
    written = folder / "config.toml"
    assert (folder / "state.json").exists() and written.exists()
    assert config_from_args(["--config", str(written)]).config_hash() == read_state(tmp_path, "cfg")["config_hash"]
    page = (tmp_path / "logs" / "cfg" / "report.html").read_text()
    assert 'id="config"' in page and "rollouts_per_group = 2" in page
