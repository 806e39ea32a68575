"""The `openspiel` env: board-game moves with verifiable rewards, from OpenSpiel load strings ("cases").

`spec.py` (the env's `SPEC`, what the trainer reads), `options.py` (`GameOptions`: the env's flags, light),
`cases.py` (the default cases, selection, checks), `tasks.py` (seeded fixed tasks), `moves.py` (prompt and answer
format), `playouts.py` (the process pool), `export.py` (verl parquet, SFT demonstrations), `reward.py`, `rollout.py`.
"""
