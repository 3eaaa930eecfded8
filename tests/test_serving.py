"""The app's start: its device (one parser, falco.pipeline.resolve_device, for the app, the command lines and the
pipeline) and what a failed load of the weights does."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from falco.errors import FalcoError
from falco.pipeline import resolve_device
from falco.serving import app_device

ROOT = Path(__file__).resolve().parents[1]


def machine_with_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_app_device_is_the_one_asked_for_else_cuda_on_zerogpu_else_the_default(monkeypatch):
    machine_with_gpus(monkeypatch, 2)
    assert app_device("cpu", zerogpu=True) == "cpu"
    assert app_device("cuda:1", zerogpu=False) == "cuda:1"
    assert app_device("", zerogpu=False) == app_device(None, zerogpu=False) == str(resolve_device()) == "cuda"
    machine_with_gpus(monkeypatch, 0)
    assert app_device(None, zerogpu=True) == "cuda"         # ZeroGPU lends the GPU per run: none visible yet
    assert app_device("cuda:1", zerogpu=True) == "cuda:1"
    assert app_device(None, zerogpu=False) == str(resolve_device()) == "cpu"


@pytest.mark.parametrize("ask", [lambda: app_device("tpu9", zerogpu=False), lambda: resolve_device("tpu9")])
def test_unknown_device_is_one_line_that_says_what_is_expected(ask):
    with pytest.raises(FalcoError) as refused:
        ask()
    assert str(refused.value) == "Unknown device 'tpu9': expected e.g. cpu, cuda or cuda:1."


@pytest.mark.parametrize("gpus, device, reason", [(0, "cuda", "finds no CUDA GPU"), (0, "cuda:0", "finds no CUDA GPU"),
                                                  (2, "cuda:2", "has 2 CUDA GPU(s), cuda:0 to cuda:1"),
                                                  (1, torch.device("cuda", 3), "has 1 CUDA GPU(s), cuda:0 to cuda:0")])
def test_a_gpu_this_machine_lacks_is_refused_in_one_line(monkeypatch, gpus, device, reason):
    machine_with_gpus(monkeypatch, gpus)
    for ask in (lambda: resolve_device(device), lambda: app_device(str(device), zerogpu=False)):
        with pytest.raises(FalcoError) as refused:
            ask()
        line = str(refused.value)
        assert line.startswith(f"Device '{device}' is not available") and reason in line and "\n" not in line
    assert resolve_device(device, present=False) == torch.device(device)


def run_app(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "app.py", *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          check=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_app_refuses_cuda_without_a_gpu_in_one_line():
    done = run_app("--device", "cuda")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == ["app.py: Device 'cuda' is not available: PyTorch finds no CUDA GPU on this "
                                        "machine; use cpu."]
