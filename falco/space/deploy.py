"""Deploying: the Space repo created (Gradio SDK), its files uploaded, its variables, hardware and storage set.

One call of ``deploy`` does what a person would click through on the Hub, with ``huggingface_hub.HfApi`` (as
``python -m falco.weights publish`` does for the weights); ``dry_run`` writes the folder and changes nothing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from falco.config import DEFAULT_PERSISTENT_ROOT, WEIGHTS_REPO_ENV
from falco.errors import first_line
from falco.space.folder import PROJECT_ROOT, SpaceError, SpaceSettings, check_repo_id, hub_errors, write_space_folder

NO_WEIGHTS = "none"   # --weights none: the Space uses the project's pinned set, or prepares one on its first start
WEIGHTS_DESCRIPTION = "The weight set the app loads (Hub repo[@revision]); set by python -m falco.space deploy"


@dataclass(frozen=True)
class DeployPlan:
    """What deploying changes on the Hub."""

    space_id: str
    hardware: str | None = None
    private: bool = False
    weights: str | None = None          # a repo[@revision]; NO_WEIGHTS to remove the variable; None: leave it
    storage: str | None = None          # a storage bucket mounted at the persistent root (/data)
    variables: dict[str, str] = field(default_factory=dict)

    def describe(self) -> list[str]:
        lines = [f"space: {self.space_id} (Gradio SDK, {'private' if self.private else 'public'})",
                 f"hardware: {self.hardware or 'as it is (a new Space gets cpu-basic)'}"]
        lines += [f"variable: {key}={value}" for key, value in self.variables.items()]
        if self.weights == NO_WEIGHTS:
            lines.append(f"variable: {WEIGHTS_REPO_ENV} removed (the project's pinned set, or a first-start set)")
        if self.storage:
            lines.append(f"storage: bucket {self.storage} mounted at {DEFAULT_PERSISTENT_ROOT}")
        return lines


def plan_deploy(space_id: str, *, hardware: str | None = None, private: bool = False, weights: str | None = None,
                storage: str | None = None) -> DeployPlan:
    """Every argument checked before anything is written or sent."""
    from huggingface_hub import SpaceHardware

    check_repo_id(space_id, "Space")
    choices = [flavor.value for flavor in SpaceHardware]
    if hardware is not None and hardware not in choices:
        raise SpaceError(f"Unknown hardware {hardware!r}; the Hub offers {', '.join(choices)}.")
    variables = {}
    if weights is not None and weights != NO_WEIGHTS:
        if Path(weights).expanduser().exists():
            raise SpaceError(f"A Space cannot read the folder {weights}: publish the set "
                             "(`python -m falco.weights publish`) and pass its repo.")
        repo_id, _, revision = weights.partition("@")
        check_repo_id(repo_id, "weights repo")
        if "@" in weights and not revision:
            raise SpaceError(f"{weights!r} names no revision after '@'.")
        variables[WEIGHTS_REPO_ENV] = weights
    if storage is not None:
        check_repo_id(storage, "storage bucket")
    return DeployPlan(space_id, hardware, private, weights, storage, variables)


@dataclass(frozen=True)
class Deployed:
    url: str                 # the Space's page on the Hub
    commit: str | None       # the upload's commit (None on a dry run)
    folder: Path | None      # the folder written (dry run), else None: the upload's temporary folder is gone
    files: list[str]


def deploy(plan: DeployPlan, *, dry_run: bool = False, out: str | Path | None = None, root: Path = PROJECT_ROOT,
           say: Callable[[str], None] = print) -> Deployed:
    """Writes the Space's folder, then (unless ``dry_run``) creates the Space and uploads it, and sets its variables,
    hardware and storage.  Any Hub failure is a SpaceError naming the step."""
    settings = SpaceSettings(hardware=plan.hardware,
                             weights_repo=plan.weights if plan.weights != NO_WEIGHTS else None)
    if dry_run:
        if out is None:
            raise SpaceError("--dry-run writes the Space's folder: name it with --out DIR.")
        files = write_space_folder(Path(out), settings, root)
        for line in plan.describe():
            say(f"would set {line}")
        return Deployed(f"https://huggingface.co/spaces/{plan.space_id}", None, Path(out), files)
    if out is not None:
        files = write_space_folder(Path(out), settings, root)
        return Deployed(*_publish(plan, Path(out), say), None, files)
    with tempfile.TemporaryDirectory(prefix="falco-space-") as folder:
        files = write_space_folder(Path(folder), settings, root)
        return Deployed(*_publish(plan, Path(folder), say), None, files)


def _publish(plan: DeployPlan, folder: Path, say: Callable[[str], None]) -> tuple[str, str]:
    """(the Space's URL, the commit of the upload)."""
    from huggingface_hub import HfApi, Volume

    api, space = HfApi(), plan.space_id
    step = "creating the Space"
    try:
        repo = api.create_repo(space, repo_type="space", space_sdk="gradio", space_hardware=plan.hardware,
                               private=plan.private, exist_ok=True)
        step = "uploading the files"
        # delete_patterns: files an earlier deploy uploaded and this one does not (a module since removed) go.
        commit = api.upload_folder(repo_id=space, repo_type="space", folder_path=folder, delete_patterns="*",
                                   commit_message="Deploy FALCO (python -m falco.space deploy)")
        say(f"uploaded {sum(1 for p in folder.rglob('*') if p.is_file())} files: {commit.commit_url}")
        step = "setting the variables"
        for key, value in plan.variables.items():
            api.add_space_variable(space, key, value, description=WEIGHTS_DESCRIPTION)
            say(f"variable {key}={value}")
        if plan.weights == NO_WEIGHTS and WEIGHTS_REPO_ENV in api.get_space_variables(space):
            api.delete_space_variable(space, WEIGHTS_REPO_ENV)
            say(f"variable {WEIGHTS_REPO_ENV} removed")
        if plan.storage:
            step = "mounting the storage bucket"
            api.create_bucket(plan.storage, private=True, exist_ok=True)
            api.set_space_volumes(space, [Volume(type="bucket", source=plan.storage,
                                                 mount_path=DEFAULT_PERSISTENT_ROOT)])
            say(f"storage: bucket {plan.storage} mounted at {DEFAULT_PERSISTENT_ROOT}")
        if plan.hardware:
            step = "requesting the hardware"
            runtime = api.get_space_runtime(space)
            # create_repo sets the hardware of a new Space only; an existing one is asked again.
            if plan.hardware not in (runtime.hardware, runtime.requested_hardware):
                api.request_space_hardware(space, plan.hardware)
            say(f"hardware: {plan.hardware}")
    except hub_errors() as err:
        raise SpaceError(f"Deploying {space} failed while {step} ({first_line(err)}); log in with a write token "
                         "(`hf auth login`), and check the name and your account's access to that hardware.") from err
    return repo.url, commit.oid
