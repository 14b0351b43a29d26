"""summary.md as one self-contained HTML page, for Snakemake's report.html and for a browser.

Snakemake's report shows each result file on its own; the tables and figures that every stage wrote
into summary.md would otherwise reach report.html only as files. This page holds all of them: the
Markdown tables become real HTML tables, and every figure is embedded as a data URI, so the page needs
no file beside it.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

import markdown

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 1.5rem auto; padding: 0 1rem;
       line-height: 1.45; color: #1b1b1b; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #c8c8c8; padding: 0.25rem 0.5rem; text-align: left; }
th { background: #f0f0f0; }
img { max-width: 100%; height: auto; display: block; margin: 0.5rem 0; }
h1, h2, h3 { line-height: 1.2; }
code { background: #f4f4f4; padding: 0 0.2rem; }
"""
_IMG = re.compile(r'(<img[^>]*\ssrc=")([^"]+)(")')


def _inline(match: re.Match, base: Path) -> str:
    src = match.group(2)
    path = (base / html.unescape(src)).resolve()
    if src.startswith("data:") or not path.is_file():
        return match.group(0)
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"{match.group(1)}data:{mime};base64,{data}{match.group(3)}"


def render(md_text: str, base_dir, title: str) -> str:
    """The HTML page of ``md_text``; image paths are read relative to ``base_dir`` and embedded."""
    body = markdown.markdown(md_text, extensions=["tables", "fenced_code", "toc"], output_format="html")
    body = _IMG.sub(lambda m: _inline(m, Path(base_dir)), body)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )
