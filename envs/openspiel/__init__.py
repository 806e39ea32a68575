"""The `openspiel` env: board-game moves with verifiable rewards, from OpenSpiel load strings ("cases").

`flags.py` (the env's CLI flags and `GameOptions`, light), `cases.py` (the default cases, selection, checks),
`tasks.py` (seeded fixed tasks), `moves.py` (prompt and answer format), `playouts.py` (the process pool),
`export.py` (verl parquet, SFT demonstrations); rewards in `envs/openspiel/reward.py`, the rollout in
`envs/openspiel/rollout.py`.
"""
