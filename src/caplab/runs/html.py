"""The one HTML page builder every report uses: a title, a style, and the body parts a report composes.

A page stands alone: its figures are embedded as base64 PNG data (the PNG files stay beside it too), so the
one report.html can be mailed, attached or moved without its folder."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

from caplab.runs.store import atomic_write_bytes

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:49%}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
         "pre{background:#f6f6f6;padding:8px;overflow:auto}")


def escape(text) -> str:
    return html.escape(str(text))


def images(names: list[str], folder: str = "figures") -> list[str]:
    """<img> tags for figure files in `folder` (relative to the page)."""
    return [f"<img src='{folder}/{escape(n)}' alt='{escape(Path(n).stem)}'>" for n in names]


def json_block(title: str, data) -> str:
    """A heading and the JSON of `data`, pretty-printed."""
    return f"<h2>{escape(title)}</h2><pre>{escape(json.dumps(data, indent=2))}</pre>"


def write_page(path: Path, title: str, body: list[str]) -> Path:
    """Write `path` (atomically): an HTML page titled `title` whose body is `body` (already-escaped HTML parts)."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{escape(title)}</title>",
             f"<style>{STYLE}</style></head><body>", *body, "</body></html>"]
    page = embed_images("\n".join(parts), Path(path).parent)
    atomic_write_bytes(Path(path), page.encode())
    return Path(path)


def embed_images(page: str, folder: Path) -> str:
    """Every <img src='RELATIVE.png'> whose file exists under `folder` replaced by the file's bytes as a data URI."""
    def inline(match: re.Match) -> str:
        file = folder / html.unescape(match.group(1))
        if not file.is_file():
            return match.group(0)
        return f"src='data:image/png;base64,{base64.b64encode(file.read_bytes()).decode()}'"

    return re.sub(r"src='([^':]+\.png)'", inline, page)
