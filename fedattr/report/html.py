"""A standalone HTML page from the markdown subset the reports use."""

from __future__ import annotations

import html
import re

__all__ = ["markdown_to_html"]


def _inline_html(text: str) -> str:
    """Escape text and render `code`, **bold**, ![img](src) and [link](href)."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", r'<img alt="\1" src="\2">', out)
    return re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', out)


def markdown_to_html(md: str, title: str = "fedattr report") -> str:
    """A standalone HTML page for the markdown subset the reports use.

    Headings, paragraphs, bullet lists, tables, fenced code, images, links, inline code.
    """
    body: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            body.append("<pre><code>" + html.escape("\n".join(lines[i + 1:j])) + "</code></pre>")
            i = j + 1
            continue
        m = re.match(r"(#{1,6}) (.*)", line)
        if m:
            n = len(m.group(1))
            body.append(f"<h{n}>{_inline_html(m.group(2))}</h{n}>")
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1
            cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", r.strip())[1:-1]]
                     for r in rows if not re.fullmatch(r"\|(-+\|)+", r.strip())]
            head, rest = cells[0], cells[1:]
            body.append("<table>\n<tr>" + "".join(f"<th>{_inline_html(c)}</th>" for c in head)
                        + "</tr>\n" + "\n".join("<tr>" + "".join(
                            f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in rest)
                        + "\n</table>")
            continue
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline_html(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>\n" + "\n".join(items) + "\n</ul>")
            continue
        elif line.strip():
            body.append(f"<p>{_inline_html(line)}</p>")
        i += 1
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:left}img{max-width:100%}pre{background:#f4f4f4;"
             "padding:1em;overflow:auto}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")
