"""CPU backend train step vs a plain peft forward/backward of the same batch: `uv run python bench/train_step.py`.

Trajectories come from the backend's own endpoint (real sampled tokens and logprobs), so the batch is what a run
trains on. "Ours" is `CPUBackend.train` (ART tokenisation and packing, ART's loss, clipping, AdamW, and the PEFT
checkpoint it writes every step) and, separately, the policy's `train_step` without the checkpoint. "Plain" is the
least any trainer must do with that batch: forward, log-softmax gather, a policy-gradient loss, backward, on the same
packed rows in the same micro-batches. Ratio = plain / ours (goal >= 0.8).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")

from backends.tiny_random_model import LORA_TARGETS, TinyModelSpec, ensure_tiny_model  # noqa: E402
from bench.figures import figure  # noqa: E402
from entry_point import OneLineParser, at_least  # noqa: E402

if TYPE_CHECKING:  # heavy (ART, torch): imported where used, once the flags are parsed, so --help is instant
    import art
    import torch

    from backends.policy import LoraPolicy

SIZES = {
    "tiny": TinyModelSpec(),
    "mid": TinyModelSpec(hidden_size=384, num_layers=6, num_heads=6, intermediate_size=1024),
}


async def sample_groups(model: art.TrainableModel, groups: int, per_group: int, max_tokens: int, seed: int):
    import art

    rng = random.Random(seed)
    client = model.openai_client()

    async def one(prompt: str) -> art.TrajectoryGroup:
        messages = [{"role": "system", "content": "Answer with code."}, {"role": "user", "content": prompt}]
        response = await client.chat.completions.create(model=model.get_inference_name(), messages=messages,
                                                        max_tokens=max_tokens, logprobs=True, n=per_group)
        return art.TrajectoryGroup(art.Trajectory(messages_and_choices=[*messages, c], reward=rng.random())
                                   for c in response.choices)

    return await asyncio.gather(*(one(f"Task {i}: fix the function named f{i}.") for i in range(groups)))


def plain_step(policy: LoraPolicy, tensors: dict[str, torch.Tensor], rows_per_step: int) -> None:
    """The floor: forward, gather, loss, backward; no ART, no clipping, no optimizer, no checkpoint."""
    import torch

    policy.model.train()
    for start in range(0, tensors["tokens"].shape[0], rows_per_step):
        tokens = tensors["tokens"][start:start + rows_per_step]
        mask = tensors["assistant_mask"][start:start + rows_per_step][:, 1:].float()
        advantages = tensors["advantages"][start:start + rows_per_step][:, 1:]
        attention = (tensors["group_ids"][start:start + rows_per_step] != -1).long()
        logits = policy.model(input_ids=tokens, attention_mask=attention).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)
        loss = -(logprobs * advantages * mask).sum() / mask.sum().clamp(min=1)
        policy.model.zero_grad(set_to_none=True)
        loss.backward()
    policy.model.eval()


def packed_batch(policy: LoraPolicy, groups: list[art.TrajectoryGroup]) -> dict[str, torch.Tensor]:
    import torch
    from art.preprocessing.pack import packed_tensors_from_tokenized_results
    from art.preprocessing.tokenize import tokenize_trajectory_groups

    results = list(tokenize_trajectory_groups(policy.tokenizer, groups, allow_training_without_logprobs=False,
                                              scale_rewards=True))
    packed = packed_tensors_from_tokenized_results(results, max(len(r.token_ids) for r in results),
                                                   pad_token_id=policy.tokenizer.pad_token_id,
                                                   truncate_long_results=False, advantage_balance=0.0,
                                                   pack_results=False)
    return {k: v for k, v in packed.items() if isinstance(v, torch.Tensor)}


async def measure(size: str, groups: int, per_group: int, max_tokens: int, repeats: int) -> dict[str, float]:
    import art

    from backends.cpu import CPUBackend, CPUBackendSettings
    from backends.policy import LoraSettings, TrainSettings

    with tempfile.TemporaryDirectory() as tmp:
        base = ensure_tiny_model(tmp, SIZES[size])
        backend = CPUBackend(path=tmp, settings=CPUBackendSettings(
            lora=LoraSettings(target_modules=LORA_TARGETS), default_max_tokens=max_tokens))
        model = art.TrainableModel(name="bench", project="bench", base_model=base, base_path=tmp)
        await model.register(backend)
        try:
            batch = await sample_groups(model, groups, per_group, max_tokens, seed=0)
            policy = backend.policy(model)
            tensors = packed_batch(policy, batch)
            settings = TrainSettings(learning_rate=1e-5, rows_per_gradient_step=backend.settings.rows_per_gradient_step)
            timings: dict[str, list[float]] = {"backend.train": [], "train_step": [], "plain": []}
            for round_ in range(repeats + 1):  # round 0 warms every path up and is not counted
                for name in ("plain", "train_step", "backend.train"):  # interleaved, so drift hits all three
                    started = time.perf_counter()
                    if name == "plain":
                        plain_step(policy, tensors, settings.rows_per_gradient_step)
                    elif name == "train_step":
                        policy.train_step(batch, settings)
                    else:
                        await backend.train(model, batch, learning_rate=1e-5)
                    if round_:
                        timings[name].append(time.perf_counter() - started)
        finally:
            await backend.close()
    median = {k: statistics.median(v) for k, v in timings.items()}
    return {"rows": float(tensors["tokens"].shape[0]), "seq_len": float(tensors["tokens"].shape[1]),
            "trained_tokens": float(tensors["assistant_mask"].sum()), **median}


def main() -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--groups", type=at_least(1), default=4)
    parser.add_argument("--rollouts-per-group", type=at_least(2), default=8)
    parser.add_argument("--max-tokens", type=at_least(1), default=256)
    parser.add_argument("--repeats", type=at_least(1), default=5)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    for size in args.sizes:
        r = asyncio.run(measure(size, args.groups, args.rollouts_per_group, args.max_tokens, args.repeats))
        print(f"{size}: {int(r['rows'])} rows x {int(r['seq_len'])} tokens ({int(r['trained_tokens'])} trained), "
              f"median of {args.repeats}: plain {r['plain']:.3f}s, train_step {r['train_step']:.3f}s, "
              f"backend.train {r['backend.train']:.3f}s; ratio plain/train_step {r['plain'] / r['train_step']:.3f}, "
              f"plain/backend.train {r['plain'] / r['backend.train']:.3f}", flush=True)
        figure(f"{size} model: plain fwd/bwd / policy train_step", r["plain"] / r["train_step"], ">= 0.8")
        figure(f"{size} model: plain fwd/bwd / CPUBackend.train (incl. checkpoint)", r["plain"] / r["backend.train"],
               ">= 0.8")


if __name__ == "__main__":
    main()
