"""Logging for rule scripts: everything to the rule's log file, errors as one line."""

from __future__ import annotations

import contextlib
import logging
import sys
import time

from .errors import DermsynthError


def setup(
    log_path: str | None = None, config: dict | None = None, level: int = logging.INFO
) -> logging.Logger:
    """Log to stderr and ``log_path``; ``config`` (the workflow's) sets how often long loops log progress."""
    from . import progress
    from .config import section

    progress.EVERY_S = float(section("logs", (config or {}).get("logs"))["progress_every_s"])
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(
        level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=handlers, force=True
    )
    return logging.getLogger("dermsynth")


@contextlib.contextmanager
def stage(name: str):
    """Time a stage and turn a DermsynthError into one line on stderr and exit code 1."""
    log = logging.getLogger("dermsynth")
    t0 = time.perf_counter()
    try:
        yield log
    except DermsynthError as e:
        log.error("%s", e)
        print(f"dermsynth error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception:
        # the traceback belongs in the rule's log, not only on the terminal
        log.exception("%s failed", name)
        raise
    log.info("%s finished in %.1f s", name, time.perf_counter() - t0)
