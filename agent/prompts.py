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

_R2E_TOOLS = """You are in a persistent Python REPL at the root of a Python repository. Run code by answering with
one ```repl block (```python works too). Variables persist between blocks. Helpers:
- read_file(path) -> str, write_file(path, content), list_files(path=".", pattern="*"), search(regex, path=".")
- bash(cmd, timeout=None) -> output, run_tests() -> the test suite's output
- llm_query(prompt) -> str: ask a helper model a self-contained question
- FINAL(answer) or finish(): call when the fix is complete.
Each block's printed output comes back to you. Fix the bug by editing the source files; do not edit the tests."""

r2e_system_prompt = _R2E_TOOLS
r2e_cot_system_prompt = _R2E_TOOLS + """
Before each block, think step by step in a few sentences: what you know, what you will check or change next."""
R2E_SYSTEM_PROMPTS = {"r2e_system_prompt": r2e_system_prompt, "r2e_cot_system_prompt": r2e_cot_system_prompt}

R2E_NO_CODE_NUDGE = "No code block found. Answer with one ```repl block, or call FINAL('done') when finished."


def r2e_task(problem_statement: str) -> str:
    return f"Bug report:\n{problem_statement}\n\nInvestigate the repository, fix the bug, then call FINAL('done')."


def r2e_observation(stdout: str, stderr: str, error: str | None) -> str:
    parts = [f"Output:\n{stdout}" if stdout else "Output: (nothing printed)"]
    if stderr:
        parts.append(f"Stderr:\n{stderr}")
    if error:
        parts.append(f"Error: {error}")
    return "\n".join(parts)
