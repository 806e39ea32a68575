"""Demonstrations for SFT: one meshing script per generated task, in exactly the conversation a gmsh rollout has.

`envs/gmsh/rollout.py` sends the system prompt and the task's prompt, and stops after the first script that meshes
with every physical group, so a demonstration is [system, task, one assistant turn holding a ```python block].

Why these scripts rather than tests/gmsh_scripts.py's: a demonstration teaches what a right answer looks like, so
each follows its prompt (the requested local refinement included) and is kept only when the real gmsh service
and the task-completion reward give it the full score (1.0). Some tasks cannot get it: the reward's density
estimate comes from the bounding box, and a thin plate needs several times more tets than that for any size
near the asked one, so the writer tries a second refinement recipe, then leaves the task out and says so.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.prompts import GMSH_SYSTEM_PROMPT
from envs.gmsh.tasks import SPLIT_FILES, ensure_default_tasks, split_tasks
from rollouts.scenario import DatasetError, Scenario

__all__ = ["SPLIT_FILES", "build_demos", "conversation", "demo_script", "split_tasks", "write_demos"]

FULL_SCORE = 1.0
SCRIPT_TIMEOUT_S = 30.0  # envs/gmsh/rollout.py's (tests/test_demos.py checks they agree)

# What each kind's refinement is measured from: (the variable the script selects it into, its dimension).
TARGETS = {"box_with_hole": ("hole", 2), "plate_with_holes": ("holes", 2), "profile_2d": ("hole", 1),
           "l_bracket": ("corner", 0)}
# Recipes in the order they are tried. "field": a size field growing from the target outwards, which keeps the
# refinement local (fewer extra elements); "points": a smaller size at the target's points, which suits the
# bracket, whose bounding box overstates its volume and which the field leaves too coarse.
RECIPES = {"box_with_hole": ("field", "points"), "plate_with_holes": ("field", "points"),
           "profile_2d": ("field", "points"), "l_bracket": ("points", "field"), "cylinder": ("plain",)}

_SELECT = {
    "box_with_hole": 'hole = [t for _, t in gmsh.model.getEntities(2) if gmsh.model.getType(2, t) == "Cylinder"]\n',
    "plate_with_holes":
        'holes = [t for _, t in gmsh.model.getEntities(2) if gmsh.model.getType(2, t) == "Cylinder"]\n',
    "profile_2d": """curves = [t for _, t in gmsh.model.getEntities(1)]
hole = [t for t in curves if gmsh.model.getType(1, t) != "Line"]
""",
    "cylinder": """x0, y0, z0, x1, y1, z1 = gmsh.model.getBoundingBox(-1, -1)
faces = [t for _, t in gmsh.model.getEntities(2)]
z = {t: gmsh.model.occ.getCenterOfMass(2, t)[2] for t in faces}
""",
    "l_bracket": """x0, y0, z0, x1, y1, z1 = gmsh.model.getBoundingBox(-1, -1)
faces = [t for _, t in gmsh.model.getEntities(2)]
x = {t: gmsh.model.occ.getCenterOfMass(2, t)[0] for t in faces}
# the inner corner: the points strictly inside the bounding box in x and z
xyz = {p: gmsh.model.getValue(0, p, []) for _, p in gmsh.model.getEntities(0)}
corner = [p for p, (px, _, pz) in xyz.items() if x0 + 1e-3 < px < x1 - 1e-3 and z0 + 1e-3 < pz < z1 - 1e-3]
""",
}
_GROUPS = {
    "box_with_hole": """gmsh.model.addPhysicalGroup(3, [t for _, t in gmsh.model.getEntities(3)], name="solid")
gmsh.model.addPhysicalGroup(2, hole, name="hole")
""",
    "plate_with_holes": """gmsh.model.addPhysicalGroup(3, [t for _, t in gmsh.model.getEntities(3)], name="solid")
gmsh.model.addPhysicalGroup(2, holes, name="holes")
""",
    "profile_2d": """gmsh.model.addPhysicalGroup(2, [t for _, t in gmsh.model.getEntities(2)], name="domain")
gmsh.model.addPhysicalGroup(1, [t for t in curves if t not in hole], name="outer")
gmsh.model.addPhysicalGroup(1, hole, name="hole")
""",
    "cylinder": """gmsh.model.addPhysicalGroup(3, [t for _, t in gmsh.model.getEntities(3)], name="solid")
gmsh.model.addPhysicalGroup(2, [t for t in faces if abs(z[t] - z0) < 1e-3], name="bottom")
gmsh.model.addPhysicalGroup(2, [t for t in faces if abs(z[t] - z1) < 1e-3], name="top")
gmsh.model.addPhysicalGroup(2, [t for t in faces if gmsh.model.getType(2, t) == "Cylinder"], name="side")
""",
    "l_bracket": """gmsh.model.addPhysicalGroup(3, [t for _, t in gmsh.model.getEntities(3)], name="solid")
gmsh.model.addPhysicalGroup(2, [t for t in faces if abs(x[t] - x0) < 1e-3], name="fixed")
gmsh.model.addPhysicalGroup(2, [t for t in faces if abs(x[t] - x1) < 1e-3], name="load")
""",
}


def _refine(recipe: str, target: str, dim: int, factor: float) -> str:
    if recipe == "points":
        points = (f"[(0, p) for p in {target}]" if dim == 0
                  else f"gmsh.model.getBoundary([({dim}, t) for t in {target}], False, False, True)")
        return f"gmsh.model.mesh.setSize({points}, h * {factor:g})\n"
    entities = {2: "SurfacesList", 1: "CurvesList", 0: "PointsList"}[dim]
    return f"""d = gmsh.model.mesh.field.add("Distance")
gmsh.model.mesh.field.setNumbers(d, "{entities}", {target})
f = gmsh.model.mesh.field.add("MathEval")
gmsh.model.mesh.field.setString(f, "F", f"min({{h}}, {{h * {factor:g}}} + {1 - factor:g} * F{{d}})")
gmsh.model.mesh.field.setAsBackgroundMesh(f)
gmsh.option.setNumber("Mesh.MeshSizeFromPoints", 0)
gmsh.option.setNumber("Mesh.MeshSizeExtendFromBoundary", 0)
"""


def demo_script(scenario: Scenario, recipe: str | None = None) -> str:
    """The script for a generated task, with the numbers its prompt gives (the element size as printed there)."""
    kind, req = scenario.data["kind"], scenario.data["requirements"]
    if kind not in RECIPES:
        raise DatasetError(f"task {scenario.id}: no demonstration for kind {kind!r}")
    recipe = recipe or RECIPES[kind][0]
    dim = int(req["dimension"])
    head = f"""import gmsh
gmsh.initialize()
gmsh.option.setNumber("General.Terminal", 0)
gmsh.model.occ.importShapes("geometry{Path(scenario.data["geometry_file"]).suffix}")
gmsh.model.occ.synchronize()
h = {float(req["target_size"]):.2f}
gmsh.option.setNumber("Mesh.MeshSizeMax", h)
"""
    if dim == 3:
        head += 'gmsh.option.setNumber("Mesh.Algorithm3D", 10)  # HXT keeps the minimum quality up\n'
    refine = ""
    for rule in req.get("refinement", []) if recipe != "plain" else []:
        factor = float(rule["size_factor"])
        refine += f"# about {1 / factor:.0f}x finer near the {rule['near']}\n"
        refine += _refine(recipe, *TARGETS[kind], factor)
    tail = f'gmsh.model.mesh.generate({dim})\ngmsh.write("mesh.msh")\ngmsh.finalize()\n'
    return head + _SELECT[kind] + refine + _GROUPS[kind] + tail


def conversation(scenario: Scenario, script: str, split: str = "") -> dict[str, Any]:
    """The rollout's messages for this task with `script` as the answer, as one SFT record."""
    return {"messages": [{"role": "system", "content": GMSH_SYSTEM_PROMPT},
                         {"role": "user", "content": scenario.prompt},
                         {"role": "assistant", "content": f"```python\n{script}```"}],
            "metadata": {"env": "gmsh", "scenario_id": scenario.id, "split": split}}


async def _score(client: Any, scenario: Scenario, script: str) -> float:
    """The score the rollout would give `script`: the same request, service and reward function."""
    from envs.gmsh.reward import gmsh_reward
    from envs.gmsh.wire import RunRequest

    geometry = Path(scenario.data["task_store"]) / scenario.data["geometry_file"]
    result = await client.run(RunRequest(script=script, geometry_b64=base64.b64encode(geometry.read_bytes()).decode(),
                                         geometry_name="geometry" + geometry.suffix, timeout=SCRIPT_TIMEOUT_S))
    return gmsh_reward(scenario.data["requirements"], scenario.data["bbox"], result.model_dump())[0]


async def build_demos(scenarios: list[Scenario], client: Any | None, split: str = "",
                      ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Demonstrations of `scenarios`, each checked through `client` (a GmshClient; None skips the check).
    Returns the kept demos (in task order) and {task id: best score} for the tasks left out."""
    slots = asyncio.Semaphore(4)

    async def one(scenario: Scenario) -> tuple[dict[str, Any] | None, float]:
        best = float("-inf")
        for recipe in RECIPES[scenario.data["kind"]]:
            script = demo_script(scenario, recipe)
            if client is None:
                return conversation(scenario, script, split), FULL_SCORE
            async with slots:
                score = await _score(client, scenario, script)
            if score >= FULL_SCORE - 1e-9:
                return conversation(scenario, script, split), score
            best = max(best, score)
        return None, best

    results = await asyncio.gather(*(one(s) for s in scenarios))
    kept = [demo for demo, _ in results if demo is not None]
    left_out = {s.id: score for s, (demo, score) in zip(scenarios, results, strict=True) if demo is None}
    return kept, left_out


@contextlib.contextmanager
def _client(url: str | None, token: str | None) -> Iterator[Any]:
    from envs.gmsh.client import GmshClient
    from services.process import ServiceProcess

    with contextlib.ExitStack() as stack:
        if url is None:
            service = stack.enter_context(ServiceProcess("envs.gmsh.service", "--workers", "2"))
            url, token = service.url, service.token
        yield GmshClient([url], token or "")


def write_demos(out: Path, split: str = "train", count: int | None = None, seed: int = 0,
                tasks_dir: Path | None = None, url: str | None = None, token: str | None = None,
                verify: bool = True) -> list[dict[str, Any]]:
    """Write `count` demonstrations (default: one per task) of `split` to `out` (.jsonl), in task order; returns
    them. Tasks whose scripts fall short of the full score are skipped, and the next tasks take their place.

    The tasks are `train.py --env gmsh --seed S`'s own (same generator, seed and sizes), so "train" demos are of
    the tasks GRPO trains on and "heldout" ones of the val tasks it evaluates on. `tasks_dir` reuses (or keeps)
    a task store; otherwise one is generated in a temp dir."""
    if out.suffix != ".jsonl":
        raise DatasetError(f"--out {out}: must end with .jsonl (the format art.utils.sft reads)")
    if split not in SPLIT_FILES:
        raise DatasetError(f"--split {split!r}: choose from {', '.join(SPLIT_FILES)}")
    if count is not None and count < 1:
        raise DatasetError(f"--count {count}: must be at least 1")
    if tasks_dir is not None and tasks_dir.exists() and not tasks_dir.is_dir():
        raise DatasetError(f"--tasks-dir {tasks_dir}: not a directory")
    with tempfile.TemporaryDirectory(prefix="gmsh-demo-tasks-") as tmp:
        store = ensure_default_tasks(tasks_dir or Path(tmp), seed)
        scenarios = split_tasks(store, split)
        if count is not None and count > len(scenarios):
            print(f"note: the {split} split has {len(scenarios)} task(s); writing at most that many", file=sys.stderr)
        with _client(url, token) if verify else contextlib.nullcontext() as client:
            demos, left_out = asyncio.run(_run(scenarios, count or len(scenarios), client, split))
    for task_id, score in left_out.items():
        print(f"note: {task_id} left out: its best script scores {score:.3f}, not {FULL_SCORE}", file=sys.stderr)
    from backends.atomic import atomic_write_jsonl

    atomic_write_jsonl(out, demos, ensure_ascii=False)  # no half-written file if this fails
    return demos


async def _run(scenarios: list[Scenario], want: int, client: Any | None, split: str,
               ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Demos of the first tasks, a batch at a time, until `want` are kept or the tasks run out."""
    kept: list[dict[str, Any]] = []
    left_out: dict[str, float] = {}
    try:
        while scenarios and len(kept) < want:
            batch, scenarios = scenarios[: want - len(kept)], scenarios[want - len(kept):]
            demos, missed = await build_demos(batch, client, split)
            kept, left_out = kept + demos, left_out | missed
        return kept, left_out
    finally:
        if client is not None:
            await client.aclose()
