"""python -m falco.space: the Space's folder (exactly the files the app needs, self-sufficient), deploy against a
stand-in Hub API (tests/fake_space_hub.py), and check against that stand-in and the real page served here."""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from huggingface_hub import SpaceCard, constants

from falco.config import WEIGHTS_REPO_ENV, SpaceConfig
from falco.space import __main__ as space_cli
from falco.space.check import check, parse_target
from falco.space.deploy import NO_WEIGHTS, deploy, plan_deploy
from falco.space.folder import PROJECT_ROOT, SpaceError, SpaceSettings, space_readme, write_space_folder
from falco.weights.manifest import ARTIFACTS
from tests.fake_space_hub import COMMIT, FakeSpaceHub

SPACE = "someone/falco-demo"
FRONT_MATTER = "---\ntitle: T\nsdk: gradio\napp_file: app.py\n---\n\n# Body\n"
QUICK = SpaceConfig(poll_s=0.01, runtime_timeout_s=5.0, ready_timeout_s=60.0)


@pytest.fixture
def hub(monkeypatch, session_tmp):
    server = FakeSpaceHub()
    monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)   # HfApi's default endpoint, read at import
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    # The upload imports hf_xet, which starts a log file in its cache folder: the run's, not the user's.
    monkeypatch.setenv("HF_XET_CACHE", str(session_tmp / "hf-xet"))
    yield server
    server.close()


def make_project(root: Path) -> None:
    """A checkout's shape: what the Space needs, and what it must leave behind."""
    for name, text in {"app.py": "print('app')", "requirements.txt": "gradio\n", "README.md": FRONT_MATTER,
                       "weights/manifest.json": "{}", "requirements-dev.txt": "pytest\n", ".ci/run": "pytest",
                       "tests/test_app.py": "", "falco/__init__.py": "", "falco/ui/__init__.py": "",
                       "falco/ui/page.py": "", "falco/assets/astronaut.jpg": "jpeg",
                       "falco/benchmarks/__init__.py": "", "falco/benchmarks/optim.py": "",
                       "falco/benchmarks/gpu.sh": "bash", "falco/benchmarks/results.json": "{}",
                       "falco/__pycache__/config.cpython-311.pyc": "", "falco/.cache/x": "",
                       "falco/scratch/notes.py": "", "falco/ui/page.py.orig": ""}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_the_space_folder_holds_the_app_its_package_and_nothing_else(tmp_path):
    make_project(tmp_path / "project")
    written = write_space_folder(tmp_path / "space", root=tmp_path / "project")
    expected = {"app.py", "requirements.txt", "README.md", "weights/manifest.json", "falco/__init__.py",
                "falco/ui/__init__.py", "falco/ui/page.py", "falco/assets/astronaut.jpg",
                "falco/benchmarks/__init__.py", "falco/benchmarks/optim.py"}
    assert set(written) == expected and files_under(tmp_path / "space") == expected
    with pytest.raises(SpaceError, match="not an empty folder"):
        write_space_folder(tmp_path / "space", root=tmp_path / "project")


def imported_modules(path: Path) -> set[str]:
    """Every absolute import of a file, function-level ones included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules_installed_by(requirements: list[str]) -> set[str]:
    """The top-level modules of the requirements' distributions and of the ones they require, as installed here."""
    modules, seen, todo = set(), set(), [re.split(r"[<>=!~\[; (]", r, maxsplit=1)[0] for r in requirements]
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        modules.update(f.parts[0].removesuffix(".py") for f in dist.files or [] if not f.parts[0].endswith("-info"))
        todo += [re.split(r"[<>=!~\[; (]", r, maxsplit=1)[0] for r in dist.requires or [] if "extra ==" not in r]
    return modules


def test_the_space_folder_needs_nothing_but_its_requirements(tmp_path):
    """Every falco module the folder's code imports is in the folder, and every other import is the standard
    library's or comes with a distribution its requirements.txt installs."""
    folder = tmp_path / "space"
    write_space_folder(folder)
    card = SpaceCard((folder / "README.md").read_text(encoding="utf-8"))
    assert card.data.sdk == "gradio" and (folder / card.data.app_file).is_file()
    requirements = [line for line in (folder / "requirements.txt").read_text().splitlines() if line[:1].isalnum()]
    installed = modules_installed_by(requirements)
    # `spaces` comes with a ZeroGPU Space's image and is imported only there (falco.device).
    provided_by_the_space = {"spaces"}
    missing, unlisted = set(), set()
    for path in folder.rglob("*.py"):
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top == "falco":
                module = folder / name.replace(".", "/")
                parent = folder / name.rsplit(".", 1)[0].replace(".", "/")
                # "from falco.x import name": name is a module of falco/x, or something falco/x defines
                if not any(p.is_file() for p in (module.with_suffix(".py"), module / "__init__.py",
                                                 parent.with_suffix(".py"), parent / "__init__.py")):
                    missing.add(f"{path.relative_to(folder)}: {name}")
            elif top not in sys.stdlib_module_names and top not in provided_by_the_space and top != "app":
                if top not in installed:
                    unlisted.add(f"{path.relative_to(folder)}: {top}")
    assert not missing, missing
    assert not unlisted, unlisted


def test_the_readme_front_matter_names_the_hardware_and_preloads_the_weights():
    text = space_readme(FRONT_MATTER, SpaceSettings(hardware="zero-a10g", weights_repo="me/weights@abc123"))
    card = SpaceCard(text)
    assert card.data.suggested_hardware == "zero-a10g" and card.data.models == ["me/weights"]
    (entry,) = card.data.preload_from_hub
    repo, files, revision = entry.split()
    assert (repo, revision) == ("me/weights", "abc123")
    assert set(files.split(",")) == {"manifest.json", *ARTIFACTS.values()}
    assert text.endswith("# Body\n") and card.data.title == "T"
    assert SpaceCard(space_readme(FRONT_MATTER, SpaceSettings(weights_repo="me/w"))).data.preload_from_hub == ["me/w"]
    with pytest.raises(SpaceError, match="Gradio SDK"):
        space_readme(FRONT_MATTER.replace("gradio", "docker"), SpaceSettings())


def test_deploy_creates_the_space_uploads_it_and_sets_what_it_needs(hub, tmp_path, capsys):
    plan = plan_deploy(SPACE, hardware="t4-small", weights="me/weights@abc123", storage="someone/falco-data")
    result = deploy(plan, out=tmp_path / "space")
    space = hub.spaces[SPACE]
    assert (space["type"], space["sdk"], space["hardware"], space["private"]) == ("space", "gradio", "t4-small", False)
    assert result.url == f"{hub.endpoint}/spaces/{SPACE}" and result.commit == COMMIT
    assert set(space["files"]) == set(result.files) | {".gitattributes"}
    assert space["files"]["README.md"] == (tmp_path / "space" / "README.md").read_bytes()
    assert space["files"]["falco/config.py"] == (PROJECT_ROOT / "falco" / "config.py").read_bytes()
    assert list(space["variables"]) == [WEIGHTS_REPO_ENV]
    assert space["variables"][WEIGHTS_REPO_ENV]["value"] == "me/weights@abc123"
    assert space["volumes"] == [{"type": "bucket", "source": "someone/falco-data", "mountPath": "/data"}]
    assert hub.buckets == ["someone/falco-data"]
    assert hub.calls("POST", "/hardware") == 0      # a new Space got its hardware when it was created
    assert "t4-small" in capsys.readouterr().out

    # A second deploy: a file the first uploaded and this one does not is deleted; the variable goes ("none");
    # the Space's hardware, changed on the Hub since, is asked for again.
    space["files"]["falco/removed_module.py"] = b""
    space["hardware"] = space["requested_hardware"] = "cpu-basic"
    deploy(plan_deploy(SPACE, hardware="t4-small", weights=NO_WEIGHTS))
    assert "falco/removed_module.py" not in space["files"] and ".gitattributes" in space["files"]
    assert space["variables"] == {} and space["requested_hardware"] == "t4-small"
    assert len(hub.commits) == 2


def test_deploy_failures_are_one_line_naming_the_step(hub, capsys):
    hub.spaces[SPACE] = {"type": "space", "sdk": "gradio", "private": False, "hardware": "cpu-basic",
                         "requested_hardware": None, "files": {}, "variables": {}, "volumes": []}
    hub.fail[("POST", f"/api/spaces/{SPACE}/hardware")] = 402
    assert space_cli.main(["deploy", "--space", SPACE, "--hardware", "a10g-small"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "while requesting the hardware" in err and "402" in err
    for args, words in (([SPACE, "--hardware", "gpu-please"], "Unknown hardware"),
                        ([SPACE, "--weights", str(PROJECT_ROOT)], "cannot read the folder"),
                        (["no-owner"], "name its owner"), ([SPACE, "--weights", "me/w@"], "no revision")):
        sent = len(hub.requests)
        assert space_cli.main(["deploy", "--space", *args]) == 1
        assert words in capsys.readouterr().err and len(hub.requests) == sent   # refused before any call


def test_dry_run_writes_the_folder_and_sends_nothing(hub, tmp_path, capsys):
    assert space_cli.main(["deploy", "--space", SPACE, "--weights", "me/w", "--dry-run",
                           "--out", str(tmp_path / "space")]) == 0
    out = capsys.readouterr().out
    assert hub.requests == [] and (tmp_path / "space" / "app.py").is_file()
    assert f"{WEIGHTS_REPO_ENV}=me/w" in out and "pip install -r requirements.txt && python app.py" in out
    with pytest.raises(SystemExit) as usage:
        space_cli.main(["deploy", "--space", SPACE, "--dry-run"])
    assert usage.value.code == 2


def test_check_targets():
    assert parse_target("https://huggingface.co/spaces/a/b").space_id == "a/b"
    assert parse_target("a/b").space_id == "a/b"
    assert parse_target("https://a-b.hf.space").url == "https://a-b.hf.space/"
    with pytest.raises(SpaceError, match="neither"):
        parse_target("not a space")


def test_check_says_why_a_space_does_not_run(hub, capsys):
    hub.spaces[SPACE] = {"type": "space", "sdk": "gradio", "private": False, "hardware": "cpu-basic",
                         "requested_hardware": None, "files": {}, "variables": {}, "volumes": []}
    hub.runtime_stages[SPACE] = ["BUILDING", "BUILDING", "BUILD_ERROR"]
    with pytest.raises(SpaceError, match=r"build failed \(ModuleNotFoundError: No module named 'dlib'\)") as err:
        check(SPACE, config=QUICK)
    assert "\n" not in str(err.value) and hub.calls("GET", "/runtime") == 3
    hub.runtime_stages[SPACE] = ["BUILDING"]
    assert space_cli.main(["check", SPACE, "--timeout", "0.05"]) == 1
    assert "still BUILDING after 0 s" in capsys.readouterr().err
    constants.ENDPOINT = "http://127.0.0.1:9"    # nothing listens there (the fixture's monkeypatch restores it)
    with pytest.raises(SpaceError, match="does not show the Space"):
        check(SPACE, config=QUICK)


@pytest.mark.slow
def test_check_waits_for_the_space_then_anonymizes_the_example(hub, tiny_pipeline):
    from falco.config import AppConfig, OptimConfig
    from falco.ui import engine, page

    config = AppConfig(cpu_optim=OptimConfig(steps=3, preview_every=1, loss_on_skip256=True))
    demo, app = page.build_app(loader=engine.EngineLoader(lambda: tiny_pipeline), device="cpu", config=config)
    _, url, _ = page.launch_app(demo, config, host="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        hub.spaces[SPACE] = {"type": "space", "sdk": "gradio", "private": False, "hardware": "zero-a10g",
                             "requested_hardware": None, "files": {}, "variables": {}, "volumes": []}
        hub.runtime_stages[SPACE] = ["BUILDING", "APP_STARTING", "RUNNING"]
        hub.host[SPACE] = url
        said = []
        stages = check(SPACE, steps=1, margins="0.5", config=QUICK, say=said.append)
    finally:
        demo.close()
    assert [s.name for s in stages] == ["running", "page", "models", "anonymize"]
    assert "zero-a10g (BUILDING -> APP_STARTING -> RUNNING)" in stages[0].detail
    assert app.loader.status()[0] == "ready" and stages[2].detail == app.loader.status()[1]
    assert "1 result(s)" in stages[3].detail and "face 1 m=0.5: " in stages[3].detail
    assert len(said) == 4 and all(s.seconds >= 0 for s in stages)
