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

# PyTorch on one thread, here and in the subprocesses the tests start (set before torch is imported; a value the
# environment gives is kept).  The tiny networks' operations are too small to share between cores: a second thread
# only adds its synchronisation, which on a CPU that other jobs share made a tiny pipeline run 3 to 15 times slower
# (and the full-size goldens slower too).  On two idle cores the other core is left to the subprocesses that tests
# start (app.py, the command lines, accelerate's processes).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# An app started on a prepared set grows its bank in the background (falco.ui.grower): only in the tests that ask.
os.environ.setdefault("FALCO_BANK_GROW_TO", "0")

import pytest  # noqa: E402  (after the temp folder is set: see above)

# The browser tests' Chromium and app process, shared by their modules.
pytest_plugins = ["tests.browser_support"]

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Tests never reach the Hub.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


# The suite runs on two pytest-xdist workers (pyproject's addopts: -n 2 --dist loadscope).  Each module's tests
# stay on one worker, so a module's fixtures (a served app, a browser, a pipeline) are made once and its tests run in
# order.  The modules that need gigabytes (full-size networks; a browser with the app it drives; several processes)
# share one worker and run one after another, so two of them never add their peaks: the suite's peak is one of them
# beside one light module.  (Scopes by module name rather than xdist_group marks: pytest 9.2 renamed the node id
# attribute that xdist 3.8's loadgroup rewrites.)
HEAVY_MODULES = frozenset({"test_stylegan2", "test_e4e", "test_arcface", "test_farl", "test_io",   # full-size
                           "test_app_browser", "test_evaluate_browser",                            # a browser
                           "test_datasets", "test_first_start"})                                   # processes


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "heavy" if Path(module).stem in HEAVY_MODULES else module

    return ModuleScheduling(config, log)


@pytest.fixture(autouse=True)
def freed_memory_goes_back():
    """After each test the freed heap goes back to the system, as the app's does after a job
    (falco.allocator): with the CPU allocator setting on (any test that loads a pipeline switches it on for the
    process), the test process would otherwise hold the largest test's peak for the rest of the run."""
    yield
    from falco.allocator import release_freed_memory
    release_freed_memory()


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
def tiny_weights_with_judges(tiny_weights) -> Path:
    """tiny_weights with random evaluation networks in ``evaluation/`` (falco.evaluate.judges), added once per
    session: the FID Inception keeps its real size (96 MB, about a second), the others are tiny."""
    from falco.evaluate.random_judges import make_random_judges
    make_random_judges(tiny_weights, tiny=True)
    return tiny_weights


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


@pytest.fixture(scope="session")
def official_files(tmp_path_factory) -> dict[str, Path]:
    """Tiny random networks in the containers of the official releases (what the loaders of io read), and dlib's
    real models (the landmark one as is, the recogniser bz2-compressed as dlib distributes it)."""
    import bz2
    import shutil

    import torch

    from falco.models import io
    from falco.models.random_weights import random_network
    from falco.weights import ARTIFACTS
    from falco.weights.random_set import packaged_dlib_model
    folder = tmp_path_factory.mktemp("official")
    generator, e4e = random_network("generator", tiny=True), random_network("e4e", tiny=True)
    latent_avg = io.estimate_mean_w(generator, samples=256).expand(e4e.config["n_styles"], -1).clone()
    state = {**{f"encoder.{k}": v for k, v in e4e.state_dict().items()},
             **{f"decoder.{k}": v for k, v in generator.state_dict().items()}}
    files = {name: folder / filename for name, filename in (
        ("e4e", "e4e_ffhq_encode.pt"), ("arcface", "model_ir_se50.pth"),
        ("farl", "FaRL-Base-Patch16-LAIONFace20M-ep64.pth"),
        ("dlib_landmarks", ARTIFACTS["dlib_landmarks"]), ("dlib_recognition", ARTIFACTS["dlib_recognition"] + ".bz2"))}
    torch.save({"state_dict": state, "latent_avg": latent_avg, "opts": {"stylegan_size": 64}}, files["e4e"])
    torch.save(random_network("arcface", tiny=True).state_dict(), files["arcface"])
    farl = random_network("farl", tiny=True).state_dict()   # keys visual.*; the text tower is not ours
    torch.save({"state_dict": {**farl, "text_projection": torch.zeros(4, 4)}}, files["farl"])
    shutil.copyfile(packaged_dlib_model(ARTIFACTS["dlib_landmarks"]), files["dlib_landmarks"])
    # dlib distributes its files bz2-compressed
    files["dlib_recognition"].write_bytes(bz2.compress(
        packaged_dlib_model(ARTIFACTS["dlib_recognition"]).read_bytes(), compresslevel=1))
    return files
