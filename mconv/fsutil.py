"""Atomic file output: every file mconv writes goes to a temporary name in its
destination folder and is renamed into place only when complete.

Temporary paths are tracked process-wide so that a SIGINT/SIGTERM handler can
remove them before the process exits (see :func:`install_signal_cleanup`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

_live: set[str] = set()
_lock = threading.Lock()


def _track(path: str) -> None:
    with _lock:
        _live.add(path)


def _untrack(path: str) -> None:
    with _lock:
        _live.discard(path)


def cleanup_temporaries() -> None:
    """Remove every temporary file or folder still being written."""
    with _lock:
        paths = list(_live)
        _live.clear()
    for p in paths:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(p)


_ending = threading.Lock()
_on_terminate: list = []


def on_terminate(fn) -> None:
    """Call ``fn()`` first when SIGINT/SIGTERM ends the process (e.g. to cancel remote tasks)."""
    _on_terminate.append(fn)


def remove_on_terminate(fn) -> None:
    with contextlib.suppress(ValueError):
        _on_terminate.remove(fn)


def _terminate(signum: int) -> None:
    """Run the on_terminate hooks, kill runner children, remove temporaries, exit 128 + ``signum`` (once)."""
    if not _ending.acquire(blocking=False):
        return  # the other path is already ending the process
    import multiprocessing

    for fn in list(_on_terminate):
        with contextlib.suppress(Exception):
            fn()

    for child in multiprocessing.active_children():  # runners in child processes
        with contextlib.suppress(Exception):
            child.kill()
    cleanup_temporaries()
    with contextlib.suppress(Exception):
        os.write(2, f"mconv: interrupted by {signal.Signals(signum).name}; partial files removed\n".encode())
    os._exit(128 + signum)


def install_signal_cleanup() -> None:
    """On SIGINT/SIGTERM remove temporaries, then exit 130/143, within seconds.

    Python runs signal handlers in the main thread between bytecodes, so a handler
    alone waits for whatever native call the main thread is in (OpenVINO compiling a
    deep graph ran on for minutes). The C-level handler also writes the signal number
    to a wakeup pipe, which a watcher thread reads: it ends the process from there as
    soon as the native call lets go of the GIL (runtimes' long calls do).
    """

    def handler(signum: int, _frame: object) -> None:
        _terminate(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not in the main thread
            signal.signal(sig, handler)
    try:
        r, w = os.pipe()
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except (ValueError, OSError):  # not in the main thread
        return

    def watch() -> None:
        while True:
            try:
                data = os.read(r, 64)
            except OSError:
                return
            for signum in data:
                if signum in (signal.SIGINT, signal.SIGTERM):
                    _terminate(signum)

    threading.Thread(target=watch, name="mconv-signals", daemon=True).start()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def temp_path_for(dest: Path) -> Path:
    """A fresh, tracked temporary path beside ``dest`` (same filesystem)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    # mkstemp makes the file private (0600); the finished artifact gets the usual mode.
    os.fchmod(fd, _FILE_MODE)
    os.close(fd)
    _track(name)
    return Path(name)


def commit(tmp: Path, dest: Path) -> None:
    """Rename a finished temporary file into place."""
    os.replace(tmp, dest)
    _untrack(str(tmp))


def discard(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    _untrack(str(tmp))


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path; rename it to ``dest`` if the block succeeds."""
    dest = Path(dest)
    tmp = temp_path_for(dest)
    try:
        yield tmp
    except BaseException:
        discard(tmp)
        raise
    commit(tmp, dest)


def write_bytes_atomic(dest: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(dest: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(dest, text.encode("utf-8"))


class StagingDir:
    """A temporary folder beside ``out_dir`` where a multi-file artifact is written.

    ``promote()`` moves each finished file into ``out_dir`` (creating it);
    ``close()`` removes whatever is left. Used as a context manager, a failure
    inside the block leaves ``out_dir`` untouched (and not created).
    """

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.out_dir = Path(out_dir)
        parent = self.out_dir.resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", suffix=".tmp", dir=parent))
        _track(str(self.path))

    def promote(self) -> list[Path]:
        """Move every file of the staging folder into ``out_dir``; return the final paths."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        moved = []
        for src in sorted(self.path.rglob("*")):
            if src.is_dir():
                continue
            dest = self.out_dir / src.relative_to(self.path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            moved.append(dest)
        return moved

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        _untrack(str(self.path))

    def __enter__(self) -> StagingDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
