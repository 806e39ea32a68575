"""System prompts, kept apart from the loops that send them so a prompt change is a one-file diff."""

TOY_SYSTEM_PROMPT = "You are a terse assistant. Follow the instruction exactly."

GMSH_SYSTEM_PROMPT = """You write Python scripts for the gmsh API (`import gmsh`) that mesh CAD geometry.
Answer with one ```python code block holding the complete script. The script must:
- call gmsh.initialize(), import the geometry file named in the task (gmsh.model.occ.importShapes, then
  gmsh.model.occ.synchronize()),
- set the element size (e.g. gmsh.option.setNumber("Mesh.MeshSizeMax", h)) and any local refinement,
- create every requested physical group with gmsh.model.addPhysicalGroup(dim, tags, name=...),
- generate the mesh in the requested dimension and write it with gmsh.write("mesh.msh").
If a run fails you will see its output and mesh statistics; then answer with a corrected complete script."""


def gmsh_feedback(error: str | None, stats_summary: str, output_tail: str) -> str:
    """The observation after a script ran: what went wrong and what the mesh looks like."""
    head = f"The script failed: {error}" if error else "The script ran."
    return f"{head}\nMesh: {stats_summary}\nOutput (end):\n{output_tail}\nReply with a corrected complete script."
