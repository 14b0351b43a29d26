"""summary.md as one self-contained HTML page, for Snakemake's report.html and for a browser.

Snakemake's report shows each result file on its own; the tables and figures that every stage wrote
into summary.md would otherwise reach report.html only as files. This page holds all of them: the
Markdown tables become real HTML tables, and every figure is embedded as a data URI, so the page needs
no file beside it.

report.html opens an HTML result as a ``data:`` URL in a frame, and Chromium refuses URLs over 2 MiB
(a blank frame, no error), so the figures are embedded as JPEG previews, smaller until the page fits
``MAX_BYTES``; each figure is also a report item of its own at full size.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

import markdown
from PIL import Image

#: the page's size limit: base64 grows it by 4/3 inside report.html's 2 MiB data: URL
MAX_BYTES = 1_400_000
#: preview widths tried in turn until the page fits
WIDTHS = (1100, 800, 560, 400, 280)

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


def _preview(path: Path, width: int) -> str:
    """``path`` as a JPEG data URI at most ``width`` px wide."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.width > width:
            im = im.resize((width, max(1, round(im.height * width / im.width))), Image.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _inline(match: re.Match, base: Path, width: int) -> str:
    src = match.group(2)
    path = (base / html.unescape(src)).resolve()
    if src.startswith("data:") or not path.is_file():
        return match.group(0)
    return f"{match.group(1)}{_preview(path, width)}{match.group(3)}"


def render(md_text: str, base_dir, title: str, max_bytes: int = MAX_BYTES) -> str:
    """The HTML page of ``md_text``; images (paths relative to ``base_dir``) are embedded as previews
    as wide as the page's ``max_bytes`` allow."""
    body = markdown.markdown(md_text, extensions=["tables", "fenced_code", "toc"], output_format="html")
    for width in WIDTHS:
        page = (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
            f"<body>\n{_IMG.sub(lambda m, w=width: _inline(m, Path(base_dir), w), body)}\n</body>\n</html>\n"
        )
        if len(page.encode()) <= max_bytes:
            break
    return page
