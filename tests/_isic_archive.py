"""A local ISIC Archive: the API v2 endpoints isic-cli 12.4 calls, over the images of ../shared/data.

isic-cli's ``--dev`` mode talks to http://127.0.0.1:8000 (its ``DOMAINS["dev"]``). What it calls,
read from ``isic_cli/io/http.py`` and ``cli/image.py``:

- ``GET /api/v2/images/search/?query=Q&collections=C&limit=1`` for the count;
- ``GET /api/v2/images/search/?query=Q&collections=C`` then the ``next`` URLs (cursor paging) for the
  records: ``isic_id``, ``attribution``, ``copyright_license``, ``files.full.{url,size}`` and
  ``metadata.{acquisition,clinical}``;
- ``GET /api/v2/collections/<id>/`` for each ``--collections`` id (a 404 stops it);
- ``GET /api/v2/images/search/size/`` when no limit is given (the disk-space check);
- each ``files.full.url`` (a signed S3 URL on the real archive), skipped when a file of that size
  exists;
- ``GET /api/v2/zip-download/license-file/<licence>/`` per licence in the result.

The query language is the subset our configs use: ``field:value`` and ``field:"quoted value"`` terms
with AND, OR and parentheses. A query it cannot parse gets a 400, as on the archive. Faults are
injected per test: a file that fails once with a 500 (urllib3 retries it at once), and files that
answer 500 while ``broken`` is set (isic-cli retries them with a growing backoff, so the download
outlives ``isic.timeout_s``).
"""

from __future__ import annotations

import json
import re
import shlex
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pandas as pd

HOST, PORT = "127.0.0.1", 8000
BASE = f"http://{HOST}:{PORT}"
HAM10000_COLLECTION = "212"
#: HAM10000's dx codes as the archive's diagnosis_3 names them.
DX_NAMES = {
    "nv": "Nevus",
    "mel": "Melanoma, NOS",
    "bkl": "Pigmented benign keratosis",
    "bcc": "Basal cell carcinoma",
    "akiec": "Solar or actinic keratosis",
    "df": "Dermatofibroma",
    "vasc": "Hemangioma",
}
LICENCES = {"CC-0": "CC0 1.0 Universal", "CC-BY-NC": "Attribution-NonCommercial 4.0 International"}


def catalogue(shared_data: Path) -> list[dict]:
    """The archive's image records for the ISIC and HAM10000 images of ``shared_data``."""
    labels = pd.read_csv(shared_data / "labels.csv", dtype=str)
    prov = pd.read_csv(shared_data / "manifest.csv", dtype=str, keep_default_na=False).set_index("path")
    ham = pd.read_csv(shared_data / "ham10000" / "metadata.csv", dtype=str).set_index("image_id")
    records = []
    for r in labels[labels.dataset.isin(["isic", "ham10000"])].itertuples():
        p = prov.loc[r.path]
        clinical = {"diagnosis_1": r.label.capitalize(), "benign_malignant": r.label}
        collections = []
        if r.dataset == "ham10000":
            m = ham.loc[r.source_id]
            clinical |= {
                "diagnosis_3": DX_NAMES[m.dx],
                "diagnosis_confirm_type": m.dx_type,
                "lesion_id": m.lesion_id,
                "sex": m.sex,
                "age_approx": str(int(float(m.age))) if m.age == m.age else "",
                "anatom_site_general": m.localization,
            }
            collections = [HAM10000_COLLECTION]
            attribution, licence = (
                "ViDIR Group, Department of Dermatology, Medical University of Vienna",
                "CC-BY-NC",
            )
        else:
            clinical |= {
                "diagnosis_3": p.diagnosis.capitalize(),
                "diagnosis_confirm_type": p.diagnosis_confirm_type,
            }
            attribution, licence = "Anonymous", "CC-0"
        path = shared_data / r.path
        records.append(
            {
                "isic_id": r.source_id,
                "public": True,
                "attribution": attribution,
                "copyright_license": licence,
                "collections": collections,
                "path": path,
                "files": {"full": {"url": f"{BASE}/files/{r.path}", "size": path.stat().st_size}},
                "metadata": {
                    "acquisition": {"image_type": "dermoscopic", "pixels_x": int(p.w), "pixels_y": int(p.h)},
                    "clinical": clinical,
                },
            }
        )
    return sorted(records, key=lambda rec: rec["isic_id"])


def matcher(query: str):
    """A predicate over a record's metadata for ``field:value`` terms joined by AND / OR / ( )."""
    tokens = re.findall(r'\(|\)|\w+:"[^"]*"|\w+:[^\s()]+|AND|OR', query or "")
    pos = 0

    def parse_or():
        nonlocal pos
        left = parse_and()
        while pos < len(tokens) and tokens[pos] == "OR":
            pos += 1
            right = parse_and()
            left = (lambda a, b: lambda m: a(m) or b(m))(left, right)
        return left

    def parse_and():
        nonlocal pos
        left = parse_atom()
        while pos < len(tokens) and tokens[pos] == "AND":
            pos += 1
            right = parse_atom()
            left = (lambda a, b: lambda m: a(m) and b(m))(left, right)
        return left

    def parse_atom():
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError(f"query ends early: {query!r}")
        tok = tokens[pos]
        pos += 1
        if tok == "(":
            inner = parse_or()
            if pos >= len(tokens) or tokens[pos] != ")":
                raise ValueError(f"unbalanced parentheses: {query!r}")
            pos += 1
            return inner
        if tok in ("AND", "OR", ")"):
            raise ValueError(f"unexpected {tok!r} in {query!r}")
        key, value = tok.split(":", 1)
        value = shlex.split(value)[0] if value.startswith('"') else value
        return lambda m: str(m.get(key, "")) == value

    if not tokens:
        return lambda m: True
    pred = parse_or()
    if pos != len(tokens):
        raise ValueError(f"unexpected {tokens[pos]!r} in {query!r}")
    return pred


@dataclass
class Archive:
    """The server's state: what it serves, the faults to inject, and every request it saw."""

    records: list[dict]
    page_size: int = 5
    fail_once: set[str] = field(default_factory=set)  # isic_ids whose first file GET answers 500
    broken_files: set[str] = field(default_factory=set)  # isic_ids whose file GETs answer 500 while broken
    broken: bool = False
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path+query, status)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def search(self, query: dict) -> list[dict]:
        q = query.get("query", [""])[0]
        cols = {c for c in query.get("collections", [""])[0].split(",") if c}
        keep = matcher(q)
        return [
            r
            for r in self.records
            if keep({**r["metadata"]["acquisition"], **r["metadata"]["clinical"]})
            and (not cols or cols & set(r["collections"]))
        ]

    def files_requested(self, status: int | None = None) -> list[str]:
        return [
            p.rsplit("/", 1)[-1].split(".")[0]
            for m, p, s in self.requests
            if p.startswith("/files/") and (status is None or s == status)
        ]


def _public(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in ("path", "collections")}


def handler(archive: Archive):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: the archive keeps its own request list
            pass

        def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            with archive.lock:
                archive.requests.append((self.command, self.path, status))
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj) -> None:
            self._send(status, json.dumps(obj).encode())

        def do_GET(self):  # noqa: N802 (http.server's name)
            url = urlsplit(self.path)
            query = parse_qs(url.query, keep_blank_values=True)
            if url.path == "/api/v2/images/search/":
                return self._page(query)
            if url.path == "/api/v2/images/search/size/":
                try:
                    size = sum(r["files"]["full"]["size"] for r in archive.search(query))
                except ValueError as e:
                    return self._json(400, {"query": [str(e)]})
                return self._json(200, {"size": size})
            m = re.fullmatch(r"/api/v2/zip-download/license-file/([\w-]+)/", url.path)
            if m and m.group(1) in LICENCES:
                return self._send(200, LICENCES[m.group(1)].encode(), "text/plain")
            m = re.fullmatch(r"/api/v2/collections/(\d+)/", url.path)
            if m and m.group(1) == HAM10000_COLLECTION:  # isic-cli checks a --collections id exists
                return self._json(200, {"id": int(m.group(1)), "name": "HAM10000", "public": True})
            if url.path.startswith("/files/"):
                return self._file(url.path)
            return self._json(404, {"detail": "Not found."})

        def _page(self, query: dict) -> None:
            try:
                hits = archive.search(query)
            except ValueError as e:  # the archive answers a query it cannot parse with 400
                return self._json(400, {"query": [str(e)]})
            if query.get("limit") == ["1"]:  # isic-cli's count request
                return self._json(
                    200,
                    {
                        "count": len(hits),
                        "next": None,
                        "previous": None,
                        "results": [_public(r) for r in hits[:1]],
                    },
                )
            page = int(query.get("cursor", ["0"])[0])
            start = page * archive.page_size
            chunk = hits[start : start + archive.page_size]
            more = start + archive.page_size < len(hits)
            q = "&".join(f"{k}={v[0]}" for k, v in query.items() if k != "cursor")
            nxt = f"{BASE}/api/v2/images/search/?{q}&cursor={page + 1}" if more else None
            self._json(
                200,
                {"count": len(hits), "next": nxt, "previous": None, "results": [_public(r) for r in chunk]},
            )

        def _file(self, path: str) -> None:
            rec = next((r for r in archive.records if r["files"]["full"]["url"].endswith(path)), None)
            if rec is None:
                return self._json(404, {"detail": "Not found."})
            with archive.lock:
                fail = rec["isic_id"] in archive.fail_once or (
                    archive.broken and rec["isic_id"] in archive.broken_files
                )
                archive.fail_once.discard(rec["isic_id"])
            if fail:
                return self._json(500, {"detail": "Internal server error"})
            self._send(200, rec["path"].read_bytes(), "image/jpeg")

    return Handler


class Server:
    """The archive served on 127.0.0.1:8000 in a thread, as a context manager."""

    def __init__(self, archive: Archive):
        self.archive = archive
        self.httpd = ThreadingHTTPServer((HOST, PORT), handler(archive))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Archive:
        self.thread.start()
        return self.archive

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
