import os

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from s3sim.cli import CONF_DIR
from s3sim.inputs import SHARED_DATA_DIR

os.environ.setdefault("HYDRA_FULL_ERROR", "0")


def pytest_sessionstart(session):
    """Every workload the suite simulates reads the shared data (as `make run` does): without it, one line
    saying where it was looked for, not a hundred failures."""
    if not SHARED_DATA_DIR.is_dir():
        pytest.exit(f"the shared data folder is not at {SHARED_DATA_DIR.resolve()}: the suite, like `make run`, "
                    "needs it beside the repository (../shared/data; see README)", returncode=2)


@pytest.fixture
def cfg():
    """Compose the app's config with overrides, exactly as `s3sim` does, as a plain dict."""
    def make(*overrides):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)
    return make
