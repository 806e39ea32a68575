"""Runs one model-written gmsh script, then saves whatever mesh the gmsh model holds (inside the sandbox).

`python script_runner.py SCRIPT MESH_OUT`. `gmsh.finalize` is deferred so the mesh can be saved after the script
ends, whether it saved the mesh itself, crashed half way, or called sys.exit. This process runs model code, so
nothing it leaves behind is trusted: the mesh file it writes is only a claim, which the service hands to a fresh
process (`mesh_verifier.py`, no model code) that measures it against the task's geometry. A script that forges
a stats file, prints a verdict, exits early or writes a mesh file by hand gains nothing from it. It runs inside
the sandbox (`sandbox.run`: bubblewrap, a uid of its own) because the script it runs is model-written.
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback


def save_mesh(gmsh, write, set_number, path: str) -> None:
    """Every element (not only those in physical groups, gmsh's default), in msh 4.1, which keeps the groups."""
    if not gmsh.isInitialized():
        return
    set_number("Mesh.SaveAll", 1)
    set_number("Mesh.MshFileVersion", 4.1)
    set_number("Mesh.Binary", 1)
    write(path)


def main() -> int:
    script, mesh_out = sys.argv[1], sys.argv[2]
    import gmsh

    real_finalize, write, set_number = gmsh.finalize, gmsh.write, gmsh.option.setNumber
    gmsh.finalize = lambda: None  # keep the model alive for save_mesh()
    error = None
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            error = f"SystemExit({exc.code})"
    except BaseException:
        error = traceback.format_exc(limit=5)
    if error:
        print(error, file=sys.stderr)
    if os.path.lexists(mesh_out):  # the script's own file by that name is not the model's mesh
        os.remove(mesh_out)
    try:
        save_mesh(gmsh, write, set_number, mesh_out)
    except Exception as exc:  # the script left gmsh in a state that cannot be saved
        print(f"the mesh could not be saved: {exc.__class__.__name__}: {exc}", file=sys.stderr)
    if gmsh.isInitialized():
        real_finalize()
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
