import os

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from s3sim.cli import CONF_DIR

os.environ.setdefault("HYDRA_FULL_ERROR", "0")


@pytest.fixture
def cfg():
    """Compose the app's config with overrides, exactly as `s3sim` does, as a plain dict."""
    def make(*overrides):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)
    return make
