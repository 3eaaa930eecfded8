"""The app's device: one parser (falco.pipeline.resolve_device) for the app, the command lines and the pipeline."""

import pytest
import torch

from falco.errors import FalcoError
from falco.pipeline import resolve_device
from falco.serving import app_device


def test_app_device_is_the_one_asked_for_else_cuda_on_zerogpu_else_the_default():
    assert app_device("cpu", zerogpu=True) == "cpu"
    assert app_device("cuda:1", zerogpu=False) == "cuda:1"   # named, not checked against this machine's GPUs
    assert app_device(None, zerogpu=True) == "cuda"         # ZeroGPU lends the GPU per run: none visible yet
    assert app_device("", zerogpu=False) == app_device(None, zerogpu=False) == str(resolve_device())
    assert resolve_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("ask", [lambda: app_device("tpu9", zerogpu=False), lambda: resolve_device("tpu9")])
def test_unknown_device_is_one_line_that_says_what_is_expected(ask):
    with pytest.raises(FalcoError) as refused:
        ask()
    assert str(refused.value) == "Unknown device 'tpu9': expected e.g. cpu, cuda or cuda:1."
