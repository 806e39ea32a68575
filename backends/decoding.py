"""Batched sampling with a KV cache for the CPU policy server: what `LoraPolicy.sample` runs under its lock.

Decoding on a CPU is many small operations per token, so each choice below removes work that grew with the batch,
the cache or the vocabulary; each one keeps the sampled distribution and the returned logprobs what they were
(bench/cpu_policy.py times each against what it replaced, on SmolLM2-135M's shapes):

- the prompt is prefilled once per request (its `n` rows copy the cache) and only its last position goes through
  the LM head: the full prefill logits are rows x prompt length x vocabulary floats;
- the cache is written in place (`BufferedLayer`) instead of `torch.cat` of the whole cache for every token;
- attention reads the grouped K/V heads as they are (`grouped_decode_attention`) instead of copying them to every
  query head for the whole cache, every layer, every token;
- one log_softmax gives both the logprobs and the sampling distribution, and `categorical` replaces
  `torch.multinomial`, which draws a random number for every vocabulary entry;
- tokens and logprobs stay tensors until a request is done; rows that ended leave the batch once they are a
  quarter of it, and a request is handed to `on_done` as soon as all its rows have ended.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

DECODE_ATTENTION = "sdpa_grouped_decode"


@dataclass
class SampleRequest:
    """One prompt to complete; `n` samples of it are drawn."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    n: int = 1


@dataclass
class Sample:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" when the model ended the turn, "length" when max_tokens cut it


def categorical(probs: torch.Tensor, generator: torch.Generator, block: int = 256) -> torch.Tensor:
    """One index per row drawn with probability proportional to `probs` (rows need not sum to 1).

    The same distribution as `torch.multinomial(probs, 1)`, which on CPU draws an exponential variate for every
    vocabulary entry of every row (bench/cpu_policy.py times both). Inverse-CDF sampling in
    two levels, a block of `block` entries and then an entry in it, with float64 sums: a rare token keeps its
    float32 probability instead of drowning in the rounding of a 49k-long float32 cumsum.
    """
    rows, vocab = probs.shape
    blocks = torch.nn.functional.pad(probs, (0, -vocab % block)).view(rows, -1, block)
    block_cdf = blocks.sum(-1).double().cumsum(-1)
    u = torch.rand(rows, 1, generator=generator, dtype=torch.float64) * block_cdf[:, -1:]
    chosen = torch.searchsorted(block_cdf, u, right=True).clamp_(max=block_cdf.shape[1] - 1)
    before = torch.where(chosen > 0, block_cdf.gather(1, (chosen - 1).clamp(min=0)), 0.0)
    inside = blocks.gather(1, chosen.unsqueeze(-1).expand(-1, 1, block)).squeeze(1).double().cumsum(-1)
    offset = torch.searchsorted(inside, u - before, right=True).clamp_(max=block - 1)
    return (chosen * block + offset).squeeze(-1).clamp_(max=vocab - 1)  # past the end only by rounding


def draw(logits: torch.Tensor, temps: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row at its temperature (0 = greedy) and its logprob under the untempered policy.

    softmax(logits / T) = softmax(logprobs / T) (the log-normaliser is a per-row constant), so one log_softmax
    serves both the returned logprobs and the sampling distribution; at T = 1 that is just exp(logprobs).
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    greedy = temps <= 0
    if bool(greedy.all()):
        token = logprobs.argmax(-1)
    else:
        if bool((temps == 1).all()):
            probs = logprobs.exp()
        else:
            probs = torch.softmax(logprobs / temps.clamp(min=1e-5).unsqueeze(-1), dim=-1)
        token = categorical(probs, generator)
        if bool(greedy.any()):
            token = torch.where(greedy, logprobs.argmax(-1), token)
    return token, logprobs.gather(-1, token.unsqueeze(-1)).squeeze(-1)


def grouped_decode_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, except for one new token per row against a grouped-query (GQA) cache.

    With a padding mask, transformers copies every K/V head once per query head (`repeat_kv`) before SDPA, for the
    whole cache, every layer, every token. For a single query position the query heads of one K/V group can ride
    in SDPA's query-length axis instead (the mask broadcasts over it), so the cache is read where it is. Prefill
    and training (several positions) go to transformers' own function unchanged.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    if length != 1 or heads == kv_heads or module.training:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    out = torch.nn.functional.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask,
                                                           scale=kwargs.get("scaling"))
    return out.reshape(batch, heads, 1, dim).transpose(1, 2), None


def use_grouped_decode_attention(model: torch.nn.Module) -> None:
    """Switch a transformers model that uses SDPA to `grouped_decode_attention` (same masks as SDPA)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if model.config._attn_implementation != "sdpa":
        return
    AttentionInterface.register(DECODE_ATTENTION, grouped_decode_attention)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)
    model.set_attn_implementation(DECODE_ATTENTION)


def store_frozen_linears_transposed(model: torch.nn.Module) -> None:
    """Keep each frozen `nn.Linear` weight in (in, out) memory order, as a transposed view of the same values.

    `F.linear` multiplies by `weight.T`, and for the few rows of a decode step the BLAS may run faster with that
    operand contiguous; prefill- and training-sized batches are indifferent to the order. Whether it pays depends
    on the BLAS build and the CPU (bench/cpu_policy.py prints the ratio at 1, 8 and 32 rows); it costs nothing
    either way: no extra memory, identical values. A weight shared with the embedding (a tied LM head) is left
    alone so that token lookups stay row reads.
    """
    embedding = model.get_input_embeddings().weight
    for module in model.modules():
        if type(module) is torch.nn.Linear and not module.weight.requires_grad and module.weight is not embedding:
            module.weight.data = module.weight.data.t().contiguous().t()


@functools.cache
def _buffered_layer() -> type:
    """Built on first use so that importing this module does not import transformers."""
    from transformers.cache_utils import DynamicLayer

    class BufferedLayer(DynamicLayer):
        """A `DynamicLayer` whose keys and values are views of a buffer sized for the whole request up front.

        `DynamicLayer.update` concatenates the whole cache with each new token (every layer, every step: a copy
        that grows with the rows and the length, bench/cpu_policy.py prints its size); here the new token is
        written in place.
        """

        def __init__(self, capacity: int):
            super().__init__()
            self.capacity = capacity
            self.length = 0

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor,
                   cache_kwargs: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.dtype, self.device = key_states.dtype, key_states.device
                batch, heads, length, dim = key_states.shape
                self._keys = key_states.new_empty((batch, heads, max(self.capacity, length), dim))
                self._values = value_states.new_empty((batch, heads, max(self.capacity, length), dim))
                self.is_initialized = True
            end = self.length + key_states.shape[-2]
            self._keys[:, :, self.length : end] = key_states
            self._values[:, :, self.length : end] = value_states
            self.length = end
            self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self._keys, self._values = self._keys[indices], self._values[indices]
            self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]

    return BufferedLayer


def decode(model: torch.nn.Module, requests: list[SampleRequest], *, pad_id: int, eos_ids: Iterable[int],
           generator: torch.Generator, on_done: Callable[[int, list[Sample]], None] | None = None,
           ) -> list[list[Sample]]:
    """Sample every request in one left-padded batch; per-row temperature and length, stop on any of `eos_ids`.

    `on_done(i, samples)` is called as soon as every row of request `i` has ended, so its caller need not wait for
    the longest row of the batch. The only per-token host syncs are "did a row end, are all rows done?".
    """
    from transformers.cache_utils import Cache

    rows = [i for i, r in enumerate(requests) for _ in range(r.n)]
    if not rows:
        return []
    width = max(len(r.prompt_ids) for r in requests)
    ids = torch.full((len(requests), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(requests), width + max(r.max_tokens for r in requests)), dtype=torch.long)
    for i, r in enumerate(requests):
        ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids, dtype=torch.long)
        mask[i, width - len(r.prompt_ids) :] = 1  # the prompt and every generated position are attended
    temps = torch.tensor([max(requests[i].temperature, 0.0) for i in rows])
    limits = torch.tensor([requests[i].max_tokens for i in rows])
    steps = int(limits.max())
    tokens = torch.zeros((len(rows), steps), dtype=torch.long)
    logprobs = torch.zeros((len(rows), steps))
    lengths = limits.clone()  # lowered to t + 1 where a row stops on an end-of-turn token at step t
    stopped = torch.zeros(len(rows), dtype=torch.bool)
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long)
    first_row = list(itertools.accumulate((r.n for r in requests), initial=0))  # a request's rows are contiguous
    by_row: list[Sample | None] = [None] * len(rows)
    grouped: list[list[Sample]] = [[] for _ in requests]
    rows_left = [r.n for r in requests]

    def finish(row: int) -> None:
        n, request = int(lengths[row]), rows[row]
        reason = "stop" if bool(stopped[row]) else "length"
        by_row[row] = Sample(tokens[row, :n].tolist(), logprobs[row, :n].tolist(), reason)
        rows_left[request] -= 1
        if rows_left[request] == 0:
            grouped[request] = by_row[first_row[request] : first_row[request + 1]]  # type: ignore[assignment]
            if on_done is not None:
                on_done(request, grouped[request])

    layer = _buffered_layer()
    cache = Cache(layers=[layer(width + steps) for _ in range(model.config.num_hidden_layers)])
    positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask[:, :width], position_ids=positions, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    live = torch.tensor(rows)  # batch position -> request here, -> sample row from the first step on
    logits = out.logits[:, -1][live]
    if len(rows) > len(requests):  # n > 1: the rows of a request copy its prompt's cache
        cache.batch_select_indices(live)
    mask, positions = mask[live], positions[live, -1:]
    live = torch.arange(len(rows))
    ended = torch.zeros(len(rows), dtype=torch.bool)
    for t in range(steps):
        token, token_logprob = draw(logits, temps[live], generator)
        tokens[live, t], logprobs[live, t] = token, token_logprob
        eos_now = torch.isin(token, eos) & ~ended
        now = eos_now | ((limits[live] <= t + 1) & ~ended)
        if bool(now.any()):
            stopped[live[eos_now]] = True
            lengths[live[eos_now]] = t + 1
            ended |= now
            for row in live[now].tolist():
                finish(row)
            finished = int(ended.sum())
            if finished == len(live):
                break
            if finished * 4 >= len(live):  # dropping rows copies the cache, so it waits for a quarter of them
                keep = (~ended).nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                live, token, mask, positions, ended = (x[keep] for x in (live, token, mask, positions, ended))
        positions = positions + 1
        out = model(input_ids=token.unsqueeze(-1), attention_mask=mask[:, : width + t + 1], position_ids=positions,
                    past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1]
    return grouped
