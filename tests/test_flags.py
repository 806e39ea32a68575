"""Flag parsing and --help, the config hash and the resume check (bad flags: tests/reliability/test_bad_input.py;
old runs' hashes: test_config_hash.py)."""

import dataclasses
import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, read_state, run_train
from train import ConfigError, ExperimentConfig, check_resume, config_from_args, main
from trainer.cli import build_parser, parse_command_line
from trainer.config import GROUPS


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
    assert (gmsh.env, gmsh.refill_ahead, gmsh.max_tokens, gmsh.sft_data) == ("gmsh", 2, 640, [str(sft)])
    mine = config_from_args(["--experiment-name", "x", "--groups-per-step", "3", "--max-tokens", "100"])
    assert (mine.groups_per_step, mine.max_tokens, mine.rollouts_per_group) == (3, 100, 4)
    toy = config_from_args(["--experiment-name", "x", "--env", "toy"])
    assert (toy.groups_per_step, toy.max_tokens, toy.max_training_steps) == (4, 1024, None)


DEMO_SPEC = """
from dataclasses import dataclass, field

from envs.spec import EnvSpec


@dataclass(frozen=True)
class DemoOptions:
    demo_cases: str = field(default="a", metadata={"help": "which cases"})
    demo_count: int = field(default=100, metadata={"help": "how many"})

    def validate(self):
        if self.demo_count < 1:
            raise ValueError("--demo-count must be at least 1")


SPEC = EnvSpec(name="demo", load_scenarios=lambda cfg: [], rollout=None, options=DemoOptions,
               defaults={"max_tokens": 77, "demo_count": 5})
"""


def test_env_flags_reach_only_their_env_typed_and_are_checked(tmp_path, monkeypatch):
    """An env declares its options in its spec (a dataclass: its flags); the trainer hands the typed object down."""
    from envs import registry

    (tmp_path / "demo_env_spec.py").write_text(DEMO_SPEC)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.ENV_SPECS, "demo", "demo_env_spec")

    config = config_from_args(["--experiment-name", "x", "--env", "demo", "--demo-cases", "b"])
    assert type(config.env_options).__name__ == "DemoOptions"
    assert (config.env_options.demo_cases, config.env_options.demo_count, config.max_tokens) == ("b", 5, 77)
    assert config.hashed_fields()["env_options"] == {"demo_cases": "b", "demo_count": 5}
    other = config_from_args(["--experiment-name", "x", "--env", "gmsh"])
    assert "demo_cases" not in json.dumps(other.hashed_fields())  # another env's flags never reach this hash
    assert config.config_hash() != config_from_args(["--experiment-name", "x", "--env", "demo"]).config_hash()
    with pytest.raises(ConfigError, match="^--demo-cases belongs to --env demo, not --env gmsh$"):
        config_from_args(["--experiment-name", "x", "--env", "gmsh", "--demo-cases", "b"])
    with pytest.raises(ConfigError, match="^--demo-count must be at least 1$"):
        config_from_args(["--experiment-name", "x", "--env", "demo", "--demo-count", "0"])
    assert "--env demo:" in build_parser().format_help()  # its own --help group


# ---- --help: groups, help for every flag, meaningful defaults -----------------------------------------------------


def test_every_flag_has_help_and_help_shows_no_empty_defaults():
    parser = build_parser()
    missing = [a.option_strings[0] for a in parser._actions if a.option_strings and not (a.help or "").strip()]
    assert not missing
    text = parser.format_help()
    for empty in ("(default: None)", "(default: [])", "(default: False)", "(default: )"):
        assert empty not in text


def test_train_py_help_is_what_a_user_sees_with_real_defaults():
    """`train.py --help` itself (not the parser in isolation): exit 0, the real defaults, nothing internal."""
    done = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "(default: .art)" in done.stdout and "--env toy:" in done.stdout.replace("\n", " ")
    for internal in ("object at 0x", "(default: None)", "(default: [])", "Traceback"):
        assert internal not in done.stdout + done.stderr


def test_help_has_a_group_per_concern_and_per_env():
    from envs.registry import env_names, load_spec

    text = build_parser().format_help()
    for title in GROUPS.values():
        assert f"\n{title}:\n" in text
    for env in env_names():
        if load_spec(env).options is not None:
            assert f"--env {env}" in text
    assert "{" + ",".join(env_names()) + "}" in text  # --env lists its choices


def test_help_shows_each_envs_own_defaults():
    from envs.registry import load_spec

    max_tokens = next(a for a in build_parser()._actions if a.dest == "max_tokens")
    assert "default 1024" in max_tokens.help
    assert f"gmsh {load_spec('gmsh').defaults['max_tokens']}" in max_tokens.help
    assert f"r2e {load_spec('r2e').defaults['max_tokens']}" in max_tokens.help


def test_flags_come_from_the_config_fields():
    """One declaration: each field with a flag is a flag of its group, and its default is the field's."""
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(ExperimentConfig):
        if f.metadata.get("flag", "") is None:
            continue
        assert f.name in actions, f.name
        if f.default is not dataclasses.MISSING:
            assert actions[f.name].default == f.default, f.name


def _main_fails(capsys, *flags: str) -> str:
    with pytest.raises(SystemExit) as stop:
        main(["--experiment-name", "x", *flags])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_abbreviated_flags_are_refused(capsys):
    assert _main_fails(capsys, "--groups", "3").startswith("error: unrecognized arguments: --groups 3")


def test_a_flag_of_another_env_is_one_line_exit_2(capsys):
    assert main(["--experiment-name", "x", "--env", "toy", "--reward", "partial"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["error: --reward belongs to --env r2e, not --env toy"]


# ---- --config FILE: its values count as given ------------------------------------------------------------------


def test_config_file_values_count_as_given_and_flags_override_them(tmp_path, monkeypatch):
    from trainer import config_file

    monkeypatch.setattr(config_file, "load_config_file",
                        lambda path, parser: {"experiment_name": "f", "groups_per_step": 3, "max_tokens": 100})
    cfg = config_from_args(["--config", str(tmp_path / "x.toml")])  # gmsh would default both otherwise
    assert (cfg.experiment_name, cfg.groups_per_step, cfg.max_tokens, cfg.rollouts_per_group) == ("f", 3, 100, 4)
    cfg = config_from_args(["--config", str(tmp_path / "x.toml"), "--groups-per-step", "5"])
    assert (cfg.groups_per_step, cfg.max_tokens) == (5, 100)


def test_print_config_is_a_command_line_flag_only():
    command = parse_command_line(["--experiment-name", "x", "--env", "toy", "--print-config"])
    assert command.print_config and command.config.env == "toy"
    assert not parse_command_line(["--experiment-name", "x", "--env", "toy"]).print_config


# ---- step budgets: --max-training-steps counts RL steps, --sft-epochs the SFT epochs ---------------------------------


@pytest.mark.parametrize(("step", "sft", "budget", "last", "line"), [
    (3, 3, 3, 6, "rl: RL steps 1-3 of --max-training-steps 3 are steps 4-6 after 3 SFT epoch(s)"),  # after SFT
    (5, 3, 3, 6, "rl: RL steps 3-3 of --max-training-steps 3 are steps 6-6 after 3 SFT epoch(s)"),  # resumed
    (0, 0, 2, 2, "rl: RL steps 1-2 of --max-training-steps 2 are steps 1-2"),  # no SFT stage
    (6, 3, 3, 6, "rl: the 3 RL step(s) of --max-training-steps are done (step 6 after 3 SFT epoch(s))"),
])
def test_max_training_steps_counts_rl_steps_after_the_sft_epochs(capsys, step, sft, budget, last, line):
    from trainer.rl import rl_budget

    assert rl_budget(step, sft, budget) == last
    assert capsys.readouterr().out.strip() == line


def test_no_rl_budget_runs_the_epochs_and_says_nothing(capsys):
    from trainer.rl import rl_budget

    assert rl_budget(3, 3, None) == sys.maxsize and capsys.readouterr().out == ""


def test_help_says_what_each_step_budget_counts():
    actions = {a.dest: a for a in build_parser()._actions}
    assert actions["max_training_steps"].help.startswith("RL (GRPO) steps to train")
    assert "--sft-epochs" in actions["max_training_steps"].help
    assert actions["sft_epochs"].help.startswith("passes over the SFT conversations")


def test_env_defaults_keep_the_default_runs_shape():
    """RL steps per env, after its SFT epochs: the same steps the defaults trained when the budget counted both."""
    from envs.mix.mix import MIX_DEFAULTS
    from envs.registry import load_spec

    shapes = {env: (load_spec(env).defaults["sft_epochs"], load_spec(env).defaults["max_training_steps"])
              for env in ("gmsh", "r2e", "openspiel", "planner", "workflow")}
    assert shapes == {"gmsh": (3, 4), "r2e": (3, 3), "openspiel": (2, 6), "planner": (2, 4), "workflow": (2, 4)}
    assert (MIX_DEFAULTS["sft_epochs"], MIX_DEFAULTS["max_training_steps"]) == (2, 4)
