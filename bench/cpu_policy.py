"""The CPU policy's decoding and memory choices, each against what it replaced: `uv run python bench/cpu_policy.py`.

The figures behind the choices that backends/decoding.py, backends/policy.py and backends/cpu_sft.py explain in
words, on SmolLM2-135M's shapes (30 layers, 9 query heads over 3 K/V heads of 64, hidden 576, MLP 1536, a
49,152-entry vocabulary) with random tensors, so no model is loaded:
- sampling one token per row: `torch.multinomial` against `decoding.categorical`;
- attention of one new token over a padded grouped-query cache: transformers' SDPA path (`repeat_kv` copies every
  K/V head per query head) against `decoding.grouped_decode_attention`;
- the KV cache: `torch.cat` of the whole cache per token (transformers' `DynamicLayer`) against an in-place write;
- the frozen linears' memory order (`decoding.store_frozen_linears_transposed`) at decode-sized batches;
- sampler threads: all cores against `AdaptiveThreads`' choice while `--busy` other processes spin;
- the size of the full float logits that the policy and SFT never materialise (shapes times 4 bytes: computed).
One core (`torch.set_num_threads(1)`) except in the threads row. `--quick`: fewer repeats, a seconds-long check.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from backends.decoding import categorical, grouped_decode_attention  # noqa: E402
from bench.figures import figure  # noqa: E402
from entry_point import OneLineParser, at_least  # noqa: E402

LAYERS, HEADS, KV_HEADS, HEAD_DIM, HIDDEN, MLP, VOCAB = 30, 9, 3, 64, 576, 1536, 49_152


def paired_ms(old: Callable[[], object], new: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median ms of one call of each, alternating the two so that a drift in the machine's load hits both alike."""
    old(), new()  # warm-up: allocator, kernels picked
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, spent in zip((old, new), times, strict=True):
            started = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - started)
    return statistics.median(times[0]) * 1000, statistics.median(times[1]) * 1000


def sampling(rows: int, repeats: int) -> tuple[float, float]:
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(rows, VOCAB, generator=generator), dim=-1)
    return paired_ms(lambda: torch.multinomial(probs, 1, generator=generator), lambda: categorical(probs, generator),
                     repeats)


def attention(rows: int, context: int, repeats: int) -> tuple[float, float]:
    """One layer, one new token per row, over a cache of `context` positions with left padding."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = SimpleNamespace(num_key_value_groups=HEADS // KV_HEADS, is_causal=True, training=False)
    query = torch.randn(rows, HEADS, 1, HEAD_DIM)
    key, value = torch.randn(rows, KV_HEADS, context, HEAD_DIM), torch.randn(rows, KV_HEADS, context, HEAD_DIM)
    mask = torch.ones(rows, 1, 1, context, dtype=torch.bool)
    for row in range(rows):  # prompts of different lengths, left-padded as `decode` pads them
        mask[row, ..., : row % 16] = False
    scaling = HEAD_DIM**-0.5
    return paired_ms(lambda: sdpa_attention_forward(module, query, key, value, mask, scaling=scaling),
                     lambda: grouped_decode_attention(module, query, key, value, mask, scaling=scaling), repeats)


def cache_write(rows: int, context: int, repeats: int) -> tuple[float, float, float]:
    """Per token, all layers, keys and values: (ms concatenating, ms writing in place, MB the concatenation copies)."""
    cache = torch.randn(rows, KV_HEADS, context, HEAD_DIM)
    buffer = torch.empty(rows, KV_HEADS, context + 1, HEAD_DIM)
    new = torch.randn(rows, KV_HEADS, 1, HEAD_DIM)

    def write() -> None:
        buffer[:, :, context : context + 1] = new

    layer_ops = 2 * LAYERS  # keys and values of every layer
    concat, in_place = paired_ms(lambda: torch.cat([cache, new], dim=-2), write, repeats)
    copied_mb = cache.numel() * cache.element_size() * layer_ops / 1e6
    return concat * layer_ops, in_place * layer_ops, copied_mb


def linear_layout(rows: int, repeats: int) -> float:
    """Time of one layer's frozen linears with the usual (out, in) weights over the time with (in, out) ones."""
    shapes = [(HIDDEN, HIDDEN), (KV_HEADS * HEAD_DIM, HIDDEN), (KV_HEADS * HEAD_DIM, HIDDEN), (HIDDEN, HIDDEN),
              (MLP, HIDDEN), (MLP, HIDDEN), (HIDDEN, MLP)]
    usual = [torch.randn(out, inp) for out, inp in shapes]
    transposed = [w.t().contiguous().t() for w in usual]  # same values, as store_frozen_linears_transposed keeps them
    inputs = [torch.randn(rows, inp) for _, inp in shapes]

    def layer(weights: list[torch.Tensor]) -> Callable[[], None]:
        return lambda: [torch.nn.functional.linear(x, w) for x, w in zip(inputs, weights, strict=True)]

    old, new = paired_ms(layer(usual), layer(transposed), repeats * 20)
    return old / new


def decode_threads(threads: int, rows: int, tokens: int) -> float:
    """ms per token of a decode-shaped loop (many small matmuls per token) on `threads` intra-op threads."""
    torch.set_num_threads(threads)
    x, w = torch.randn(rows, HIDDEN), torch.randn(HIDDEN, HIDDEN)

    def token() -> None:
        h = x
        for _ in range(LAYERS * 7):  # about one small matmul per linear of every layer
            h = torch.tanh(h @ w)

    token()  # warm-up: the thread pool at its new size
    try:
        started = time.perf_counter()
        for _ in range(tokens):
            token()
        return (time.perf_counter() - started) / tokens * 1000
    finally:
        torch.set_num_threads(1)


def with_busy_processes(count: int, fn: Callable[[], float]) -> float:
    """`fn()` while `count` other processes spin on the CPU, as a rollout's tool or an env service does."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.2)
        return fn()
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()


def logits_gb(rows: int, tokens: int) -> float:
    """One float32 copy of the logits of `rows` x `tokens` positions over the vocabulary."""
    return rows * tokens * VOCAB * 4 / 1e9


def main() -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=at_least(1), default=32, help="sampled rows in the batch (default 32)")
    parser.add_argument("--context", type=at_least(1), default=512, help="cache positions at the measured token (512)")
    parser.add_argument("--busy", type=at_least(0), default=1, help="other processes spinning in the threads row (1)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats: a check that the bench runs")
    args = parser.parse_args()
    if args.rows < 1 or args.context < 1 or args.busy < 0:
        parser.error("--rows and --context must be >= 1, --busy >= 0")
    repeats = 3 if args.quick else 20
    torch.set_num_threads(1)
    torch.manual_seed(0)

    old, new = sampling(args.rows, repeats)
    print(f"sampling, {args.rows} rows x {VOCAB} entries: torch.multinomial {old:.2f} ms, categorical {new:.2f} ms")
    figure("sampling: torch.multinomial / categorical", old / new, "> 1")
    old, new = attention(args.rows, args.context, repeats)
    print(f"attention, one layer, one token per row over {args.context} positions: repeat_kv + SDPA {old:.2f} ms, "
          f"grouped {new:.2f} ms")
    figure("decode attention: repeat_kv / grouped", old / new, "> 1")
    concat, in_place, copied = cache_write(args.rows, args.context, repeats)
    print(f"KV cache, all layers, one token: torch.cat {concat:.2f} ms ({copied:.0f} MB copied), "
          f"in-place write {in_place:.2f} ms")
    figure("KV cache per token: torch.cat / in-place", concat / in_place, "> 1")
    for rows in sorted({1, 8, args.rows}):
        ratio = linear_layout(rows, repeats)
        print(f"frozen linears of one layer, rows={rows}: (out, in) weights / (in, out) weights = {ratio:.2f}")
        figure(f"frozen linears, rows={rows}: usual / transposed layout", ratio)

    from backends.sample_threads import AdaptiveThreads

    cores = os.cpu_count() or 1
    if cores > 1:
        tokens = 3 if args.quick else 15

        def adaptive_choice() -> int:
            chooser = AdaptiveThreads(cores)
            chooser.choose()
            time.sleep(2 * chooser.interval_s)
            return chooser.choose()

        idle_choice = adaptive_choice()
        chosen = int(with_busy_processes(args.busy, adaptive_choice))
        all_cores = with_busy_processes(args.busy, lambda: decode_threads(cores, args.rows, tokens))
        adaptive = with_busy_processes(args.busy, lambda: decode_threads(chosen, args.rows, tokens))
        print(f"decode-shaped loop with {args.busy} other busy process(es): {cores} threads {all_cores:.1f} ms per "
              f"token, {chosen} (AdaptiveThreads' choice) {adaptive:.1f} ms; on the idle machine it chose "
              f"{idle_choice} of {cores}")
        figure(f"sampler threads with {args.busy} busy: all cores / adaptive choice", all_cores / adaptive, ">= 1")
        figure("sampler threads chosen on an idle machine / cores", idle_choice / cores, ">= 1")
    else:
        print("decode threads: skipped (1 core: there is nothing to choose)")

    sizes = {"prefill, 32 prompts x 200 tokens": logits_gb(32, 200), "SFT batch, 2 x 850 tokens": logits_gb(2, 850),
             "RL batch, 8 x 900 tokens": logits_gb(8, 900)}
    for label, size in sizes.items():  # log-softmax, cross-entropy and autograd each keep another copy or more
        print(f"full float logits (computed, one copy), {label}: {size:.2f} GB")
        figure(f"full logits, {label}", size, unit="GB")


if __name__ == "__main__":
    main()
