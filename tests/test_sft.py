"""The SFT stage: data formats and their one-line errors, assistant-only labels, ART's `train_sft` on the CPU
backend, a stage that is recorded like a step (never repeated), and a clean resume after kill -9 during SFT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import art
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backends.cpu_sft import IGNORE, tokenize_conversation
from backends.tiny_random_model import ensure_tiny_model
from tests.helpers import history_rows, model_dir, read_state, run_train, subprocess_env, train_cmd
from trainer.sft_stage import SFTDataError, load_sft_conversations

CHAT = [{"role": "system", "content": "Reply with the letter a."}, {"role": "user", "content": "Go."},
        {"role": "assistant", "content": "aaaa"}, {"role": "user", "content": "Again."},
        {"role": "assistant", "content": "aaaaaa"}]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def demos(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "demos.jsonl", [{"messages": CHAT}] * 4)


def test_formats_messages_prompt_response_and_parquet(tmp_path):
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {}}}}]}])
    verl = write_jsonl(tmp_path / "verl.jsonl", [{"prompt": "Say a", "response": "a"},
                                                 {"prompt": [{"role": "user", "content": "Say b"}], "response": "b"}])
    table = tmp_path / "verl.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "Say c", "response": "c"}]), table)
    conversations = load_sft_conversations([str(chat), str(verl), str(table)])
    assert [c["messages"][-1]["content"] for c in conversations] == ["aaaaaa", "a", "b", "c"]
    assert conversations[0]["tools"][0]["function"]["name"] == "f"
    assert conversations[1]["messages"] == [{"role": "user", "content": "Say a"}, {"role": "assistant", "content": "a"}]


@pytest.mark.parametrize(("rows", "expected"), [
    (['{"messages": [', ], "row 1: not valid JSON"),
    ([{"prompt": "x"}], "row 1: field 'response' is missing"),
    ([{"messages": CHAT}, {"messages": [{"role": "user", "content": "no answer"}]}], "row 2: field 'messages' has no"),
    ([{"messages": [{"role": "wizard", "content": "x"}]}], "row 1: field 'messages'[0] needs a 'role'"),
    ([{"prompt": "x", "response": 3}], "row 1: field 'response' must be a non-empty string"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, rows, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(SFTDataError) as caught:
        load_sft_conversations([str(path)])
    assert str(path) in str(caught.value) and expected in str(caught.value)


def test_bad_file_stops_the_run_with_one_line_before_any_work(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": CHAT}, {"prompt": "only a prompt"}])
    done = run_train(tmp_path, "bad", "--env", "toy", "--sft-data", str(bad), timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: --sft-data {bad}: row 2: field 'response' is missing (rows hold 'messages', or 'prompt' and "
        "'response')")
    assert not model_dir(tmp_path, "bad").exists()  # nothing registered, nothing written
    for flags, flag in ((["--sft-data", str(tmp_path / "none.jsonl")], "--sft-data"), (["--sft-only"], "--sft-only"),
                        (["--sft-data", str(bad), "--sft-epochs", "0"], "--sft-epochs")):
        done = run_train(tmp_path, "bad", "--env", "toy", *flags, timeout=60)
        assert done.returncode == 2 and done.stderr.strip().startswith(f"error: {flag}"), done.stderr


def test_loss_only_on_assistant_tokens(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_model(tmp_path))
    example = tokenize_conversation(tokenizer, art.Trajectory(messages_and_choices=CHAT, reward=0.0), 4096)
    assert example is not None
    trained = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels, strict=True)
                                if label != IGNORE])
    assert trained == "aaaa<|im_end|>\naaaaaa<|im_end|>\n"  # both answers and their end-of-turn, nothing else
    assert tokenize_conversation(tokenizer, art.Trajectory(messages_and_choices=CHAT, reward=0.0), 10) is None


def test_sft_stage_trains_through_art_and_is_never_repeated(tmp_path, demos):
    flags = ("--env", "toy", "--sft-data", str(demos), "--sft-epochs", "3", "--sft-only", "--wandb", "disabled")
    done = run_train(tmp_path, "sft", *flags, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    state = read_state(tmp_path, "sft")
    assert state["step"] == 3 and state["sft"]["epochs_done"] == 3
    losses = [r["loss/train"] for r in history_rows(tmp_path, "sft") if "loss/train" in r]
    assert len(losses) == 3 and losses[-1] < losses[0]  # it memorises the demonstrations
    checkpoints = sorted(p.name for p in (model_dir(tmp_path, "sft") / "checkpoints").iterdir())
    assert checkpoints == ["0000", "0001", "0002", "0003"]
    again = run_train(tmp_path, "sft", *flags, timeout=300)
    assert again.returncode == 0 and "sft epoch" not in again.stdout
    assert read_state(tmp_path, "sft")["step"] == 3 and len(history_rows(tmp_path, "sft")) == 3


def test_kill_during_sft_resumes_without_losing_or_repeating_an_epoch(tmp_path):
    many = write_jsonl(tmp_path / "many.jsonl", [{"messages": CHAT}] * 64)
    flags = ("--env", "toy", "--sft-data", str(many), "--sft-epochs", "4", "--sft-batch-size", "1",
             "--max-training-steps", "1", "--rollouts-per-group", "2", "--groups-per-step", "2", "--wandb",
             "disabled")  # 4 SFT epochs, then 1 RL step
    proc = subprocess.Popen(train_cmd(tmp_path, "kill", *flags), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=subprocess_env(), cwd=Path(__file__).resolve().parents[1],
                            start_new_session=True)
    seen = ""
    deadline = time.monotonic() + 240
    while "sft epoch 2/4" not in seen and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
    time.sleep(0.3)  # into epoch 3's batches
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "sft epoch 2/4" in seen, seen[-2000:]
    assert read_state(tmp_path, "kill")["sft"]["epochs_done"] == 2
    done = run_train(tmp_path, "kill", *flags, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "sft epoch 1/4" not in done.stdout and "sft epoch 3/4" in done.stdout
    state = read_state(tmp_path, "kill")
    assert state["sft"]["epochs_done"] == 4 and state["step"] == 5  # 4 SFT epochs, then 1 RL step
    steps = [r["step"] for r in history_rows(tmp_path, "kill")]
    assert steps == [1, 2, 3, 4, 5]


def test_env_demonstrations_feed_the_sft_stage_once(tmp_path):
    flags = ("--env", "gmsh", "--sft-demos", "on", "--sft-only", "--sft-epochs", "1", "--max-context-tokens", "3072",
             "--wandb", "disabled")
    done = run_train(tmp_path, "demos", *flags, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    demos = model_dir(tmp_path, "demos") / "sft_demos.jsonl"
    rows = [json.loads(line) for line in demos.read_text().splitlines()]
    assert len(rows) >= 15 and all(r["metadata"]["split"] == "train" for r in rows)
    assert "sft: wrote the gmsh demonstrations" in done.stdout and "sft epoch 1/1" in done.stdout
    assert read_state(tmp_path, "demos")["sft"] == {"epochs_done": 1, "epochs": 1, "conversations": len(rows)}
    again = run_train(tmp_path, "demos", *flags, timeout=600)
    assert again.returncode == 0 and "sft: wrote" not in again.stdout and "sft epoch" not in again.stdout


def test_head_on_labelled_positions_only_gives_the_full_loss(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backends.cpu_sft import assistant_token_loss

    folder = ensure_tiny_model(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder),
                           LoraConfig(r=4, target_modules=["q_proj", "lm_head"], task_type="CAUSAL_LM"))
    example = tokenize_conversation(tokenizer, art.Trajectory(messages_and_choices=CHAT, reward=0.0), 4096)
    ids, labels = torch.tensor([example.input_ids]), torch.tensor([example.labels])
    mask = torch.ones_like(ids)
    full = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(assistant_token_loss(model, ids, mask, labels), full, atol=1e-5)
