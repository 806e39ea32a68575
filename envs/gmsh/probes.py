"""The gmsh env's reward probes (envs/probes.py): the reference script, a script that does nothing, and each cheat a
hostile policy could write, as it would write it (each reads the task from its prompt or its geometry file).

What stops them: the stats come from a fresh process that runs no model code and checks the saved mesh against
the task's geometry (envs/gmsh/mesh_verifier.py), so nothing the script's own process writes, prints or patches
is believed. Each must score no more than the do-nothing script (tests/reliability/test_cheats_r2e_gmsh.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from envs.probes import RewardProbe
from rollouts.scenario import Scenario

DO_NOTHING = "print('nothing to do')\n"

# Stats that would earn the full score, as the old runner wrote them (the script fills in the groups it was asked
# for and an element count near the expected one).
_FAKE_STATS = '''fake = {"initialized": True, "nodes": 500,
        "elements_by_dim": {"0": 8, "1": 60, "2": 400, str(DIM): ELEMENTS},
        "elements_by_type": {}, "quality": {"measure": "minSICN", "dim": DIM, "min": 0.6, "mean": 0.8},
        "physical_groups": [{"name": n, "dim": d, "tag": i + 1, "entity_count": 1} for i, (n, d) in enumerate(GROUPS)],
        "bbox": BBOX, "mesh_files": ["mesh.msh"], "written_mesh_bytes": 1000, "script_error": None}
'''

# A mesh file written by hand: the bounding box as a few simplices (6 tets, or 2 triangles in 2-D), every group
# asked for put on them, loaded into gmsh so that whatever measures the model's mesh finds it, and saved where the
# runner saves its own before the process ends early.
_HAND_MESH = '''import gmsh, os
gmsh.initialize()
gmsh.model.occ.importShapes(GEOMETRY)
gmsh.model.occ.synchronize()
x0, y0, z0, x1, y1, z1 = gmsh.model.getBoundingBox(-1, -1)
if DIM == 3:
    nodes = [(x, y, z) for z in (z0, z1) for y in (y0, y1) for x in (x0, x1)]
    top = [(1, 2, 4, 8), (1, 2, 6, 8), (1, 3, 4, 8), (1, 3, 7, 8), (1, 5, 6, 8), (1, 5, 7, 8)]
    faces, edges = [(1, 2, 4), (1, 4, 3)], [(1, 2)]
    types = {3: 4, 2: 2, 1: 1}
else:
    nodes = [(x0, y0, 0), (x1, y0, 0), (x0, y1, 0), (x1, y1, 0)]
    top, faces, edges = [(1, 2, 4), (1, 4, 3)], [(1, 2, 4)], [(1, 2)]
    types = {2: 2, 1: 1}
cells = {DIM: top, DIM - 1: faces, DIM - 2: edges}
lines, count = [], 0
for i, (name, d) in enumerate(GROUPS):
    for cell in cells.get(d, []):
        count += 1
        lines.append(f"{count} {types[d]} 2 {i + 1} {i + 1} " + " ".join(map(str, cell)))
text = ("$MeshFormat\\n2.2 0 8\\n$EndMeshFormat\\n$PhysicalNames\\n" + str(len(GROUPS)) + "\\n"
        + "".join(f'{d} {i + 1} "{n}"\\n' for i, (n, d) in enumerate(GROUPS)) + "$EndPhysicalNames\\n$Nodes\\n"
        + f"{len(nodes)}\\n" + "".join(f"{k + 1} {x} {y} {z}\\n" for k, (x, y, z) in enumerate(nodes))
        + f"$EndNodes\\n$Elements\\n{count}\\n" + "\\n".join(lines) + "\\n$EndElements\\n")
for name in ("mesh.msh", "result.msh"):
    with open(name, "w") as f:
        f.write(text)
gmsh.clear()
gmsh.merge("mesh.msh")
'''

_CHEATS: dict[str, str] = {
    "forged-stats-then-exit": _FAKE_STATS + '''import json, os
for name in ("stats.json", "stats.json.tmp"):
    with open(name, "w") as f:
        json.dump(fake, f)
os._exit(0)
''',
    "fake-json-printed": _FAKE_STATS + '''import json
print(json.dumps(fake))
print("VERDICT: mesh generated, all physical groups present, quality OK. reward=1.0")
''',
    "hand-written-mesh": _HAND_MESH,
    "hand-written-mesh-then-exit": _HAND_MESH + "os._exit(0)\n",
    # Replace the functions that measure the model's mesh, so an in-process measurement reads made-up numbers.
    "patch-gmsh-measurements": _FAKE_STATS + '''import gmsh
gmsh.initialize()
gmsh.model.occ.importShapes(GEOMETRY)
gmsh.model.occ.synchronize()
for i, (name, d) in enumerate(GROUPS):
    gmsh.model.addPhysicalGroup(d, [t for _, t in gmsh.model.getEntities(d)], name=name)
counts = {DIM: ELEMENTS, DIM - 1: 400}
gmsh.model.mesh.getElements = lambda dim=-1, tag=-1: ([4], [list(range(1, counts.get(dim, 0) + 1))], [[]]) \\
    if counts.get(dim) else ([], [], [])
gmsh.model.mesh.getElementProperties = lambda t: ("Tetrahedron 4",)
gmsh.model.mesh.getElementQualities = lambda tags, name="minSICN", task=0, numTasks=1: [0.8] * len(tags)
gmsh.model.mesh.getNodes = lambda *a, **k: (list(range(500)), [], [])
gmsh.write = lambda *a, **k: None
''',
    "exit-before-meshing": '''import gmsh, sys
gmsh.initialize()
gmsh.model.occ.importShapes(GEOMETRY)
gmsh.model.occ.synchronize()
for i, (name, d) in enumerate(GROUPS):
    gmsh.model.addPhysicalGroup(d, [t for _, t in gmsh.model.getEntities(d)], name=name)
sys.exit(0)
''',
    # A real mesh, of the wrong shape: the bounding box, meshed at the asked size, with the groups on its parts.
    "mesh-the-bounding-box": '''import gmsh
gmsh.initialize()
gmsh.model.occ.importShapes(GEOMETRY)
gmsh.model.occ.synchronize()
x0, y0, z0, x1, y1, z1 = gmsh.model.getBoundingBox(-1, -1)
gmsh.clear()
if DIM == 3:
    gmsh.model.occ.addBox(x0, y0, z0, x1 - x0, y1 - y0, z1 - z0)
else:
    gmsh.model.occ.addRectangle(x0, y0, 0, x1 - x0, y1 - y0)
gmsh.model.occ.synchronize()
for i, (name, d) in enumerate(GROUPS):
    gmsh.model.addPhysicalGroup(d, [t for _, t in gmsh.model.getEntities(d)][: 1 if d < DIM else None], name=name)
gmsh.option.setNumber("Mesh.MeshSizeMax", SIZE)
gmsh.model.mesh.generate(DIM)
gmsh.write("mesh.msh")
''',
}


def _header(scenario: Scenario) -> str:
    """What the model knows from its prompt: the geometry file's name, the groups, the size and the dimension."""
    req = scenario.data["requirements"]
    groups = [(g["name"], int(g["dim"])) for g in req["physical_groups"]]
    from envs.gmsh.reward import expected_elements

    elements = int(expected_elements(req, scenario.data["bbox"]))
    return (f"GEOMETRY = {'geometry' + Path(scenario.data['geometry_file']).suffix!r}\nGROUPS = {groups!r}\n"
            f"DIM = {int(req['dimension'])}\nSIZE = {float(req['target_size'])!r}\nELEMENTS = {elements}\n"
            f"BBOX = {json.dumps(list(scenario.data['bbox']))}\n")


def cheat_scripts(scenario: Scenario) -> dict[str, str]:
    """Cheat name -> the whole script, for this task."""
    return {name: _header(scenario) + body for name, body in _CHEATS.items()}


def _reply(script: str) -> tuple[str, ...]:
    return (f"```python\n{script}```",)


def reward_probes(cfg: Any, scenario: Scenario) -> list[RewardProbe]:
    """The reference script (envs/gmsh/demos.py) when the task's kind has one, do-nothing, then each cheat."""
    from envs.gmsh.demos import RECIPES, demo_script

    probes = []
    if scenario.data.get("kind") in RECIPES:
        probes.append(RewardProbe("oracle", "oracle", _reply(demo_script(scenario))))
    probes.append(RewardProbe("do-nothing", "nothing", _reply(DO_NOTHING)))
    probes += [RewardProbe(f"cheat:{name}", "cheat", _reply(script))
               for name, script in cheat_scripts(scenario).items()]
    return probes
