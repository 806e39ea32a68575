"""The workflow env (`--env workflow`): the policy writes a small Python workflow over fixed operators that call
the frozen executor; the workflow runs in the sandbox and its answer gets the 5-tier score (envs/workflow/reward.py)."""
