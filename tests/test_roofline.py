"""bench/roofline.py: what FLOPs per token count, the fraction's arithmetic, the matmul ceiling's measurement; and
that the benches that print it still answer --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.roofline import counted_params, cpu_line, flops_per_token, measure_matmul_flops, roofline_fraction

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from backends.tiny_random_model import ensure_tiny_model

    return AutoModelForCausalLM.from_pretrained(ensure_tiny_model(tmp_path_factory.mktemp("base")))


def test_counts_every_parameter_but_the_input_embedding(tiny_model):
    total = sum(p.numel() for p in tiny_model.parameters())
    embedding = tiny_model.get_input_embeddings().weight.numel()
    head = tiny_model.get_output_embeddings().weight
    assert head is not tiny_model.get_input_embeddings().weight  # the tiny model's head is its own matmul
    assert counted_params(tiny_model) == total - embedding
    assert flops_per_token(tiny_model, "decode") == flops_per_token(tiny_model, "prefill") == 2 * (total - embedding)
    assert flops_per_token(tiny_model, "train") == 4 * (total - embedding)
    with pytest.raises(ValueError, match="kind"):
        flops_per_token(tiny_model, "sample")


def test_lora_parameters_are_counted_too(tiny_model):
    import copy

    from peft import LoraConfig, get_peft_model

    from backends.tiny_random_model import LORA_TARGETS

    peft_model = get_peft_model(copy.deepcopy(tiny_model), LoraConfig(r=4, target_modules=LORA_TARGETS))
    lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert lora > 0
    assert counted_params(peft_model) == counted_params(tiny_model) + lora


def test_a_head_tied_to_the_embedding_counts_once():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())  # the shared matrix once
    assert counted_params(model) == total


def test_roofline_fraction_arithmetic():
    assert roofline_fraction(100.0, 2e6, 1e9) == pytest.approx(0.2)
    assert roofline_fraction(0.0, 2e6, 1e9) == 0.0
    with pytest.raises(ValueError):
        roofline_fraction(1.0, 1.0, 0.0)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_matmul_ceiling_is_positive_and_restores_the_thread_count(dtype):
    import torch

    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    torch.set_num_threads(other)
    try:
        assert measure_matmul_flops(dtype, threads=1 if other != 1 else 2, size=64, min_seconds=0.05) > 0
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(before)


def test_cpu_line_names_the_flags():
    line = cpu_line()
    assert line.startswith("CPU: ") and "\n" not in line
    for flag in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile"):
        assert flag in line


@pytest.mark.parametrize("script", ["bench/serving.py", "bench/train_step.py"])
def test_bench_help_exits_zero(script):
    done = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--dtype" in done.stdout


def test_end_to_end_bench_help_names_the_old_revision():
    done = subprocess.run([sys.executable, "bench/end_to_end.py", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--old-rev" in done.stdout
