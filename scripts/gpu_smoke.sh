#!/usr/bin/env bash
# The GPU path in one command, for a machine with a CUDA GPU: does `--backend local` (ART's LocalBackend: unsloth
# trains, vLLM serves from ART's managed runtime) start and train here?
#
#   scripts/gpu_smoke.sh            # ~10-20 min the first time (installs), a few minutes after
#
# 1. `uv sync --extra gpu`, then ART's vLLM runtime (art/vllm_runtime.py; internet, Python 3.12, glibc >= 2.34).
# 2. ART's own art/test/test_step_skipping.py against LocalBackend, run unchanged except that its TrainableModel
#    trains the bundled SmolLM2-135M folder with our internal config (backends/local_config.py).
# 3. 2-step `train.py --backend local` runs of toy and gmsh and a 1-step planner run, each checked for: the state
#    step, its checkpoints, a finite loss, the new adapter (<name>@<step>) loaded into vLLM after each step, no
#    RoPE-scaling warning (max_seq_length within the model's positions), and the first step's sampler/trainer
#    logprob mismatch where ART reports one.
# Without CUDA it refuses in one line (exit 2). Outputs go under $GPU_SMOKE_DIR (default /tmp/gpu-smoke).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  echo "gpu_smoke: no CUDA GPU here (nvidia-smi lists none); use the CPU backend (--backend cpu) on this machine" >&2
  exit 2
fi
out="${GPU_SMOKE_DIR:-/tmp/gpu-smoke}"
mkdir -p "$out"
export WANDB_MODE="${WANDB_MODE:-offline}" TQDM_DISABLE=1 PYTHONUNBUFFERED=1

echo "== 1. gpu extra and ART's vLLM runtime"
uv sync --extra gpu
uv run python -c 'import torch; assert torch.cuda.is_available(), "torch sees no CUDA GPU"; print(torch.cuda.get_device_name(0))'
uv run python -c 'from art.vllm_runtime import ensure_vllm_runtime; print("vLLM runtime:", ensure_vllm_runtime())'

echo "== 2. ART's own test_step_skipping.py against LocalBackend (SmolLM2-135M, our internal config)"
uv run python - "$out/art-test" <<'PY'
import asyncio, importlib.util, inspect, sys
from pathlib import Path

import art
from backends.local_config import ensure_model_config_importable, gpu_settings, internal_config
from backends.smollm2 import ensure_pretrained
from trainer.config import PRETRAINED_MODEL, ExperimentConfig

folder = ensure_pretrained(PRETRAINED_MODEL, sys.argv[1])
ensure_model_config_importable()
config = internal_config(gpu_settings(ExperimentConfig(experiment_name="smoke"), folder, "all-linear", "local"))
source = Path(art.__file__).parent / "test" / "test_step_skipping.py"
spec = importlib.util.spec_from_file_location("art_step_skipping", source)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.TrainableModel = lambda **kw: art.TrainableModel(**{**kw, "base_model": folder}, _internal_config=config)
for name, test in vars(module).items():
    if name.startswith("test_") and inspect.iscoroutinefunction(test):
        asyncio.run(test())
        print(f"ART {source.name}::{name}: passed")
PY

echo "== 3. train.py --backend local"
run_and_check() {  # name steps flags...
  local name=$1 steps=$2
  shift 2
  rm -rf "${out:?}/$name"
  uv run python train.py --backend local --experiment-name "$name" --art-path "$out/$name" \
    --log-dir "$out/$name/logs" --rollout-root "$out/$name/rollouts" --max-training-steps "$steps" \
    --no-eval-before-after --sft-demos off "$@" 2>&1 | tee "$out/$name.log"
  uv run python - "$out/$name" "$name" "$steps" "$out/$name.log" <<'PY'
import json, math, re, sys
from pathlib import Path

root, name, steps, log = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]).read_text()
model_dir = root / "art-agent-trainer" / "models" / name
state = json.loads((model_dir / "state.json").read_text())
assert state["step"] == steps, f"state step {state['step']} != {steps}"
assert (model_dir / "checkpoints" / f"{steps:04d}").is_dir(), "no checkpoint of the last step"
rows = [json.loads(line) for line in (model_dir / "history.jsonl").read_text().splitlines()]
losses = [v for r in rows for k, v in r.items() if k.endswith("loss/train") and isinstance(v, (int, float))]
assert losses and all(math.isfinite(v) for v in losses), f"loss not finite: {losses}"
runtime = (model_dir / "logs" / "vllm-runtime.log").read_text()
for step in range(1, steps + 1):
    assert f"{name}@{step}" in runtime, f"vLLM never loaded the adapter {name}@{step}"
assert not re.search(r"rope.?scaling", log, re.I), "unsloth scaled RoPE: max_seq_length exceeds the positions"
first = rows[0] if rows else {}
mismatch = {k: v for k, v in first.items() if re.search(r"mismatch|logprob_diff|kl", k)}
print(f"{name}: step {steps}, loss {losses[-1]:.4f}, first-step logprob figures {mismatch or 'not reported'}")
for key, value in mismatch.items():
    assert abs(value) < 0.5, f"{key} = {value}: the sampler and the trainer disagree"
PY
}
run_and_check smoke-toy 2 --env toy
run_and_check smoke-gmsh 2 --env gmsh
run_and_check smoke-planner 1 --env planner --groups-per-step 2
echo "gpu_smoke: all checks passed (outputs under $out)"
