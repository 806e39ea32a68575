"""Meshing tasks: parametric geometries built with gmsh's OCC kernel, a prompt, machine-readable requirements.

`generate(out_dir, seed)` is deterministic for a seed: it writes one geometry file per task (STEP for solids,
BREP for the 2-D profile) and `train.parquet` / `val.parquet`. The val (held-out) parts are drawn after the train
ones from the same generator, so a larger val set leaves the train parts (and their demos) exactly as they were.
`load_tasks(path)` reads a parquet back, in this layout or verl's (envs/verl_layout.py), and rejects a bad row
before training starts, naming the row and the field.

In verl's layout a geometry file cannot ride in a cell, so it travels as a path plus a folder: `extra_info`'s
`geometry_file` is a path relative to the parquet's folder (`geometry/<task id>.step`; an absolute path works too)
and `verl_rows` copies each file into the `geometry/` folder beside the parquet. Move the parquet with that folder.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from envs.gmsh.reward import expected_elements
from rollouts.scenario import DatasetError, Scenario

COLUMNS = ["task_id", "kind", "prompt", "geometry_file", "requirements", "bbox", "characteristic_length"]
REQUIRED = ("dimension", "physical_groups", "characteristic_length")  # what the reward reads of the requirements
GEOMETRY_DIR = "geometry"  # beside a verl parquet: the geometry files its rows name
DEFAULT_TRAIN, DEFAULT_VAL = 20, 20  # the default task set: 20 train parts, 20 held-out (4 of each kind)


@dataclass
class Shape:
    kind: str
    description: str
    groups: list[dict[str, Any]]  # name, dim, covers (what the group should hold, in words)
    refinement: list[dict[str, Any]]
    dimension: int = 3


def _box_with_hole(occ, rng: random.Random) -> Shape:
    lx, ly, lz = rng.uniform(40, 80), rng.uniform(30, 60), rng.uniform(10, 25)
    r = rng.uniform(0.15, 0.3) * min(lx, ly)
    box = occ.addBox(0, 0, 0, lx, ly, lz)
    hole = occ.addCylinder(lx / 2, ly / 2, -1, 0, 0, lz + 2, r)
    occ.cut([(3, box)], [(3, hole)])
    return Shape("box_with_hole", f"a {lx:.1f} x {ly:.1f} x {lz:.1f} block with a through hole of radius {r:.1f} "
                 "along z at its centre",
                 [{"name": "solid", "dim": 3, "covers": "the volume"},
                  {"name": "hole", "dim": 2, "covers": "the cylindrical wall of the hole"}],
                 [{"near": "hole", "size_factor": 0.5}])


def _cylinder(occ, rng: random.Random) -> Shape:
    r, h = rng.uniform(8, 20), rng.uniform(20, 60)
    occ.addCylinder(0, 0, 0, 0, 0, h, r)
    return Shape("cylinder", f"a cylinder of radius {r:.1f} and height {h:.1f} along z, base at z=0",
                 [{"name": "solid", "dim": 3, "covers": "the volume"},
                  {"name": "bottom", "dim": 2, "covers": "the face at z=0"},
                  {"name": "top", "dim": 2, "covers": f"the face at z={h:.1f}"},
                  {"name": "side", "dim": 2, "covers": "the curved face"}], [])


def _l_bracket(occ, rng: random.Random) -> Shape:
    a, b, t, w = rng.uniform(40, 70), rng.uniform(30, 60), rng.uniform(6, 12), rng.uniform(15, 30)
    base = occ.addBox(0, 0, 0, a, w, t)
    leg = occ.addBox(0, 0, 0, t, w, b)
    occ.fuse([(3, base)], [(3, leg)])
    return Shape("l_bracket", f"an L-shaped bracket: a {a:.1f} x {w:.1f} x {t:.1f} base plate on z=0 and a "
                 f"{t:.1f} x {w:.1f} x {b:.1f} upright leg at x=0",
                 [{"name": "solid", "dim": 3, "covers": "the volume"},
                  {"name": "fixed", "dim": 2, "covers": "the face at x=0"},
                  {"name": "load", "dim": 2, "covers": f"the end face of the base at x={a:.1f}"}],
                 [{"near": "inner corner", "size_factor": 0.5}])


def _plate_with_holes(occ, rng: random.Random) -> Shape:
    lx, ly, t = rng.uniform(60, 100), rng.uniform(40, 60), rng.uniform(3, 8)
    n = rng.randint(2, 4)
    r = rng.uniform(0.08, 0.14) * ly
    plate = occ.addBox(0, 0, 0, lx, ly, t)
    holes = [(3, occ.addCylinder(lx * (i + 1) / (n + 1), ly / 2, -1, 0, 0, t + 2, r)) for i in range(n)]
    occ.cut([(3, plate)], holes)
    return Shape("plate_with_holes", f"a {lx:.1f} x {ly:.1f} plate, {t:.1f} thick, with {n} through holes of "
                 f"radius {r:.1f} in a row along its centre line",
                 [{"name": "solid", "dim": 3, "covers": "the volume"},
                  {"name": "holes", "dim": 2, "covers": "the walls of all holes"}],
                 [{"near": "holes", "size_factor": 0.5}])


def _profile_2d(occ, rng: random.Random) -> Shape:
    lx, ly = rng.uniform(40, 80), rng.uniform(20, 50)
    r = rng.uniform(0.15, 0.3) * ly
    rect = occ.addRectangle(0, 0, 0, lx, ly)
    disk = occ.addDisk(lx / 3, ly / 2, 0, r, r)
    occ.cut([(2, rect)], [(2, disk)])
    return Shape("profile_2d", f"a flat {lx:.1f} x {ly:.1f} rectangle in the z=0 plane with a circular hole of "
                 f"radius {r:.1f} centred at ({lx / 3:.1f}, {ly / 2:.1f})",
                 [{"name": "domain", "dim": 2, "covers": "the surface"},
                  {"name": "outer", "dim": 1, "covers": "the four outer edges"},
                  {"name": "hole", "dim": 1, "covers": "the circle of the hole"}],
                 [{"near": "hole", "size_factor": 0.5}], dimension=2)


KINDS: dict[str, Callable[[Any, random.Random], Shape]] = {
    "box_with_hole": _box_with_hole, "cylinder": _cylinder, "l_bracket": _l_bracket,
    "plate_with_holes": _plate_with_holes, "profile_2d": _profile_2d,
}


def _prompt(shape: Shape, geometry_name: str, h: float, max_elements: int) -> str:
    groups = "\n".join(f"- \"{g['name']}\" (dimension {g['dim']}): {g['covers']}" for g in shape.groups)
    refine = "".join(f"\nMake the mesh about {1 / r['size_factor']:.0f}x finer near the {r['near']}."
                     for r in shape.refinement)
    return (f"The file `{geometry_name}` in the current directory holds {shape.description}.\n"
            f"Write a Python script using the gmsh API that imports it, meshes it in {shape.dimension}-D with a "
            f"target element size of about {h:.2f}, and defines these physical groups:\n{groups}{refine}\n"
            f"Keep the mesh under {max_elements} elements and write it to `mesh.msh`.")


def generate(out_dir: Path, seed: int = 0, n_train: int = DEFAULT_TRAIN, n_val: int = DEFAULT_VAL) -> Path:
    import gmsh

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    kinds = list(KINDS)
    gmsh.initialize(interruptible=False)
    gmsh.option.setNumber("General.Terminal", 0)
    try:
        for i in range(n_train + n_val):
            split = "train" if i < n_train else "val"
            kind = kinds[i % len(kinds)]
            gmsh.clear()
            shape = KINDS[kind](gmsh.model.occ, rng)
            gmsh.model.occ.synchronize()
            bbox = list(gmsh.model.getBoundingBox(-1, -1))
            extent = sorted(bbox[3 + k] - bbox[k] for k in range(3))
            h = round((extent[1] if shape.dimension == 3 else extent[2]) / rng.uniform(4, 8), 3)
            task_id = f"{kind}-{seed}-{i:04d}"
            suffix = ".brep" if shape.dimension == 2 else ".step"
            gmsh.write(str(out_dir / f"{task_id}{suffix}"))
            requirements = {"dimension": shape.dimension, "physical_groups": shape.groups,
                            "characteristic_length": h, "target_size": h, "refinement": shape.refinement}
            requirements["max_elements"] = int(expected_elements(requirements, bbox) * 8)
            rows[split].append({
                "task_id": task_id, "kind": kind,
                "prompt": _prompt(shape, f"geometry{suffix}", h, requirements["max_elements"]),
                "geometry_file": f"{task_id}{suffix}", "requirements": json.dumps(requirements),
                "bbox": bbox, "characteristic_length": h,
            })
    finally:
        gmsh.finalize()
    for split, split_rows in rows.items():
        pq.write_table(pa.Table.from_pylist(split_rows), out_dir / f"{split}.parquet")
    return out_dir


def _stored_counts(out_dir: Path) -> tuple[int, int] | None:
    """(train, val) rows of a task store, or None when either parquet is missing or unreadable."""
    try:
        return tuple(pq.read_metadata(out_dir / f"{split}.parquet").num_rows for split in ("train", "val"))
    except (OSError, pa.ArrowInvalid):
        return None


def ensure_default_tasks(out_dir: Path, seed: int, n_train: int = DEFAULT_TRAIN, n_val: int = DEFAULT_VAL) -> Path:
    """Generate the task set once, in a child process (OpenCascade prints to stdout from C); a store of other
    sizes (an older default's 5 held-out parts) is regenerated, its train parts the same for the same seed."""
    import subprocess
    import sys

    if _stored_counts(out_dir) == (n_train, n_val):
        return out_dir
    cmd = [sys.executable, "-m", "envs.gmsh", "generate", "--out", str(out_dir), "--seed", str(seed),
           "--train", str(n_train), "--val", str(n_val)]
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"generating gmsh tasks failed: {done.stderr[-2000:]}")
    return out_dir


def load_tasks(path: Path) -> list[Scenario]:
    """Read a task parquet; geometry files are looked up beside it."""
    from envs.verl_layout import is_verl

    if not path.is_file():
        raise DatasetError(f"--dataset {path}: no such file")
    if is_verl(path):
        return verl_tasks(path)
    table = pq.read_table(path)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise DatasetError(f"--dataset {path}: missing column(s) {', '.join(missing)}")
    scenarios = []
    for index, row in enumerate(table.to_pylist()):
        where = f"--dataset {path}, row {index} ({row.get('task_id')!r})"
        try:
            requirements = json.loads(row["requirements"])
        except (TypeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{where}: field 'requirements' is not JSON ({exc})") from exc
        for key in REQUIRED:
            if key not in requirements:
                raise DatasetError(f"{where}: field 'requirements' lacks {key!r}")
        geometry = path.parent / str(row["geometry_file"])
        if not geometry.is_file():
            raise DatasetError(f"{where}: field 'geometry_file' names {geometry}, which does not exist")
        if not isinstance(row["bbox"], list) or len(row["bbox"]) != 6:
            raise DatasetError(f"{where}: field 'bbox' must be 6 numbers")
        scenarios.append(Scenario(id=row["task_id"], prompt=row["prompt"], data={
            "kind": row["kind"], "geometry_file": row["geometry_file"], "task_store": str(path.parent),
            "requirements": requirements, "bbox": row["bbox"],
        }))
    return scenarios


# Which task files a split reads. "heldout" is the val set `train.py` evaluates on and never trains on: its
# geometries come from the same generator and seed but later draws, so no SFT demonstration or GRPO step sees them.
SPLIT_FILES = {"train": ("train.parquet",), "heldout": ("val.parquet",), "all": ("train.parquet", "val.parquet")}


def split_tasks(store: Path, split: str) -> list[Scenario]:
    """The tasks of `split` ("train", "heldout" or "all") in a task store written by `generate`."""
    if split not in SPLIT_FILES:
        raise DatasetError(f"--split {split!r}: choose from {', '.join(SPLIT_FILES)}")
    return [s for name in SPLIT_FILES[split] for s in load_tasks(store / name)]


# ---- verl's layout -----------------------------------------------------------------------------------------------


def _copy_geometry(source: Path, dest: Path) -> None:
    if dest.exists() and dest.resolve() == source.resolve():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(dest)


def verl_rows(items: list[tuple[Scenario, str]], out: Path, cfg: Any = None) -> list[dict[str, Any]]:
    """The tasks as verl rows: the rollout's two messages as `prompt`, requirements and bbox as the ground truth
    (JSON) and in `extra_info`, each geometry file copied into `geometry/` beside `out`."""
    from agent.prompts import GMSH_SYSTEM_PROMPT
    from envs.verl_layout import row

    rows, copied = [], {}
    for index, (scenario, split) in enumerate(items):
        data = scenario.data
        source = Path(data["task_store"]) / data["geometry_file"]
        name = f"{GEOMETRY_DIR}/{Path(data['geometry_file']).name}"
        if copied.setdefault(name, source) != source:
            raise DatasetError(f"task {scenario.id}: its geometry file {source.name} has the name of another "
                               f"task's ({copied[name]}); rename one")
        _copy_geometry(source, out.parent / name)
        requirements, bbox = data["requirements"], [float(v) for v in data["bbox"]]
        rows.append(row(
            f"gmsh/{data['kind']}", [{"role": "system", "content": GMSH_SYSTEM_PROMPT},
                                     {"role": "user", "content": scenario.prompt}], "meshing",
            json.dumps({"requirements": requirements, "bbox": bbox}, sort_keys=True),
            {"env": "gmsh", "task_id": scenario.id, "index": index, "split": split, "kind": data["kind"],
             "geometry_file": name, "requirements": json.dumps(requirements, sort_keys=True), "bbox": bbox}))
    return rows


def verl_tasks(path: Path) -> list[Scenario]:
    """A verl parquet's tasks: requirements, bbox and geometry_file from `extra_info`, the task text from the last
    user message; every row checked (geometry file present) before any work."""
    from envs.verl_layout import read

    scenarios = []
    for row in read(path):
        requirements = row.extra_info.get("requirements")
        if isinstance(requirements, str):
            try:
                requirements = json.loads(requirements)
            except json.JSONDecodeError as exc:
                raise row.fail("extra_info.requirements", f"is not JSON ({exc.msg})") from None
        if not isinstance(requirements, dict):
            raise row.fail("extra_info.requirements", "must be the task's requirements (a JSON object)")
        if missing := [key for key in REQUIRED if key not in requirements]:
            raise row.fail("extra_info.requirements", f"lacks {', '.join(map(repr, missing))}")
        bbox = row.extra_info.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 6 or not all(isinstance(v, int | float) for v in bbox):
            raise row.fail("extra_info.bbox", "must be 6 numbers (xmin, ymin, zmin, xmax, ymax, zmax)")
        geometry_file = row.text("geometry_file")
        if geometry_file is None:
            raise row.fail("extra_info.geometry_file", f"is missing (a path relative to {path.parent})")
        if not (path.parent / geometry_file).is_file():
            raise row.fail("extra_info.geometry_file", f"names {path.parent / geometry_file}, which does not exist "
                           f"(the {GEOMETRY_DIR}/ folder travels beside the parquet)")
        kind = row.text("kind") or row.data_source.rsplit("/", 1)[-1]
        scenarios.append(Scenario(id=row.task_id("gmsh"), prompt=row.user_text(), data={
            "kind": kind, "geometry_file": geometry_file, "task_store": str(path.parent),
            "requirements": requirements, "bbox": [float(v) for v in bbox]}))
    return scenarios
