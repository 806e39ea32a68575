"""The pieces of batched sampling with a KV cache that backends/batch_decoder.py puts together.

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

import contextlib
import functools
from collections.abc import Iterator
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
def buffered_layer() -> type:
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

        def join(self, rows: int, capacity: int, length: int, old_length: int, keys: torch.Tensor,
                 values: torch.Tensor) -> None:
            """New buffers of `rows` x `capacity` columns: the rows held now, then the new rows' `keys`/`values`,
            each right-aligned to end at column `length` (columns before a row's start are zeros, never attended)."""
            held = self._keys.shape[0] if self.is_initialized else 0
            width = keys.shape[-2]
            new_keys = keys.new_zeros((rows, keys.shape[1], capacity, keys.shape[3]))
            new_values = torch.zeros_like(new_keys)
            if held:
                new_keys[:held, :, length - old_length : length] = self._keys[:, :, :old_length]
                new_values[:held, :, length - old_length : length] = self._values[:, :, :old_length]
            new_keys[held:, :, length - width : length] = keys
            new_values[held:, :, length - width : length] = values
            self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
            self._keys, self._values, self.capacity, self.length = new_keys, new_values, capacity, length
            self.keys, self.values = new_keys[:, :, :length], new_values[:, :, :length]

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self._keys, self._values = self._keys[indices], self._values[indices]
            self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]

    return BufferedLayer


def _base_linear(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(x.to(weight.dtype), weight, bias)


def _lora_linear(weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor, scaled_b_t: torch.Tensor,
                 x: torch.Tensor) -> torch.Tensor:
    """x W^T + (x A^T)(s B)^T in three kernels: the base linear, the rank-r projection, and one fused add-multiply
    into the base output (peft's forward takes seven: two casts, two matmuls, a scale, an add, a cast back)."""
    y = torch.nn.functional.linear(x.to(weight.dtype), weight, bias)  # a cast only for an fp32 head on bf16 input
    y.view(-1, y.shape[-1]).addmm_(torch.nn.functional.linear(x.to(lora_a.dtype), lora_a).view(
        -1, lora_a.shape[0]), scaled_b_t)
    return y


@contextlib.contextmanager
def lean_lora_layers(model: torch.nn.Module) -> Iterator[None]:
    """While sampling (no grad, eval mode), peft's LoRA linears answer through `_lora_linear`, or the bare base
    linear where the adapter is off.

    At one token per row a decode step is thousands of tiny kernels, and each costs its dispatch whatever its size;
    the LoRA's share of them, seven per linear in peft's forward, made it a third of a step (bench/serving.py
    prints tokens/s). Here it is two per linear, with A and s*B copied once per `sample` call into the base's float
    type: in bf16 that rounds the adapter's small correction, not the weights it corrects, a rounding below the
    bf16 rounding of the layer's own output. Training keeps peft's forward and the fp32 adapter. A layer with
    several active adapters, a variant (DoRA) or merged weights keeps peft's forward.
    """
    from peft.tuners.lora.layer import Linear as LoraLinear

    patched = []
    for module in model.modules():
        if type(module) is not LoraLinear or module.merged or type(module.base_layer) is not torch.nn.Linear:
            continue
        base = module.base_layer
        if module.disable_adapters:
            module.forward = functools.partial(_base_linear, base.weight, base.bias)
        else:
            active = [name for name in module.active_adapters if name in module.lora_A]
            if len(active) != 1 or active[0] in module.lora_variant:
                continue
            name, dtype = active[0], base.weight.dtype
            lora_a = module.lora_A[name].weight.detach().to(dtype)
            scaled_b_t = (module.lora_B[name].weight.detach() * module.scaling[name]).t().contiguous().to(dtype)
            module.forward = functools.partial(_lora_linear, base.weight, base.bias, lora_a, scaled_b_t)
        patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward
