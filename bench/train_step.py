"""CPU backend train step vs a plain peft forward/backward of the same batch: `uv run python bench/train_step.py`.

Trajectories come from the backend's own endpoint (real sampled tokens and logprobs), so the batch is what a run
trains on. "Ours" is `CPUBackend.train` (ART tokenisation and packing, ART's loss, clipping, AdamW, and the PEFT
checkpoint it writes every step) and, separately, the policy's `train_step` without the checkpoint. "Plain" is the
least any trainer must do with that batch: forward, log-softmax gather, a policy-gradient loss, backward, on the same
packed rows in the same micro-batches. Ratio = plain / ours (goal >= 0.8).

Sizes: `tiny` and `mid` are randomly initialised Llamas; `smollm2` is the real SmolLM2-135M-Instruct (the default
model, converted once under `--art-path` as train.py does) with an all-linear LoRA, as a run trains it. The frozen
base is in `--dtype` (backends/cpu_dtype.py). For each size the train_step's tokens/s and roofline fraction are
printed: tokens are the real (unpadded) tokens the forward and backward run over, FLOPs per token 4 x params, over
the matmul FLOP/s measured at the start in the base's float type on the step's threads (bench/roofline.py). The
same for one SFT step (backends/cpu_sft.py's `sft_step`, as `CPUBackend._train_sft` runs it) on the same sampled
conversations. smollm2's goal: a roofline fraction >= 0.30 for both. Both steps run the output head on the trained
positions only, so 4 x params per real token credits them with a little head work they skip; attention's own
products, which they do, are not counted (bench/roofline.py).
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
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")

from backends.smollm2 import ensure_pretrained  # noqa: E402
from backends.tiny_random_model import LORA_TARGETS, TinyModelSpec, ensure_tiny_model  # noqa: E402
from bench.figures import figure  # noqa: E402
from bench.roofline import cpu_line, flops_per_token, gflops, measure_matmul_flops, roofline_fraction  # noqa: E402
from entry_point import OneLineParser, at_least  # noqa: E402

if TYPE_CHECKING:  # heavy (ART, torch): imported where used, once the flags are parsed, so --help is instant
    import art
    import torch

    from backends.policy import LoraPolicy

SIZES: dict[str, TinyModelSpec | None] = {
    "tiny": TinyModelSpec(),
    "mid": TinyModelSpec(hidden_size=384, num_layers=6, num_heads=6, intermediate_size=1024),
    "smollm2": None,  # the real pretrained model (backends/smollm2.py)
}
ROOFLINE_GOAL = {"smollm2": ">= 0.30"}
SMOLLM2_REPEATS = 2  # its steps take tens of seconds each on 2 cores


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


def sft_step_once(policy: LoraPolicy, examples: list[Any]) -> None:
    """One SFT gradient step over `examples`, as `CPUBackend._train_sft` runs each batch."""
    from backends.cpu_sft import sft_step

    with policy.lock:
        policy.model.train()
        try:
            sft_step(policy.model, policy.optimizer, examples, 1e-5)
        finally:
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


async def measure(size: str, groups: int, per_group: int, max_tokens: int, repeats: int, dtype: str,
                  art_path: str) -> dict[str, Any]:
    import art

    from backends.cpu import CPUBackend, CPUBackendSettings
    from backends.cpu_sft import tokenize_conversation
    from backends.policy import LoraSettings, TrainSettings

    spec = SIZES[size]
    with tempfile.TemporaryDirectory() as tmp:
        base = ensure_tiny_model(tmp, spec) if spec is not None else ensure_pretrained("smollm2-135m", art_path)
        lora = LoraSettings(target_modules=LORA_TARGETS if spec is not None else "all-linear")
        backend = CPUBackend(path=tmp, settings=CPUBackendSettings(lora=lora, default_max_tokens=max_tokens,
                                                                   dtype=dtype))
        model = art.TrainableModel(name="bench", project="bench", base_model=base, base_path=tmp)
        await model.register(backend)
        try:
            batch = await sample_groups(model, groups, per_group, max_tokens, seed=0)
            policy = backend.policy(model)
            tensors = packed_batch(policy, batch)
            examples = [e for group in batch for t in group
                        if (e := tokenize_conversation(policy.tokenizer, t, policy.max_seq_length)) is not None]
            settings = TrainSettings(learning_rate=1e-5, rows_per_gradient_step=backend.settings.rows_per_gradient_step)
            timings: dict[str, list[float]] = {"backend.train": [], "train_step": [], "plain": [], "sft": []}
            for round_ in range(repeats + 1):  # round 0 warms every path up and is not counted
                for name in ("plain", "train_step", "backend.train", "sft"):  # interleaved, so drift hits all
                    started = time.perf_counter()
                    if name == "plain":
                        plain_step(policy, tensors, settings.rows_per_gradient_step)
                    elif name == "train_step":
                        policy.train_step(batch, settings)
                    elif name == "sft":
                        sft_step_once(policy, examples)
                    else:
                        await backend.train(model, batch, learning_rate=1e-5)
                    if round_:
                        timings[name].append(time.perf_counter() - started)
            train_flops = flops_per_token(policy.model, "train")
            resolved = policy.dtype
        finally:
            await backend.close()
    median = {k: statistics.median(v) for k, v in timings.items()}
    return {"rows": float(tensors["tokens"].shape[0]), "seq_len": float(tensors["tokens"].shape[1]),
            "trained_tokens": float(tensors["assistant_mask"].sum()),
            "real_tokens": float((tensors["group_ids"] != -1).sum()),
            "sft_tokens": float(sum(len(e.input_ids) for e in examples)),
            "sft_trained_tokens": float(sum(e.trainable_tokens for e in examples)),
            "flops_per_token": train_flops, "dtype": resolved, **median}


def report_roofline(size: str, r: dict[str, Any], ceilings: dict[str, float], threads: int) -> None:
    """tokens/s and roofline fraction of the train_step and of the SFT step (4 x params per real token)."""
    if r["dtype"] not in ceilings:
        ceilings[r["dtype"]] = measure_matmul_flops(r["dtype"], threads)
    ceiling = ceilings[r["dtype"]]
    goal = ROOFLINE_GOAL.get(size)
    parts = []
    for name, label, tokens, trained in (("train_step", "train_step", "real_tokens", "trained_tokens"),
                                         ("sft", "SFT step", "sft_tokens", "sft_trained_tokens")):
        rate = r[tokens] / r[name]
        fraction = roofline_fraction(rate, r["flops_per_token"], ceiling)
        parts.append(f"{label} {rate:7.1f} tokens/s ({r[trained] / r[name]:.1f} trained tokens/s, {r[name]:.3f}s), "
                     f"roofline {fraction:.3f}")
        figure(f"{size} model: {label} tokens/s", rate, unit="tokens/s")
        figure(f"{size} model: {label} roofline fraction", fraction, goal)
    print(f"{size} ({r['dtype']}, {threads} threads, ceiling {gflops(ceiling)}): " + "; ".join(parts), flush=True)


def main() -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--groups", type=at_least(1), default=4)
    parser.add_argument("--rollouts-per-group", type=at_least(2), default=8)
    parser.add_argument("--max-tokens", type=at_least(1), default=256)
    parser.add_argument("--repeats", type=at_least(1), default=None,
                        help=f"timed rounds per size (default 5; {SMOLLM2_REPEATS} for smollm2, slower per step)")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                        help="the frozen base's float type (backends/cpu_dtype.py); auto: bf16 where the CPU has it")
    parser.add_argument("--art-path", default=".art", help="where smollm2's converted base model is kept")
    args = parser.parse_args()
    import torch

    from backends.cpu_dtype import resolve_cpu_dtype

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    dtype = resolve_cpu_dtype(args.dtype)
    ceilings = {dtype: measure_matmul_flops(dtype, threads)}
    print(f"{cpu_line()}\nmatmul ceiling: {gflops(ceilings[dtype])} ({dtype}, 1024^3 products, {threads} threads)",
          flush=True)
    figure(f"train matmul ceiling, {dtype} on {threads} threads", ceilings[dtype] / 1e9, unit="GFLOP/s")
    for size in args.sizes:
        repeats = args.repeats or (SMOLLM2_REPEATS if size == "smollm2" else 5)
        r = asyncio.run(measure(size, args.groups, args.rollouts_per_group, args.max_tokens, repeats, args.dtype,
                                args.art_path))
        print(f"{size}: {int(r['rows'])} rows x {int(r['seq_len'])} tokens ({int(r['real_tokens'])} real, "
              f"{int(r['trained_tokens'])} trained), median of {repeats}: plain {r['plain']:.3f}s, "
              f"train_step {r['train_step']:.3f}s, "
              f"backend.train {r['backend.train']:.3f}s; ratio plain/train_step {r['plain'] / r['train_step']:.3f}, "
              f"plain/backend.train {r['plain'] / r['backend.train']:.3f}", flush=True)
        figure(f"{size} model: plain fwd/bwd / policy train_step", r["plain"] / r["train_step"], ">= 0.8")
        figure(f"{size} model: plain fwd/bwd / CPUBackend.train (incl. checkpoint)", r["plain"] / r["backend.train"],
               ">= 0.8")
        report_roofline(size, r, ceilings, threads)


if __name__ == "__main__":
    main()
