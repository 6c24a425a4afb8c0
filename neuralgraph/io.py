"""File helpers: atomic writes (readers never see half a file, an interrupted write leaves the old
file) and content fingerprints of source files (caches keyed on what the files hold)."""
from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator


class DataFileError(ValueError):
    """A data, cache or results file that cannot be used (damaged, or not what it should be); the message
    names the file, what is wrong and the fix."""


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it over ``path``.

    The file gets the mode any new file gets (``0o666`` less the umask), so a zoo or cache written
    under umask 022 is readable by others, as with ``open(path, "w")``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, exclusively created ``.<name>.<random>.tmp`` beside ``path``, mode ``0o666`` less the umask
    (``tempfile.mkstemp`` would make it 0600, and the rename would keep that)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    data = text.encode()
    atomic_write(path, lambda f: f.write(data))


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block, waiting for other holders.

    The lock (``flock``) belongs to this open file: other processes, and other ``file_lock`` calls of
    this process, wait; the kernel releases it when the block ends or the holder dies, even by SIGKILL,
    so a crashed writer never blocks the next one.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def remove_temps(directory: str | os.PathLike, prefix: str = "") -> None:
    """Delete :func:`atomic_write`'s temporary files (``.<prefix>*.tmp``) in ``directory``.

    Call it only while holding the lock every writer of that directory holds while it has a temporary
    file open (:func:`file_lock`): then every temporary file found belongs to a writer that is gone.
    """
    for p in Path(directory).glob(f".{prefix}*.tmp"):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


#: files up to this size are fingerprinted by a hash of their whole content
FULL_HASH_BYTES = 64 << 20
_EDGE_BYTES = 1 << 20


def file_fingerprint(path: str | os.PathLike) -> str:
    """A string that changes whenever the file's content does.

    Files up to :data:`FULL_HASH_BYTES` (zoo members, checkpoints, CSVs): a SHA-256 of the content, so
    copies and touched files keep their fingerprint. Larger files (a Small CNN Zoo's ``weights.npy``):
    size, modification and status-change times (ns), inode, and a hash of the first and last MiB (the
    header and the tail); any write, replacement or ``touch`` changes it.
    """
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if st.st_size <= FULL_HASH_BYTES:
            for block in iter(lambda: f.read(_EDGE_BYTES), b""):
                h.update(block)
            return f"{st.st_size}:{h.hexdigest()}"
        h.update(f.read(_EDGE_BYTES))
        f.seek(st.st_size - _EDGE_BYTES)
        h.update(f.read(_EDGE_BYTES))
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{h.hexdigest()}"
