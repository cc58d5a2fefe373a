"""What the CLI logs: the verbosity of rtgrid's loggers on stderr, and the crash log of a bug.

Modules log with `logging.getLogger(__name__)`, so rtgrid's loggers are the package roots below
(`rtgrid` is the CLI's own). `configure` sets them all; nothing here touches the root logger.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

LOGGERS = ("rtgrid", "orchestrator", "db", "workers", "migrations")
LOG_DIR_ENV = "RTGRID_LOG_DIR"


class _StderrHandler(logging.Handler):
    """Writes to the sys.stderr of the moment (a test runner swaps it), one line per record."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never raise; logging's own fallback reports it
            self.handleError(record)


class _Formatter(logging.Formatter):
    def __init__(self, with_names: bool) -> None:
        super().__init__()
        self.with_names = with_names

    def format(self, record: logging.LogRecord) -> str:
        where = f" [{record.name}]" if self.with_names else ""
        text = f"rtgrid: {record.levelname.lower()}{where}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


_handler: _StderrHandler | None = None


def level_for(verbosity: int) -> int:
    """-q: ERROR, default: WARNING, -v: INFO, -vv: DEBUG."""
    if verbosity < 0:
        return logging.ERROR
    return (logging.WARNING, logging.INFO)[verbosity] if verbosity < 2 else logging.DEBUG


def configure(verbosity: int) -> None:
    """Send rtgrid's log records at `verbosity` and above to stderr (idempotent: one handler)."""
    global _handler
    level = level_for(verbosity)
    if _handler is None:
        _handler = _StderrHandler()
    _handler.setFormatter(_Formatter(with_names=level <= logging.DEBUG))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if _handler not in logger.handlers:
            logger.addHandler(_handler)


def log_dir() -> Path:
    """Where crash logs go: $RTGRID_LOG_DIR, else the user's cache dir, else the temp dir (the first writable)."""
    candidates = []
    if os.environ.get(LOG_DIR_ENV):
        candidates.append(Path(os.environ[LOG_DIR_ENV]).expanduser())
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    candidates += [Path(cache) / "rtgrid", Path(tempfile.gettempdir()) / "rtgrid"]
    for directory in candidates:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(directory, os.W_OK):
            return directory
    return Path(tempfile.gettempdir())


def write_crash_log(exc: BaseException, command: str, version: str) -> Path:
    """The full traceback of an unexpected error in a new file; returns its path.

    The command's arguments are left out: a database URL among them may carry a password.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = log_dir() / f"crash-{stamp}-{os.getpid()}.log"
    header = (f"rtgrid {version} internal error in `{command}`\n"
              f"python {platform.python_version()} on {platform.platform()}\n"
              f"time {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n\n")
    path.write_text(header + "".join(traceback.format_exception(exc)), encoding="utf-8")
    return path
