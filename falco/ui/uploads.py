"""Which files of Gradio's cache a handler may take from a caller, and which it may delete.

Anyone may send any path of Gradio's cache: the page's runs take a file Gradio's /upload made or an
example, and only an upload is ever deleted (by its last holder, falco.ui.sessions.SharedFiles), never an
example nor a file of a session's folder.
"""

from __future__ import annotations

import gradio as gr


def is_example(demo: gr.Blocks, path: str) -> bool:
    """An example file of the page (Gradio keeps it in its cache for good)."""
    return any(path in getattr(block, "keep_in_cache", ()) for block in demo.blocks.values())


def known_file(demo: gr.Blocks, path: str) -> bool:
    """A file Gradio's /upload made, or an example."""
    return path in demo.upload_file_set or is_example(demo, path)


def deletable(demo: gr.Blocks, path: str) -> bool:
    """Whether ``path`` is an upload that its holders may delete: a file Gradio's /upload made, and not an
    example (anyone may send any path of the cache; examples and other sessions' files must stay)."""
    return path in demo.upload_file_set and "falco-session-" not in path and not is_example(demo, path)
