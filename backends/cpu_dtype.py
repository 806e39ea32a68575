"""Which float type the CPU backend computes its frozen base model in: bf16 where the CPU multiplies bf16 natively.

CPUs with `avx512_bf16` (AMD Zen 4, Intel Cooper Lake on) or AMX (`amx_bf16`, Intel Sapphire Rapids on) run bf16
matmuls several times faster than fp32 (bench/serving.py measures both in the same run); elsewhere bf16 is emulated
and slower than fp32, so `auto` picks fp32 there. Only the frozen base is bf16: the LoRA adapter and its optimizer
state stay fp32 (peft upcasts the adapter), and every logprob, sampled or trained on, is an fp32 head's: the
split-precision head of backends/bf16_head.py, or `use_float32_head` where an adapter wraps the head.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

CPU_DTYPES = ("auto", "bf16", "fp32")
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
BF16_MIN_HIDDEN = 256  # `auto` keeps narrower (test-sized) models in fp32: see resolve_cpu_dtype


@functools.cache
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The first processor's feature flags (`flags` on x86 Linux); empty where the file or the line is missing."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_bf16(flags: frozenset[str] | None = None) -> bool:
    """True where the CPU reports native bf16 arithmetic (`avx512_bf16` or `amx_bf16`)."""
    return bool((cpu_flags() if flags is None else flags) & BF16_FLAGS)


def resolve_cpu_dtype(choice: str, flags: frozenset[str] | None = None, hidden_size: int | None = None) -> str:
    """`auto` -> `bf16` where the CPU has it and the model is wide enough to gain, else `fp32`; `bf16` and `fp32`
    are taken as asked.

    Below BF16_MIN_HIDDEN (test-sized models) each matmul is too small for bf16's faster multiply to pay for the
    casts around it (the fp32 adapter's input and output, the fp32 head's input), so fp32 is faster there."""
    if choice not in CPU_DTYPES:
        raise ValueError(f"cpu dtype must be one of {', '.join(CPU_DTYPES)}, not {choice!r}")
    if choice != "auto":
        return choice
    wide_enough = hidden_size is None or hidden_size >= BF16_MIN_HIDDEN
    return "bf16" if cpu_has_bf16(flags) and wide_enough else "fp32"


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]


def use_float32_head(model: torch.nn.Module) -> None:
    """Give a bf16 causal LM an fp32 output head of its own (untied from the bf16 embedding) that takes the last
    hidden state up to fp32: logits rounded to bf16 would move a logprob by up to half a bf16 step of the logit
    (0.06 at a logit of 20), the same for the sampler and the trainer only by luck of summation order."""
    import torch

    head = model.get_output_embeddings()
    if head is None or head.weight.dtype == torch.float32:
        return
    head.weight = torch.nn.Parameter(head.weight.detach().float().clone(), requires_grad=False)
    if getattr(head, "bias", None) is not None:
        head.bias = torch.nn.Parameter(head.bias.detach().float().clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    head.register_forward_pre_hook(lambda _module, args: (args[0].float(), *args[1:]))
