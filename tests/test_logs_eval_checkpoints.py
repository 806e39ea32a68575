"""What a person uses to see and keep what the agent did: RLM logs, evaluation, checkpoint retention, export."""

import json
import subprocess
import sys

import art
import pytest

from backends.checkpoints import steps_to_keep
from rollouts.logs import attach_turns, code_block, rlm_lines, validate_file
from tests.helpers import ROOT, model_dir, read_state, run_train, subprocess_env
from tests.test_report import render_dom

FLAGS = ["--env", "toy", "--groups-per-step", "2", "--rollouts-per-group", "4", "--dataset-size", "8",
         "--num-epochs", "50"]


def validate(*paths) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rollouts.logs", "validate", *map(str, paths)],
                          capture_output=True, text=True, cwd=ROOT, env=subprocess_env(), timeout=120)


@pytest.mark.slow
def test_eval_retention_logs_and_export_of_a_short_run(tmp_path):
    run = run_train(tmp_path, "see", *FLAGS, "--max-training-steps", "4", "--eval-every", "2",
                    "--keep-checkpoints", "1", "--save-every", "2", "--log-sample-rate", "1")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("eval at step") == 2
    rows = [json.loads(line) for line in (model_dir(tmp_path, "see") / "history.jsonl").read_text().splitlines()]
    val_rows = [r for r in rows if "val/pass_rate" in r]
    assert [r["step"] for r in val_rows] == [2, 4]
    best = max(val_rows, key=lambda r: r["val/reward"])["step"]
    kept = sorted(int(p.name) for p in (model_dir(tmp_path, "see") / "checkpoints").iterdir())
    assert kept == sorted({4, 2, best})  # latest, the newest on --save-every, and the best eval step

    logs = tmp_path / "logs" / "see"
    assert validate(logs).returncode == 0
    dom = render_dom(logs / "report.html")
    assert dom.count('class="main-svg"') >= 6  # every chart was drawn by plotly.js, offline
    assert dom.count('class="rollout"') == 4 * 8 and "reward" in dom
    first = sorted(logs.glob("step_0001/*.jsonl"))[0]
    lines = first.read_text().splitlines()
    lines[1] = lines[1][:-5]
    first.write_text("\n".join(lines) + "\n")
    broken = validate(logs)
    assert broken.returncode == 1 and f"{first}:2: not JSON" in broken.stderr  # problems go to stderr

    def resume_point() -> dict:
        return {k: read_state(tmp_path, "see")[k] for k in ("step", "epoch", "cursor", "config_hash")}

    before = resume_point()
    only = run_train(tmp_path, "see", *FLAGS, "--eval-only", "--checkpoint", "2")
    assert only.returncode == 0, only.stderr[-3000:]
    figures = json.loads(only.stdout[only.stdout.index("{"):only.stdout.rindex("}") + 1])
    assert figures["eval_step"] == 2 and 0 <= figures["pass_rate"] <= 1 and figures["rollouts"] == 8
    assert resume_point() == before  # nothing trained
    assert sorted(int(p.name) for p in (model_dir(tmp_path, "see") / "checkpoints").iterdir()) == kept

    out = tmp_path / "adapter"
    exported = subprocess.run([sys.executable, str(ROOT / "train.py"), "export", "--experiment-name", "see",
                               "--art-path", str(tmp_path), "--out", str(out)], capture_output=True, text=True,
                              env=subprocess_env(), cwd=ROOT, timeout=120)
    assert exported.returncode == 0, exported.stderr[-2000:]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = json.loads((model_dir(tmp_path, "see") / "model.json").read_text())["base_model"]
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(out))
    assert any("lora_A" in name for name, _ in loaded.named_parameters())


def test_retention_keeps_latest_best_and_newest_saved():
    existing = list(range(0, 11))
    assert steps_to_keep(existing, latest=10, keep=2, save_every=3, best=4) == [4, 6, 9, 10]
    assert steps_to_keep(existing, latest=10, keep=0, save_every=1, best=None) == [10]


def test_turns_of_a_code_env_become_iterations_with_code_blocks(tmp_path):
    trajectory = art.Trajectory(messages_and_choices=[{"role": "user", "content": "fix it"},
                                                      {"role": "assistant", "content": "```repl\nprint(1)\n```"}],
                                reward=1.0)
    attach_turns(trajectory, [{
        "prompt": [{"role": "user", "content": "fix it"}], "response": "```repl\nprint(1)\n```",
        "code_blocks": [code_block("print(1)", "1\n", "", {"x": "1"}, 0.01,
                                   [{"prompt": "q", "response": "a"}], "m")],
        "final_answer": None, "iteration_time": 0.2,
    }])
    lines = rlm_lines(trajectory, {"env": "r2e", "model": "m", "max_steps": 3})
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert validate_file(path) is None
    block = lines[1]["code_blocks"][0]
    assert block["result"]["stdout"] == "1\n" and block["result"]["rlm_calls"][0]["response"] == "a"
