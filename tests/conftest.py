import atexit
import os
import shutil
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

import pytest  # noqa: E402  (after the temp folder is set: see above)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Tests never reach the Hub.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


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
    """(generator, arcface, farl): the tiny seeded networks of the random weight sets (one definition of "tiny":
    falco.models.random_weights.TINY_CONFIGS), for the loss and the optimisation loop.  Per module: tests patch
    their methods and move them."""
    from falco.models.random_weights import random_network
    return tuple(random_network(name, tiny=True) for name in ("generator", "arcface", "farl"))
