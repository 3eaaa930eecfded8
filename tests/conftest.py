import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(ROOT))
# Tests never reach the Hub.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Gradio's file cache for in-process app tests: their own, gone when the run ends (not /tmp/gradio, shared
# with every Gradio app on the machine; tests that never end a session would leave files there).
_GRADIO_CACHE = tempfile.mkdtemp(prefix="falco-tests-gradio-")
os.environ.setdefault("GRADIO_TEMP_DIR", _GRADIO_CACHE)
atexit.register(shutil.rmtree, _GRADIO_CACHE, ignore_errors=True)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: full-size networks; tens of seconds on a laptop CPU")
    config.addinivalue_line("markers", "browser: drives headless chromium")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def astronaut(fixtures_dir) -> Path:
    """The test photo: one usable face and a mission patch the detector also reports."""
    return fixtures_dir / "align" / "astronaut.png"


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A complete tiny random weight set in Hub layout (falco.weights), built once per session."""
    from falco.weights.random_set import make_random_weights
    folder = tmp_path_factory.mktemp("tiny-weights")
    make_random_weights(folder, tiny=True)
    return folder


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_weights):
    """FalcoPipeline on the tiny random weights, on the CPU."""
    from falco.pipeline import FalcoPipeline
    return FalcoPipeline.from_pretrained(str(tiny_weights), device="cpu", progress=False)


@pytest.fixture(scope="module")
def tiny_nets():
    """(generator, arcface, farl): small seeded networks for the loss and the optimisation loop (64 px
    faces, 32-d latents, FaRL at 32 px).  Per module: tests patch their methods and move them."""
    from falco.models.arcface import ArcFace
    from falco.models.farl import FaRL
    from falco.models.random_weights import seeded_state_dict
    from falco.models.stylegan2 import Generator
    generator = Generator(size=64, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 32, 32: 16, 64: 16})
    arcface = ArcFace(widths=(16, 16, 32, 32), units=(1, 1, 1, 1), embedding_dim=32)
    farl = FaRL(image_size=32, patch_size=16, width=32, layers=2, heads=2, embed_dim=24)
    for net, prefix in ((generator, "g_ema."), (arcface, ""), (farl, "")):
        net.load_state_dict(seeded_state_dict(net.state_dict(), prefix))
    return generator, arcface, farl
