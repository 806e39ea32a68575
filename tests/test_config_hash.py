"""Runs made before the env options existed keep their config hash, so a resume after an upgrade is not refused.

tests/data/config_hashes.json holds, for 8 command lines, the hash and the hashed fields computed by the code
before the redesign (with `--art-path`, which is not hashed, appended). A case whose default was changed on purpose
since then carries the new hash and says why in its `moved` field."""

import json

import pytest

from tests.helpers import ROOT
from trainer.cli import config_from_args

CASES = json.loads((ROOT / "tests" / "data" / "config_hashes.json").read_text())


def test_the_recorded_cases_cover_every_env_and_the_mix():
    envs = {case["hashed_fields"]["env"] for case in CASES}
    assert envs == {"gmsh", "r2e", "toy", "openspiel", "planner", "workflow", "mix"} and len(CASES) == 8


@pytest.mark.parametrize("case", CASES, ids=[" ".join(c["argv"][2:]) or "defaults" for c in CASES])
def test_old_runs_keep_their_config_hash(tmp_path, case):
    config = config_from_args([*case["argv"], "--art-path", str(tmp_path / "art")])
    assert config.hashed_fields() == case["hashed_fields"]  # the fields first: a failure names what moved
    assert config.config_hash() == case["hash"]
