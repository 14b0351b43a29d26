"""The ISIC Archive through isic-cli (``isic image download``), one download per class.

isic-cli hangs for minutes when the API is unreachable (urllib3 retries with backoff), so the host
is probed first with a 3 s timeout and the subprocess is bounded by ``isic.timeout_s`` (per class).
Downloads go to ``out_dir/isic_raw/<label>/`` with isic-cli's own ``metadata.csv``; isic-cli skips
files it already has, so a rerun resumes. Conversion to PNG is the folder source's (one way to do it).
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd

from ..errors import ConfigError, DataSourceError
from . import folder

#: isic-cli's environments (its default, ``--sandbox`` and ``--dev``) and the API each one talks to.
APIS = {
    "prod": "https://api.isic-archive.com",
    "sandbox": "https://api-sandbox.isic-archive.com",
    "dev": "http://127.0.0.1:8000",
}
#: isic-cli's SIGTERM handler deletes its partial files at once, then its exit waits for download
#: threads still retrying with backoff (minutes); a longer grace only delays the error.
TERM_GRACE_S = 5
log = logging.getLogger("dermsynth")


def probe(api: str = APIS["prod"], timeout: float = 3.0) -> str | None:
    """None when ``api`` answers (a TLS handshake for https) within ``timeout`` s, else why not."""
    url = urlsplit(api)
    host, tls = url.hostname, url.scheme == "https"
    port = url.port or (443 if tls else 80)
    result: dict = {}

    def attempt():
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                if tls:
                    with ssl.create_default_context().wrap_socket(sock, server_hostname=host):
                        pass
                result["ok"] = True
        except OSError as e:
            result["err"] = f"{type(e).__name__}: {e}"

    # DNS lookups ignore socket timeouts; a daemon thread bounds them too
    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    if t.is_alive():
        return f"no answer within {timeout:g} s"
    return None if result.get("ok") else result.get("err", "unknown error")


def combine_query(class_query: str | None, search: str | None) -> str:
    """``class_query AND search``; a part containing OR is parenthesised so AND binds as meant."""
    parts = [q.strip() for q in (class_query, search) if q and q.strip()]
    parts = [f"({q})" if re.search(r"\bOR\b", q) else q for q in parts]
    return " AND ".join(parts)


def isic_executable() -> list[str]:
    exe = shutil.which("isic") or shutil.which("isic", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "isic_cli.cli"]


def build_command(
    class_query: str,
    search: str | None,
    limit: int | None,
    collections,
    outdir,
    executable: list[str] | None = None,
    env: str = "prod",
) -> list[str]:
    """The isic-cli command line for one class (``isic image download -s Q -l N [-c IDS] OUTDIR``)."""
    cmd = list(executable or isic_executable())
    if env != "prod":
        cmd.append(f"--{env}")
    # the version check calls PyPI: skip it, compute nodes are often offline
    cmd += ["--no-version-check", "image", "download"]
    query = combine_query(class_query, search)
    if query:
        cmd += ["--search", query]
    if collections not in (None, "", []):
        ids = collections if isinstance(collections, (list, tuple)) else [collections]
        cmd += ["--collections", ",".join(str(i).strip() for i in ids)]
    cmd += ["--limit", str(int(limit or 0)), str(outdir)]
    return cmd


def run_isic(cmd: list[str], timeout_s: float, log_path: Path, what: str) -> None:
    """Run isic-cli with its output in ``log_path``; one-line DataSourceError on failure or timeout."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.terminate()  # SIGTERM: isic-cli removes its partial files
            try:
                proc.wait(TERM_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise DataSourceError(
                f"isic-cli did not finish {what} within {timeout_s:g} s: rerun to resume "
                "(downloaded files are kept) or raise isic.timeout_s"
            ) from None
    if rc != 0:
        raise DataSourceError(
            f"isic-cli failed {what} (exit {rc}): {cause(log_path)} (full output: {log_path})"
        )


def cause(log_path: Path) -> str:
    """The line of an isic-cli log that says what went wrong.

    On an unexpected error isic-cli prints a traceback, then a bug-report block and prompt; the
    exception line of the traceback names the cause (e.g. the HTTP status and URL), the last line
    does not.
    """
    lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    if any(ln.startswith("Traceback (most recent call last)") for ln in lines):
        errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception)\b.*", ln)]
        if errors:
            return errors[-1]
    return lines[-1] if lines else "no output"


def download(
    dataset: str,
    cfg: dict,
    out_dir,
    classes: list[str],
    label_map: dict | None = None,
    threads: int = 1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``isic`` source: probe, download each class, convert like the folder source."""
    queries = cfg.get("class_queries") or {}
    missing = [c for c in classes if not queries.get(c)]
    if missing:
        raise ConfigError(
            f"datasets.{dataset}.isic.class_queries has no query for {', '.join(missing)}; "
            "give one per class, e.g. benign: 'diagnosis_1:\"Benign\"'"
        )
    env = cfg.get("env", "prod")
    err = probe(APIS[env])
    if err:
        raise DataSourceError(
            f"dataset '{dataset}': the ISIC Archive API {APIS[env]} is unreachable ({err}); download "
            f"with isic-cli on a networked machine and use `source: folder` with that local copy instead"
        )
    raw = Path(out_dir) / "isic_raw"
    for label in classes:
        cmd = build_command(
            queries[label],
            cfg.get("search"),
            cfg.get("per_class"),
            cfg.get("collections"),
            raw / label,
            env=env,
        )
        log.info("isic %s/%s: %s", dataset, label, " ".join(cmd))
        run_isic(cmd, float(cfg.get("timeout_s") or 3600), raw / f"{label}.log", f"for {dataset}/{label}")
    return collect(raw, dataset, out_dir, classes, label_map, threads=threads, max_side=cfg.get("max_side"))


def collect(
    raw,
    dataset: str,
    out_dir,
    classes: list[str],
    label_map: dict | None = None,
    threads: int = 1,
    max_side: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Post-process ``raw/<label>/`` isic-cli downloads into PNGs + manifest (label from the query)."""
    raw = Path(raw)
    cands, rejected = [], []
    for label in classes:
        d = raw / label
        meta = d / "metadata.csv"
        if meta.is_file():
            df = pd.read_csv(meta, dtype=str, keep_default_na=False)
            if "isic_id" not in df.columns:
                raise DataSourceError(f"{meta} has no isic_id column: not an isic-cli metadata file")
            c, r = folder.isic_candidates(df, d, label=label)
        elif d.is_dir():
            files = [
                f
                for f in sorted(d.iterdir())
                if f.suffix.lower() in folder.IMAGE_SUFFIXES and not f.name.startswith(".")
            ]
            c = [folder.Candidate(f, label, f.stem, note="no metadata.csv") for f in files]
            r = []
        else:
            c, r = [], []
        cands += c
        rejected += r
    return folder.ingest(
        cands, dataset, out_dir, classes, label_map, rejected, threads=threads, max_side=max_side
    )
