import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Before anything else is imported: the run's temporary files go to a folder of its own, removed when the run
# ends.  gradio_client makes a folder per downloaded file in tempfile.gettempdir() (whatever GRADIO_TEMP_DIR says)
# and leaves it behind; Gradio's file cache (GRADIO_TEMP_DIR, else <temp>/gradio) is shared with every Gradio app
# of the machine.  tempfile caches the temp folder on first use, so tempfile.tempdir is set as well as TMPDIR
# (which subprocesses started by the tests inherit).
SYSTEM_TMP = Path(tempfile.gettempdir())
SESSION_TMP = Path(tempfile.mkdtemp(prefix="falco-tests-"))
for _name in ("TMPDIR", "TEMP", "TMP"):
    os.environ[_name] = str(SESSION_TMP)
tempfile.tempdir = str(SESSION_TMP)
os.environ["GRADIO_TEMP_DIR"] = str(SESSION_TMP / "gradio")
atexit.register(shutil.rmtree, SESSION_TMP, ignore_errors=True)

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
def session_tmp() -> Path:
    """The run's own temporary folder (TMPDIR, tempfile.gettempdir()), removed when the run ends."""
    return SESSION_TMP


@pytest.fixture(scope="session")
def system_tmp() -> Path:
    """The machine's temporary folder, where the run must leave nothing."""
    return SYSTEM_TMP


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
