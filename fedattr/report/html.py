"""One self-contained HTML page from a report's markdown (markdown-it-py; images embedded)."""

from __future__ import annotations

import base64
import html
import mimetypes
from pathlib import Path

from markdown_it import MarkdownIt

__all__ = ["markdown_to_html"]

_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
          "table{border-collapse:collapse;margin:1em 0;display:block;overflow-x:auto}"
          "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;white-space:nowrap}"
          "img{max-width:100%}pre{background:#f4f4f4;padding:1em;overflow:auto}"
          "blockquote{border-left:4px solid #D55E00;margin:1em 0;padding:.2em 1em;background:#fff4ec}")


def _data_uri(path: Path) -> str | None:
    """The file as a ``data:`` URI, or None when it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def markdown_to_html(md: str, title: str = "fedattr report", base: Path | None = None) -> str:
    """A standalone HTML page: CommonMark with tables, every local image embedded as a data URI.

    Image paths are relative to ``base`` (the markdown file's folder); an image that cannot be
    read keeps its link.
    """
    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = parser.parse(md)
    for tok in tokens:
        for child in tok.children or []:
            src = child.attrGet("src") if child.type == "image" else None
            if src and base is not None and not src.startswith(("data:", "http:", "https:")):
                uri = _data_uri(base / src)
                if uri is not None:
                    child.attrSet("src", uri)
    body = parser.renderer.render(tokens, parser.options, {})
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n{body}</body></html>\n")
