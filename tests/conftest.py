import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(ROOT))
# Tests never reach the Hub.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: full-size networks; tens of seconds on a laptop CPU")
    config.addinivalue_line("markers", "browser: drives headless chromium")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A complete tiny random weight set in Hub layout (falco.weights), built once per session."""
    from falco.weights import make_random_weights
    folder = tmp_path_factory.mktemp("tiny-weights")
    make_random_weights(folder, tiny=True)
    return folder


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_weights):
    """FalcoPipeline on the tiny random weights, on the CPU."""
    from falco.pipeline import FalcoPipeline
    return FalcoPipeline.from_pretrained(str(tiny_weights), device="cpu", progress=False)
