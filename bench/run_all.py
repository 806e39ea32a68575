"""Run every benchmark and write docs/PERFORMANCE.md from what they print: `uv run python bench/run_all.py`.

Each bench prints its human-readable lines plus `FIGURE` lines (bench/figures.py); the doc's tables come only from
those, so a figure in the doc is always one a bench measured. Every bench's output is kept in
docs/performance_results.json with the date it ran; `--only NAME...` reruns some of them and the doc is rendered
from the new results plus the kept ones (each section says when it was measured), since a full run takes hours.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.figures import PREFIX as FIGURE_PREFIX  # noqa: E402
from bench.figures import meets, parse  # noqa: E402
from entry_point import OneLineParser, at_least  # noqa: E402


@dataclass(frozen=True)
class Bench:
    name: str
    args: tuple[str, ...]
    title: str
    context: str


BENCHES = [
    Bench("learning", ("bench/learning.py", "--env", "toy"), "Learning (toy env, random tiny model, CPU backend)",
          "`train.py` on the toy task (GRPO only), in a fresh art path."),
    Bench("learning-gmsh", ("bench/learning.py", "--env", "gmsh"), "Learning: the default run (gmsh, SmolLM2-135M)",
          "The README's first command (`train.py --experiment-name demo`, nothing else) in a fresh art path: convert "
          "the model, write demonstrations, held-out eval, 3 SFT epochs, eval, 4 GRPO steps of 4 groups, eval."),
    Bench("learning-r2e", ("bench/learning.py", "--env", "r2e"), "Learning: r2e samples (SmolLM2-135M)",
          "envs/r2e/README.md's command (`train.py --experiment-name r2e-demo --env r2e`) in a fresh art path: "
          "SFT on the demonstrations of five bundled samples, GRPO on all six, the held-out sample (thermo) and the "
          "five demonstrated ones evaluated apart before training, after SFT and after RL."),
    Bench("learning-r2e-small", ("bench/learning.py", "--env", "r2e-small"),
          "Learning: r2e generated small repair tasks (SmolLM2-135M)",
          "envs/r2e/README.md's generated-task command (`train.py --env r2e --r2e-tasks generated`) in a fresh art "
          "path: SFT on the demonstrations of the 60 generated train tasks, GRPO on them, the 20 held-out tasks "
          "and 4 demonstrated ones evaluated before training, after SFT and after RL, a REPL each (multi-turn: "
          "look, edit, run the tests, FINAL)."),
    Bench("learning-planner", ("bench/learning.py", "--env", "planner"), "Learning: planner env (SmolLM2-135M)",
          "envs/planner/README.md's command (`train.py --env planner`, default weights, `--token-budget 1024`) in a "
          "fresh art path: SmolLM2-135M-Instruct is the planner and, adapter off, the frozen executor; 2 SFT epochs "
          "on the generator's plans, then 4 GRPO steps; the 16 held-out problems evaluated before training, after "
          "SFT and after RL: reward, format-valid plan rate, correct rate and token thrift."),
    Bench("gather", ("bench/gather.py", "--latency", "0.2", "--waves", "10"), "Gather overhead, 0.2 s model latency",
          "A fake OpenAI-compatible server in its own process answers every request after a fixed latency, so the "
          "ideal is concurrency / latency rollouts per second; ratio = achieved / ideal. Overhead measured is ours "
          "and ART's: semaphore, throttle, gather helpers, the HTTP client (aiohttp). The trainer runs on one core "
          "and the server on the other, as vLLM runs on a machine of its own (`--no-pin` leaves both to the "
          "scheduler); bench/gather.py's docstring says where the rest of the time goes."),
    Bench("gather-1s", ("bench/gather.py", "--latency", "1.0", "--waves", "5"), "Gather overhead, 1 s model latency",
          "As above with a more realistic model latency: the same client work spread over more time."),
    Bench("gmsh", ("bench/gmsh_service.py",), "gmsh service vs direct",
          "24 reference meshing scripts, 2 workers each way: a direct process pool vs the HTTP service (bwrap "
          "sandbox, rlimits, mesh analysis)."),
    Bench("r2e", ("bench/r2e.py",), "R2E env: repo copy, /test, REPL",
          "Repo copy of a generated 5.6 MB repository into the default rollout root (/dev/shm when it exists); "
          "`/test` through the service (process runtime, sandboxed) vs `bash run_tests.sh` run directly; a trivial "
          "REPL cell."),
    Bench("docker-runtime", ("bench/docker_runtime.py",), "R2E /test: docker runtime vs process runtime vs direct",
          "The same request (the stats sample's reference fix) in turn: `bash run_tests.sh` on a fresh copy (no "
          "sandbox), `/test` with the process runtime (bwrap sandbox) and with the docker runtime (a fresh container "
          "per request, no network, limits, removed after); plus a bare `docker run --rm IMAGE true`. Needs a Docker "
          "engine (`scripts/docker_engine.sh start`); the sample images are built offline when missing."),
    Bench("openspiel", ("bench/openspiel.py", "--learning"), "OpenSpiel env: tasks, playouts, learning (SmolLM2-135M)",
          "Fixed tasks built per second (seeded random walks, prompt, legal actions), and outcome playouts per second "
          "on connect_four against OpenSpiel's MCTS bot: inline on the event loop, in one thread "
          "(`--playout-workers 0`) and in the process pool (`--playout-workers 2`, started before timing as a run "
          "does), with the event loop's worst lag meanwhile (what a rollout waiting for its model reply feels). "
          "Then envs/openspiel/README.md's command (tic_tac_toe, legal mode: SFT on 48 demonstrations, GRPO) in a "
          "fresh art path: the held-out legal-move rate before, after SFT and after RL; and whole games against "
          "the random opponent (`--eval-only --game-mode game`) by the base and the trained model."),
    Bench("memory", ("bench/memory.py",), "Trainer memory over 1,000 rollouts",
          "`train.py` on the toy env (10 rollouts per step, each step sampled, scored, trained, logged and "
          "checkpointed); RSS of the trainer and its children read from outside at each step's summary line. The "
          "rollouts are toy ones, the trainer is the real one."),
    Bench("serving", ("bench/serving.py",), "CPU policy server tokens/s and roofline fraction, SmolLM2-135M",
          "The CPU backend's own endpoint (LoRA r8 all-linear over SmolLM2-135M-Instruct, base in bf16 where the CPU "
          "has it, continuous batching, KV cache) answers 1, 8, 32 and 64 concurrent chat completions over HTTP on "
          "the default gmsh env's prompts, max_tokens 128, temperature 1, logprobs on; tokens/s = generated tokens "
          "/ wall time of the wave, and roofline fraction = tokens/s x 2 x params / the bf16 (else fp32) matmul "
          "FLOP/s measured in the same run. Also a batched prefill (8 prompts of 256 tokens), one request alone "
          "against an fp32 policy on half the cores (the code before bf16), direct `policy.sample` (what HTTP "
          "adds) and stock transformers `generate` on the bare base model."),
    Bench("cpu-policy", ("bench/cpu_policy.py",), "CPU policy: decoding and memory choices vs what they replaced",
          "On SmolLM2-135M's shapes with random tensors, one core: `categorical` vs `torch.multinomial`, grouped "
          "decode attention vs transformers' repeat_kv + SDPA, an in-place KV cache write vs `torch.cat`, the frozen "
          "linears' memory order, the sampler on all cores vs `AdaptiveThreads`' choice beside a busy process, and "
          "the size of the full logits the policy and SFT never build (computed). The figures behind the choices "
          "backends/decoding.py and backends/policy.py explain in words."),
    Bench("import-cost", ("bench/import_cost.py",), "Import cost: platform modules vs ART's helpers",
          "Each module imported in a fresh interpreter (median of 3): the sandbox, the service process helper and "
          "the two services, against `art.utils.network` and `art.utils.managed_process`, whose import runs "
          "`art/__init__` (torch, transformers, litellm). Why services/process.py and sandbox/launch.py keep their "
          "own free-port and parent-death-signal helpers."),
    Bench("executor", ("bench/executor.py",), "Frozen executor vs raw endpoint calls, SmolLM2-135M",
          "The planner/workflow executor (`OpenAIExecutor`, made by `ExecutorOwner` from a model registered on the "
          "CPU backend, asking for the base model by name: the adapter off) against the same calls sent straight to "
          "that endpoint with httpx: the planner's executor prompts, max_tokens 32, temperature 0, 2 x C calls with "
          "at most C = 8 or 32 in flight, alternating raw, executor, executor, raw. Executor / raw is the client's "
          "overhead."),
    Bench("train-step", ("bench/train_step.py", "--sizes", "tiny", "smollm2", "--groups", "2",
                         "--rollouts-per-group", "4", "--max-tokens", "128", "--repeats", "2"),
          "CPU backend train and SFT step vs plain peft, roofline fraction",
          "The same packed batch (8 sampled rollouts of up to 128 tokens) through the policy's `train_step` (ART "
          "tokenisation, packing, loss, clipping, AdamW), through `CPUBackend.train` (that plus the PEFT checkpoint "
          "of each step), and through a bare forward/log-softmax/backward; ratio = plain / ours. `tiny` is the "
          "random test model; `smollm2` the real one, whose train and SFT steps also print tokens/s and the "
          "roofline fraction (4 x params per token over the matmul FLOP/s measured in the same run)."),
    Bench("scale-sim", ("bench/scale_sim.py",), "Rollout service nodes: throughput vs node count, a node killed",
          "1, 2, 4 and 8 simulated service nodes (local processes with our services' shape: 2 slots each, 0.2 s "
          "jittered work, 1% injected HTTP 500s, request ids honoured) behind the real `ServiceClient` "
          "(least-outstanding routing, health checks, failover); a fake model answers each turn in 0.05 s, a rollout "
          "is 3 service calls, and enough rollouts run at once to keep every slot busy. Efficiency = rollouts/s at N "
          "over N x the 1-node rate. Then 4 nodes with one killed (SIGKILL) halfway: rollouts lost, and the rate "
          "after the kill over the rate before it, against the ideal 3/4."),
    Bench("async-pipeline", ("bench/async_pipeline.py", "--parts", "fake", "cpu-r2e", "--r2e-models", "tiny-random",
                             "smollm2-135m", "--r2e-steps", "5"),
          "Pipelined steps (`--max-steps-off-policy 1`) vs synchronous and vs the ideal",
          "The real step loop (gather, train, `model.log`, RLM logs, state.json commit) with toy rollouts against a "
          "fake model server of fixed latency (its own process) and a stand-in GPU trainer whose `train()` takes a "
          "fixed 0.5 s; one step's 8 rollouts fill the concurrency limit. Ideal = max(rollout time, train time), "
          "rollout time = the synchronous run's median gather; step time = mean time between commits after the "
          "first two. Then `train.py --env r2e` on the CPU backend (the tiny random model, then SmolLM2-135M; 2 groups "
          "of 2 rollouts, 3 turns of 64 tokens, no SFT), synchronous and pipelined: mean step time of steps 3-5 "
          "(with K=1 the first two steps' gathers start together)."),
]

_GATHER_WHY = (
    "The fake model server stands in for vLLM on its own machine, so the bench pins the trainer to one core and the "
    "server to the other (unpinned, loopback wake-ups often put both on one core: 64 in flight 0.947 vs 0.966-0.974 "
    "pinned) and keeps the server light: it used to import torch through the test helpers, and a full garbage "
    "collection of that heap stalled it 170-280 ms mid-run (256: 0.77-0.84 before, 0.86-0.90 after, unpinned). What "
    "is left at 256 (0.874-0.930 over seven pinned runs, median 0.917) is the trainer's ~0.3 ms of CPU per rollout "
    "(aiohttp ~38%, asyncio ~19%, pydantic and json ~12%) met by answers that, with a fixed latency, keep arriving "
    "in bursts: each event-loop iteration handles every ready answer, so one waits for its batch at each hop, about "
    "8 ms each way. Slot workers (rollouts/gather.py) removed the hop between a rollout's end and the next one's "
    "start (3-4 ms, a waiter task woken) and most of the start-up (2,560 rollout tasks made before the first "
    "request: 21-23 ms, now 8-14): median 0.904 -> 0.917 at 256. More waves, uvloop and garbage-collector "
    "thresholds did not change it beyond the +-0.02 spread between runs. Found and fixed earlier, each measured "
    "with this bench: one "
    "httpx pool rescanned all its connections for every queued request (0.21 at 64); the OpenAI SDK's request "
    "building cost 2.0-2.5 ms of event-loop CPU per call, httpx 1.2 ms, aiohttp 0.2 ms (rollouts/model_client.py "
    "keeps the SDK's types, errors and retries); a full collection of the trainer's start-up heap (torch, "
    "transformers, ART) stalled every rollout for ~0.3 s (32 in flight: 0.82 before `gc.freeze()`, 0.95 after); and "
    "the fake server was uvicorn + FastAPI (0.4-0.7 ms per request; now aiohttp's, ~0.14 ms)."
)
_R2E_WHY = (
    "Every rollout scored 0 before training, after SFT and after RL: three SFT epochs over five long multi-turn "
    "demonstrations (9 gradient steps; the gmsh run gets 30) leave SmolLM2-135M writing REPL cells that do not fix "
    "the repository, so every GRPO group had zero variance and no RL step trained. The wall time was measured with "
    "other heavy work on the same 2 cores."
)
EXPLAINED = {"gather": _GATHER_WHY, "gather-1s": _GATHER_WHY, "learning-r2e": _R2E_WHY}


def run_bench(bench: Bench, timeout_s: float) -> tuple[str, float, int]:
    env = dict(os.environ, WANDB_MODE="disabled", TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, *bench.args], cwd=ROOT, capture_output=True, text=True, env=env,
                              timeout=timeout_s)
        output, code = done.stdout + (done.stderr[-2000:] if done.returncode else ""), done.returncode
    except subprocess.TimeoutExpired as exc:
        output, code = (exc.stdout or b"").decode(errors="replace") + f"\n(timed out after {timeout_s:.0f} s)", 124
    return output, time.monotonic() - started, code


def _value(figure: dict) -> str:
    value = figure["value"]
    text = f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return f"{text} {figure['unit']}".strip()


@dataclass
class Result:
    output: str
    seconds: float
    code: int
    date: str


def load_results(path: Path) -> dict[str, Result]:
    if not path.is_file():
        return {}
    return {name: Result(**fields) for name, fields in json.loads(path.read_text()).items()}


def import_doc(doc: Path, kept: dict[str, Result]) -> None:
    """Adopt the sections of a doc written before results were kept (its benches' outputs and table rows, with the
    date it was measured) for the benches that have no kept result yet: one run, then nothing is lost."""
    text = doc.read_text()
    date = re.search(r"Measured (\d{4}-\d{2}-\d{2})", text)
    titles = {b.title: b.name for b in BENCHES}
    rows: dict[str, list[str]] = {}
    for bench, name, value, goal, _ in re.findall(r"^\| ([\w-]+) \| (.+?) \| (.+?) \| (.*?) \| (.*?) \|$", text, re.M):
        number, _, unit = value.partition(" ")
        try:
            record = {"name": name, "value": float(number), "unit": unit, "goal": goal or None,
                      "met": meets(float(number), goal) if goal else None}
        except ValueError:  # a failed bench's row
            continue
        rows.setdefault(bench, []).append(FIGURE_PREFIX + json.dumps(record))
    section = r"^## (.+?)\n\n`uv run python [^`]+` \((\d+) s[^)]*\)\n\n.*?\n\n```\n(.*?)```"
    for title, seconds, body in re.findall(section, text, re.M | re.S):
        name = titles.get(title)
        if name and name not in kept:
            kept[name] = Result("\n".join([body.strip(), *rows.get(name, [])]), float(seconds), 0,
                                date.group(1) if date else "unknown")


def render(results: list[tuple[Bench, str, float, int]], dates: dict[str, str] | None = None) -> str:
    memory_gb = psutil.virtual_memory().total / 2**30
    lines = [
        "# Performance (generated by `uv run python bench/run_all.py`; do not edit by hand)",
        "",
        f"Rendered {datetime.date.today().isoformat()} (each section says when it ran) on {platform.machine()}, "
        f"{os.cpu_count()} cores, "
        f"{memory_gb:.0f} GiB, Python {platform.python_version()}, no GPU. Figures move with the machine and its "
        "load; rerun to compare.",
        "",
        "| bench | figure | value | goal | met |",
        "| --- | --- | --- | --- | --- |",
    ]
    missed = []
    for bench, output, _, code in results:
        figures = parse(output)
        if code != 0:
            lines.append(f"| {bench.name} | (the bench failed, exit code {code}) | - | - | **no** |")
        for f in figures:
            met = "" if f["met"] is None else ("yes" if f["met"] else "**no**")
            lines.append(f"| {bench.name} | {f['name']} | {_value(f)} | {f['goal'] or ''} | {met} |")
            if f["met"] is False:
                missed.append(f"{bench.name}: {f['name']} = {_value(f)} (goal {f['goal']})")
    lines += ["", "Goals missed: " + ("; ".join(missed) if missed else "none") + "."]
    for bench, output, seconds, code in results:
        human = "\n".join(line for line in output.splitlines() if not line.startswith("FIGURE\t")).strip()
        when = f", measured {dates[bench.name]}" if dates and bench.name in dates else ""
        lines += ["", f"## {bench.title}", "", f"`uv run python {' '.join(bench.args)}` ({seconds:.0f} s"
                  + (f", exit code {code}" if code else "") + when + ")", "", bench.context, "", "```", human, "```"]
        if bench.name in EXPLAINED and any(f["met"] is False for f in parse(output)):
            lines += ["", EXPLAINED[bench.name]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=[b.name for b in BENCHES],
                        help="run only these (none: run nothing, render the doc from the kept results)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "PERFORMANCE.md")
    parser.add_argument("--timeout", type=at_least(1.0, float), default=1200, help="seconds per bench")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "performance_results.json",
                        help="every bench's last output (kept between runs; --only updates some of them)")
    parser.add_argument("--import-doc", type=Path, default=None,
                        help="adopt the sections of an older generated doc for benches with no kept result")
    args = parser.parse_args()
    if args.import_doc is not None and not args.import_doc.is_file():
        parser.error(f"--import-doc {args.import_doc}: no such file")
    kept = load_results(args.results)
    if args.import_doc is not None:
        import_doc(args.import_doc, kept)
        args.results.write_text(json.dumps({k: vars(v) for k, v in kept.items()}, indent=1) + "\n")
    codes = []
    for bench in BENCHES:
        if args.only is not None and bench.name not in args.only:
            continue
        print(f"running {bench.name}: {' '.join(bench.args)}", flush=True)
        output, seconds, code = run_bench(bench, args.timeout)
        kept[bench.name] = Result(output, seconds, code, datetime.date.today().isoformat())
        codes.append(code)
        args.results.write_text(json.dumps({k: vars(v) for k, v in kept.items()}, indent=1) + "\n")
        for f in parse(output):
            print(f"  {f['name']}: {_value(f)}" + (f" (goal {f['goal']})" if f["goal"] else ""), flush=True)
    shown = [(b, kept[b.name].output, kept[b.name].seconds, kept[b.name].code) for b in BENCHES if b.name in kept]
    args.out.write_text(render(shown, {name: result.date for name, result in kept.items()}))
    print(f"wrote {args.out}")
    return 0 if all(code == 0 for code in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
