"""File helpers: atomic writes (readers never see half a file, an interrupted write leaves the old
file), errors naming what could not be written and where to write instead, and content fingerprints
of source files (caches keyed on what the files hold)."""
from __future__ import annotations

import errno
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


class StorageError(OSError):
    """A file or directory that cannot be written (read-only file system, no permission, disk full, a
    file in the way); the message names the path, says that nothing was changed and where to write
    instead. ``errno`` and ``filename`` are those of the failed write."""

    def __str__(self) -> str:
        return str(self.args[0])  # the message alone (OSError would prefix "[Errno N]")


def neuralgraph_home() -> Path:
    """``$NEURALGRAPH_HOME``, else ``$XDG_CACHE_HOME/neuralgraph``, else ``~/.cache/neuralgraph``."""
    env = os.environ.get("NEURALGRAPH_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "neuralgraph"


_WHY = {errno.EROFS: "the file system is read-only", errno.ENOSPC: "no space is left on the device",
        errno.EDQUOT: "the disk quota is exceeded", errno.EACCES: "permission denied",
        errno.EPERM: "permission denied"}


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Raise an ``OSError`` of the block that writes ``path`` as a :class:`StorageError` naming ``path``.

    The fix depends on where ``path`` is: under :func:`neuralgraph_home` (zoos and processed graphs
    made on first use), set ``NEURALGRAPH_HOME`` to another directory; elsewhere (results, zoos and
    conversions written to a directory the user gave), choose another ``--out``.
    """
    try:
        yield
    except StorageError:
        raise
    except OSError as e:
        why = _WHY.get(e.errno) or (e.strerror or str(e)).lower()
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        home = neuralgraph_home()
        if Path(os.path.abspath(path)).is_relative_to(os.path.abspath(home)):
            fix = (f"it is in the cache directory NEURALGRAPH_HOME={str(home)!r}: "
                   f"{'free space there, or ' if full else ''}set NEURALGRAPH_HOME to a writable directory"
                   f"{' with free space' if full else ''}")
        else:
            fix = f"{'free space there, or ' if full else ''}write to another directory (--out)"
        err = StorageError(f"cannot write {str(path)!r}: {why}; nothing was changed (files are replaced only once "
                           f"complete). {fix[0].upper()}{fix[1:]}.")
        err.errno, err.filename = e.errno, str(path)
        raise err from None


def make_dirs(path: str | os.PathLike) -> Path:
    """``os.makedirs(path, exist_ok=True)``; a directory that cannot be made is a :class:`StorageError`."""
    with writing(path):
        os.makedirs(path, exist_ok=True)
    return Path(path)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it over ``path``.

    The file gets the mode any new file gets (``0o666`` less the umask), so a zoo or cache written
    under umask 022 is readable by others, as with ``open(path, "w")``.

    Raises:
        StorageError: the file cannot be written (read-only file system, disk full, ...); ``path`` and
            any file it replaces are left as they were.
    """
    path = Path(path)
    with writing(path):
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
    with writing(path):
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
