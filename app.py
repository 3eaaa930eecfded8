"""FALCO Space: the web app.  ``python app.py`` serves it on http://127.0.0.1:7860.

    python app.py                       # weights from FALCO_WEIGHTS_REPO or the project's Hub repo
    python app.py --weights ./weights   # a local folder laid out like the Hub repo
    python app.py --host 0.0.0.0 --port 8080 --device cpu

The page is put together in falco/ui/page.py (layout, handlers and API in falco/ui/layout.py, handlers.py,
api.py); the start-up order in falco/ui/startup.py.
"""

from __future__ import annotations

import argparse
import logging

from falco.config import WEIGHTS_REPO_ENV


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="FALCO face anonymization: the web app.")
    parser.add_argument("--weights", default=None,
                        help=f"Hub repo id or local folder of the weights (default: ${WEIGHTS_REPO_ENV} "
                             "or the project's repo)")
    parser.add_argument("--device", default=None, help="torch device (default: CUDA if available, else CPU)")
    parser.add_argument("--host", default=None,
                        help="address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None,
                        help="port to listen on (default: $GRADIO_SERVER_PORT or 7860)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args()
    from falco.weights.storage import keep_on_persistent_storage
    keep_on_persistent_storage()   # before anything imports huggingface_hub, which reads HF_HOME once
    from falco.errors import FalcoError
    from falco.ui.startup import start_app  # after argparse: --help answers without importing torch
    try:
        start_app(weights=args.weights, device=args.device, host=args.host, port=args.port)
    except FalcoError as err:   # a bad argument, or weights that a retry cannot fix: one line, no traceback
        raise SystemExit(f"app.py: {err}") from None
