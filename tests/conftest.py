import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TQDM_DISABLE", "1")


import pytest  # noqa: E402 - after the environment above, which must be set before anything imports ART


@pytest.fixture(scope="module")
def r2e_cache(tmp_path_factory) -> Path:
    """A repo cache of the bundled r2e samples, built once per test module."""
    from envs.r2e.cache import build_from_samples

    directory = tmp_path_factory.mktemp("r2e_cache")
    build_from_samples(directory)
    return directory


@pytest.fixture(scope="module")
def r2e_service(r2e_cache):
    """The r2e test service (process runtime) over that cache, for one test module."""
    from services.process import ServiceProcess

    with ServiceProcess("envs.r2e.test_service", "--runtime", "process", "--cache-dir", str(r2e_cache),
                        "--max-concurrent", "2") as service:
        yield service
