"""The page put together over an engine loader (``build_app``) and served with the app's limits (``launch_app``).

falco.ui.startup orders both for ``python app.py``; tests build exactly the same page in-process.  The
device is decided and the loader made in falco.ui.engine; the layout is falco.ui.layout, over the
handlers of falco.ui.handlers.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import torch

from falco.config import AppConfig, ZeroGpuConfig
from falco.device import zerogpu_available
from falco.ui.engine import EngineLoader, decide_device, weights_loader
from falco.ui.gpu_slots import ZeroGpuSlots
from falco.ui.handlers import PageHandlers
from falco.ui.layout import PAGE_CSS, build_page
from falco.weights import fetch_weights


def zerogpu_slots(config: ZeroGpuConfig) -> ZeroGpuSlots | None:
    """``spaces.GPU`` with a duration sized to each run's work, on a ZeroGPU Space; None elsewhere."""
    if not zerogpu_available():
        return None
    import spaces
    return ZeroGpuSlots(spaces.GPU, config)


def build_app(weights: str | None = None, device: str | torch.device | None = None,
              config: AppConfig = AppConfig(), loader: EngineLoader | None = None,
              load_now: bool = True) -> tuple[gr.Blocks, PageHandlers]:
    """The app, ready to ``launch``; its pipeline starts loading in the background.

    weights: Hub repo id or local folder (default: FALCO_WEIGHTS_REPO or the project's repo).
    device: a torch.device already decided, or a name to decide from: "cuda", "cpu", ... (default: CUDA when
    there is one, or on ZeroGPU).
    """
    slots = zerogpu_slots(config.zerogpu)   # ZeroGPU: each wrapped call gets a GPU for the time its work needs
    device = decide_device(device)   # start_app decides it before the fetch
    loader = loader or weights_loader(lambda: fetch_weights(weights), device)
    app = PageHandlers(loader, config, on_gpu=device.type == "cuda", slots=slots)
    demo = build_page(app)
    if load_now:
        loader.start()
    return demo, app


def launch_app(demo: gr.Blocks, config: AppConfig = AppConfig(), host: str | None = None,
               port: int | None = None, **kwargs: Any):
    """``demo.launch`` with the app's limits; host/port None use GRADIO_SERVER_NAME/PORT or Gradio's defaults."""
    return demo.launch(server_name=host, server_port=port, max_file_size=config.max_upload_bytes,
                       show_error=True, css=PAGE_CSS, **kwargs)
