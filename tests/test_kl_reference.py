"""`--kl-reference`: what the KL term keeps the policy near. `base` (the default) is the base model with the adapter
off; `sft` is the policy RL started from, the last SFT epoch's checkpoint, so a KL term after SFT holds RL near what
SFT learned instead of pulling it back towards the model before SFT."""

from __future__ import annotations

import json

import pytest

from tests.helpers import history_rows, model_dir, run_train


def test_kl_reference_is_checked_and_hashed_only_with_a_kl_term():
    from trainer.checks import check_config
    from trainer.cli import config_from_args
    from trainer.config import ConfigError

    with pytest.raises(ConfigError, match="--kl-reference sft needs a KL term"):
        check_config(config_from_args(["--experiment-name", "e", "--kl-reference", "sft"]))
    base = config_from_args(["--experiment-name", "e", "--kl-penalty-coef", "0.1"])
    sft = config_from_args(["--experiment-name", "e", "--kl-penalty-coef", "0.1", "--kl-reference", "sft"])
    assert "kl_reference" not in base.hashed_fields()  # runs made before the flag keep their hash
    assert sft.hashed_fields()["kl_reference"] == "sft" and sft.config_hash() != base.config_hash()


def test_the_reference_step_is_where_rl_started_and_survives_pruning():
    from backends.checkpoints import steps_to_keep
    from trainer.cli import config_from_args
    from trainer.rl import kl_keywords

    sft = config_from_args(["--experiment-name", "e", "--kl-penalty-coef", "0.1", "--kl-reference", "sft"])
    base = config_from_args(["--experiment-name", "e", "--kl-penalty-coef", "0.1"])
    off = config_from_args(["--experiment-name", "e"])
    assert kl_keywords(sft, 3) == {"kl_penalty_coef": 0.1, "kl_penalty_reference_step": 3}
    assert kl_keywords(sft, 0) == {"kl_penalty_coef": 0.1, "kl_penalty_reference_step": 0}
    assert kl_keywords(base, 3) == {"kl_penalty_coef": 0.1} and kl_keywords(off, 3) == {}
    assert steps_to_keep([0, 1, 2, 3, 4, 5, 6], 6, 1, 1, None, pinned=3) == [3, 5, 6]


def _toy_demos(path) -> str:
    rows = [{"messages": [{"role": "user", "content": f"Say a. ({i})"}, {"role": "assistant", "content": "aaaa"}]}
            for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.slow
def test_after_sft_the_sft_reference_starts_rl_at_no_distance_where_the_base_one_does_not(tmp_path):
    """Two runs of the same SFT, then RL: the KL to the SFT checkpoint is zero when RL starts (the policy is that
    checkpoint; 2 x 4 rollouts are one gradient step, whose KL is measured before its update), the KL to the base
    model is what SFT moved; the reference checkpoint outlives --keep-checkpoints 1."""
    demos = _toy_demos(tmp_path / "demos.jsonl")
    kl = {}
    for reference in ("base", "sft"):
        result = run_train(tmp_path, reference, "--env", "toy", "--sft-data", demos, "--sft-epochs", "2",
                           "--sft-learning-rate", "3e-3", "--max-training-steps", "2", "--groups-per-step", "2",
                           "--rollouts-per-group", "4", "--dataset-size", "8", "--kl-penalty-coef", "0.5",
                           "--kl-reference", reference, "--keep-checkpoints", "1")
        assert result.returncode == 0, result.stderr[-2000:]
        trained = [r for r in history_rows(tmp_path, reference) if "train/kl_policy_ref" in r]
        assert trained, history_rows(tmp_path, reference)
        kl[reference] = trained[0]["train/kl_policy_ref"]
        kept = sorted(p.name for p in (model_dir(tmp_path, reference) / "checkpoints").iterdir())
        if reference == "sft":
            assert "0002" in kept, kept  # the last SFT epoch's checkpoint, the reference, is never pruned
    assert abs(kl["sft"]) < 1e-4 and abs(kl["base"]) > 1e-3, kl
