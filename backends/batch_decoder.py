"""Continuous batching for the CPU sampler: requests that arrive while a batch decodes join it at the next token.

A batch that only ends when its longest row ends makes every request that arrives meanwhile wait for it, and an
agent's next turn arrives exactly then: a tool call came back while other rollouts are still decoding. Here the
rows of a batch share one K/V buffer per layer, right-aligned on the current length: a joining request is
prefilled on its own (a batched prefill of everything that arrived together), its cache is placed so that it ends
at the same column, and from the next token on it decodes with the rest. Rows carry their own positions, lengths
and temperatures, so where a row sits in the buffer changes nothing it computes. Rows that ended leave the batch
once they are a quarter of it (dropping copies the cache), and at every join.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from backends.bf16_head import SplitPrecisionHead
from backends.decoding import Sample, SampleRequest, buffered_layer, draw

DoneCallback = Callable[[int, list[Sample]], None]
Poll = Callable[[], list[tuple[SampleRequest, Callable[[list[Sample]], None]]]]


@dataclass
class _Submitted:
    """One `add` call's requests: where their samples go, and how many rows each still decodes."""

    requests: list[SampleRequest]
    on_done: DoneCallback | None
    results: list[list[Sample | None]] = field(default_factory=list)
    rows_left: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.results = [[None] * r.n for r in self.requests]
        self.rows_left = [r.n for r in self.requests]


@dataclass(frozen=True)
class _Slot:
    """Which request (and which of its `n` samples) a batch row decodes."""

    submitted: _Submitted
    request: int
    sample: int


class BatchDecoder:
    """Decodes many requests as one batch that new requests can join between tokens (see the module docstring).

    Not thread safe: one thread calls `add` and `step` (the policy's sampler, under its lock)."""

    def __init__(self, model: torch.nn.Module, *, pad_id: int, eos_ids: Iterable[int], generator: torch.Generator):
        from transformers.cache_utils import Cache

        self.model, self.pad_id, self.generator = model, pad_id, generator
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.body, self.head = causal_lm.model, causal_lm.get_output_embeddings()
        self.eos = torch.tensor(sorted(eos_ids), dtype=torch.long)
        self.layers = model.config.num_hidden_layers
        self.cache = Cache(layers=[buffered_layer()(0) for _ in range(self.layers)])
        self.length = 0  # columns of the shared K/V buffer in use; every row's last entry is at length - 1
        self.slots: list[_Slot] = []
        self.logits = torch.empty(0)  # each row's next-token logits, not yet drawn from
        self.hidden = torch.empty(0)  # the last hidden state they came from (for the drawn token's exact logit)
        self.mask = torch.zeros((0, 0), dtype=torch.long)  # which buffer columns each row attends to
        self.prompt_lengths = torch.zeros(0, dtype=torch.long)
        self.counts = torch.zeros(0, dtype=torch.long)  # tokens generated per row
        self.limits = torch.zeros(0, dtype=torch.long)
        self.temps = torch.zeros(0)
        self.tokens = torch.zeros((0, 0), dtype=torch.long)
        self.logprobs = torch.zeros((0, 0))
        self.ended = torch.zeros(0, dtype=torch.bool)
        self.stopped = torch.zeros(0, dtype=torch.bool)

    @property
    def rows(self) -> int:
        return len(self.slots)

    def add(self, requests: list[SampleRequest], on_done: DoneCallback | None = None) -> list[list[Sample | None]]:
        """Prefill `requests` and join them to the batch; `on_done(i, samples)` fires when request i has ended.

        Returns the list their samples are written to (filled as rows end)."""
        submitted = _Submitted(requests, on_done)
        slots = [_Slot(submitted, i, k) for i, r in enumerate(requests) for k in range(r.n)]
        if not slots:
            return submitted.results  # type: ignore[return-value]
        hidden, cache, width, prompt_mask = self._prefill(requests)
        self._drop(~self.ended)  # ended rows leave before the buffers are copied anyway
        self._join(slots, hidden, cache, width, prompt_mask)
        return submitted.results  # type: ignore[return-value]

    def _prefill(self, requests: list[SampleRequest]) -> tuple[torch.Tensor, list, int, torch.Tensor]:
        """One left-padded forward of the new prompts; returns each row's last hidden state (only the last position
        goes through the output head, in `_join`), its cache, the width and the prompt mask."""
        from transformers.cache_utils import Cache

        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[i, width - len(r.prompt_ids):] = 1
        cache = Cache(layers=[buffered_layer()(width) for _ in range(self.layers)])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.body(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                        use_cache=True)
        per_row = torch.tensor([i for i, r in enumerate(requests) for _ in range(r.n)])
        caches = [(layer.keys[per_row], layer.values[per_row]) for layer in cache.layers]
        return out.last_hidden_state[:, -1][per_row], caches, width, mask[per_row]

    def _join(self, slots: list[_Slot], hidden: torch.Tensor, cache: list, width: int,
              prompt_mask: torch.Tensor) -> None:
        """New buffers right-aligned on max(old length, new width), sized for the longest row's remaining tokens."""
        old, new = self.rows, len(slots)
        length = max(self.length, width)
        limits = torch.tensor([s.submitted.requests[s.request].max_tokens for s in slots])
        remaining = torch.cat([torch.where(self.ended, 0, self.limits - self.counts), limits])
        capacity = length + int(remaining.max())
        for layer, (keys, values) in zip(self.cache.layers, cache, strict=True):
            layer.join(old + new, capacity, length, self.length, keys, values)
        mask = torch.ones((old + new, capacity), dtype=torch.long)
        mask[:old, : length - self.length] = 0
        mask[:old, length - self.length : length] = self.mask[:, : self.length]
        mask[old:, : length - width] = 0
        mask[old:, length - width : length] = prompt_mask
        self.mask, self.length = mask, length
        self.slots += slots
        self.hidden = torch.cat([self.hidden, hidden]) if old else hidden
        self.logits = torch.cat([self.logits, self.head(hidden)]) if old else self.head(hidden)
        self.prompt_lengths = torch.cat([self.prompt_lengths, prompt_mask.sum(-1)])
        self.counts = torch.cat([self.counts, torch.zeros(new, dtype=torch.long)])
        self.limits = torch.cat([self.limits, limits])
        self.temps = torch.cat([self.temps, torch.tensor(
            [max(s.submitted.requests[s.request].temperature, 0.0) for s in slots])])
        steps = int(self.limits.max())
        self.tokens = _widen(self.tokens, steps, new)
        self.logprobs = _widen(self.logprobs, steps, new)
        self.ended = torch.cat([self.ended, torch.zeros(new, dtype=torch.bool)])
        self.stopped = torch.cat([self.stopped, torch.zeros(new, dtype=torch.bool)])

    def step(self) -> None:
        """Draw one token for every row, hand over the requests that ended, and run the next forward pass."""
        if not self.slots:
            return
        token, token_logprob = draw(self.logits, self.temps, self.generator)
        if isinstance(self.head, SplitPrecisionHead):  # a logit outside the exact top: take it exactly too
            token_logprob += self.head.exact(self.hidden, token) - self.logits.gather(-1, token[:, None])[:, 0]
        live = ~self.ended  # rows that ended stay in the batch until a quarter have; they record nothing more
        rows = live.nonzero().squeeze(-1)
        self.tokens[rows, self.counts[rows]] = token[rows]
        self.logprobs[rows, self.counts[rows]] = token_logprob[rows]
        self.counts += live.long()
        eos_now = torch.isin(token, self.eos) & ~self.ended
        now = eos_now | ((self.counts >= self.limits) & ~self.ended)
        if bool(now.any()):
            self.stopped |= eos_now
            self.ended |= now
            for row in now.nonzero().squeeze(-1).tolist():
                self._finish(row)
            finished = int(self.ended.sum())
            if finished == self.rows:
                self._drop(torch.zeros(self.rows, dtype=torch.bool))
                return
            if finished * 4 >= self.rows:  # dropping rows copies the cache, so it waits for a quarter of them
                keep = ~self.ended
                token = token[keep]
                self._drop(keep)
        positions = (self.prompt_lengths + self.counts - 1).unsqueeze(-1)
        self.length += 1
        out = self.body(input_ids=token.unsqueeze(-1), attention_mask=self.mask[:, : self.length],
                        position_ids=positions, past_key_values=self.cache, use_cache=True)
        self.hidden = out.last_hidden_state[:, -1]
        self.logits = self.head(self.hidden)

    def _finish(self, row: int) -> None:
        slot, n = self.slots[row], int(self.counts[row])
        reason = "stop" if bool(self.stopped[row]) else "length"
        submitted = slot.submitted
        submitted.results[slot.request][slot.sample] = Sample(self.tokens[row, :n].tolist(),
                                                              self.logprobs[row, :n].tolist(), reason)
        submitted.rows_left[slot.request] -= 1
        if submitted.rows_left[slot.request] == 0 and submitted.on_done is not None:
            submitted.on_done(slot.request, submitted.results[slot.request])  # type: ignore[arg-type]

    def _drop(self, keep: torch.Tensor) -> None:
        if bool(keep.all()):
            return
        index = keep.nonzero().squeeze(-1)
        self.slots = [self.slots[i] for i in index.tolist()]
        for layer in self.cache.layers:
            layer.batch_select_indices(index)
        for name in ("logits", "hidden", "mask", "prompt_lengths", "counts", "limits", "temps", "tokens", "logprobs",
                     "ended", "stopped"):
            value = getattr(self, name)
            setattr(self, name, value[index])
        if not self.slots:
            self.length = 0


def _widen(table: torch.Tensor, columns: int, new_rows: int) -> torch.Tensor:
    """`table` with at least `columns` columns and `new_rows` more (zero) rows."""
    rows, width = table.shape
    out = table.new_zeros((rows + new_rows, max(columns, width)))
    out[:rows, :width] = table
    return out


def decode(model: torch.nn.Module, requests: list[SampleRequest], *, pad_id: int, eos_ids: Iterable[int],
           generator: torch.Generator, on_done: DoneCallback | None = None,
           poll: Poll | None = None) -> list[list[Sample]]:
    """Sample every request; per-row temperature and length, stop on any of `eos_ids`.

    `on_done(i, samples)` is called as soon as every row of request `i` has ended, so its caller need not wait for
    the longest row of the batch. `poll()` is asked between tokens for requests to join (each with its own
    callback, which gets its samples); decoding ends when no row is left and `poll` has nothing more."""
    decoder = BatchDecoder(model, pad_id=pad_id, eos_ids=eos_ids, generator=generator)
    results = decoder.add(requests, on_done)
    while True:
        decoder.step()
        arrived = poll() if poll is not None else []
        if arrived:  # one batched prefill for everything that arrived together
            callbacks = [callback for _, callback in arrived]
            decoder.add([request for request, _ in arrived], lambda i, samples, to=callbacks: to[i](samples))
        if not decoder.rows:
            return results  # type: ignore[return-value]
