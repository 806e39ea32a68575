"""How close a bench comes to the machine's matmul ceiling: tokens/s x FLOPs per token / measured matmul FLOP/s.

A tokens/s figure alone says nothing across machines (2 cores or 64, with or without native bf16); the roofline
fraction does. The ceiling is measured in the same run, on the same threads and in the same float type as the
code under test, because a data sheet's peak is never reached on a shared or throttled VM, and the other work
on the machine at the time weighs on both the bench and the ceiling alike.

FLOPs per token count matmuls only, the way the usual `2 x params` rule does: every weight takes part in one
multiply-add per token in a forward pass. The input embedding is a row lookup, not a matmul, so it is left out;
the output head is a matmul and is counted, also when it shares its weight with the embedding. Attention's
score and value products (which grow with the context) and the elementwise work are left out, so the fraction
errs low. A LoRA training step is a forward (2 x params) plus a backward that needs the gradient with respect to
the activations (another 2 x params) but not with respect to the frozen weights: about 4 x params, not the 6 x of
full fine-tuning.

Import cost is nothing until a function runs (torch is imported inside), so a bench's `--help` stays instant.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

FLOPS_PER_PARAM = {"decode": 2, "prefill": 2, "train": 4}
WATCHED_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
WARMUP_CALLS = 3


def measure_matmul_flops(dtype: str, threads: int, size: int = 1024, min_seconds: float = 1.0) -> float:
    """Matmul FLOP/s of square `size` x `size` products in `dtype` ("bf16" or "fp32") on `threads` intra-op threads.

    A few untimed products come first (oneDNN builds its bf16 kernels on the first call), then products are timed
    one by one until `min_seconds` have passed; the rate is 2 x size^3 over the median product's time, so a
    moment of contention from another process moves it little. torch's thread count is restored afterwards."""
    import torch

    from backends.cpu_dtype import torch_dtype

    kind = torch_dtype(dtype)
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=generator).to(kind)
        b = torch.randn(size, size, generator=generator).to(kind)
        out = torch.empty(size, size, dtype=kind)
        times: list[float] = []
        with torch.inference_mode():
            for _ in range(WARMUP_CALLS):
                torch.mm(a, b, out=out)
            started = time.perf_counter()
            while not times or time.perf_counter() - started < min_seconds:
                begin = time.perf_counter()
                torch.mm(a, b, out=out)
                times.append(time.perf_counter() - begin)
    finally:
        torch.set_num_threads(previous)
    return 2.0 * size**3 / statistics.median(times)


def counted_params(model: Any) -> int:
    """Parameters that take part in a matmul per token: all of them but the input embedding, the output head
    counted once even where it is tied to the embedding. LoRA factors are parameters too and are counted; a tensor
    shared by several modules is counted once."""
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    skipped = {id(p) for p in embedding.parameters()} if embedding is not None else set()
    counted = {id(p): p.numel() for p in model.parameters() if id(p) not in skipped}
    if head is not None:
        counted.update({id(p): p.numel() for p in head.parameters()})
    return sum(counted.values())


def flops_per_token(model: Any, kind: str) -> float:
    """Matmul FLOPs per token: 2 x counted params for "decode" and "prefill", 4 x for a LoRA "train" token."""
    if kind not in FLOPS_PER_PARAM:
        raise ValueError(f"kind must be one of {', '.join(FLOPS_PER_PARAM)}, not {kind!r}")
    return float(FLOPS_PER_PARAM[kind] * counted_params(model))


def roofline_fraction(tokens_per_s: float, flops_per_token: float, flops_per_s: float) -> float:
    """Share of the measured matmul ceiling the tokens/s stand for: tokens/s x FLOPs per token / FLOP/s."""
    if flops_per_s <= 0:
        raise ValueError(f"flops_per_s must be positive, not {flops_per_s}")
    return tokens_per_s * flops_per_token / flops_per_s


def cpu_model_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """`model name` from /proc/cpuinfo (x86 Linux), else what `platform` knows."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_line() -> str:
    """One line naming the CPU, its core count and the flags that decide bf16 speed, e.g. for docs/PERFORMANCE.md:
    avx512f (fp32 width), avx512_bf16 and amx_bf16/amx_tile (native bf16; without them bf16 is emulated)."""
    from backends.cpu_dtype import cpu_flags

    flags = cpu_flags()
    seen = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in WATCHED_FLAGS)
    return f"CPU: {cpu_model_name()}, {os.cpu_count()} cores; {seen}"


def gflops(flops_per_s: float) -> str:
    return f"{flops_per_s / 1e9:.1f} GFLOP/s"
