"""neuralgraph.io: files written atomically get the mode the umask gives; a file system that refuses the
write (read-only, full) is one error naming the path and where to write instead."""
import errno
import os
import stat
from pathlib import Path

import pytest

import benchmarks.run as runner
import neuralgraph.io
from neuralgraph.data.zoo import ZooDataset
from neuralgraph.io import StorageError, atomic_write_text, make_dirs
from neuralgraph.training import TrainConfig, fit
from tests.data.test_zoo_format import write_toy_zoo
from tests.tasks.test_training import TinyTask, make_model


@pytest.fixture
def umask():
    """Set the process umask for a test; restored afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_every_written_file_gets_the_mode_of_the_umask(tmp_path, umask, mask):
    umask(mask)
    zoo = write_toy_zoo(tmp_path / "zoo", runs=3, ckpts=1)            # members (.npz + .json), zoo.json, lock
    ZooDataset(zoo, split="all", root=tmp_path / "processed")         # graphs.pt, config.json, lock
    fit(make_model("weights"), TinyTask(None), TrainConfig(epochs=1, batch_size=8), str(tmp_path / "out"),
        progress=False)                                                # checkpoint.pt, metrics.json, predictions
    atomic_write_text(tmp_path / "text.md", "x")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 10
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert modes == {k: oct(0o666 & ~mask) for k in modes}


# --- a file system that refuses the write: the path, nothing changed, where to write instead ------------
@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A directory nothing can be written under: ``chmod 0555`` where that holds; as root (whom chmod
    does not stop) creating a file or directory below it fails with EROFS, as on a read-only mount."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        (d / "probe").touch()
    except PermissionError:
        pass
    else:  # root
        (d / "probe").unlink()

        def refuse(path):
            if Path(os.path.abspath(path)).is_relative_to(d) and not os.path.exists(path):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

        real_open, real_mkdir = os.open, os.mkdir

        def ro_open(path, flags, *args, **kwargs):
            if flags & os.O_CREAT:
                refuse(path)
            return real_open(path, flags, *args, **kwargs)

        def ro_mkdir(path, *args, **kwargs):
            refuse(path)
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", ro_open)
        monkeypatch.setattr(os, "mkdir", ro_mkdir)
    yield d
    d.chmod(0o755)


@pytest.fixture
def disk_full(monkeypatch):
    """``disk_full(directory)``: atomic writes below ``directory`` go to /dev/full (ENOSPC when the data
    reaches the device), as on a full disk."""
    real = neuralgraph.io._create_temp

    def install(directory):
        def create(path):
            fd, tmp = real(path)
            if Path(path).is_relative_to(directory):
                os.close(fd)
                os.unlink(tmp)
                fd = os.open("/dev/full", os.O_WRONLY)
            return fd, tmp
        monkeypatch.setattr(neuralgraph.io, "_create_temp", create)
    return install


def test_a_read_only_or_full_directory_is_named_and_nothing_changes(tmp_path, read_only, disk_full):
    with pytest.raises(StorageError, match=rf"cannot write '{read_only}/sub/a.json': .*nothing was changed .*"
                                           r"Write to another directory \(--out\)"):
        atomic_write_text(read_only / "sub" / "a.json", "{}")
    with pytest.raises(StorageError, match=r"cannot write .*/sub': .*\(--out\)"):
        make_dirs(read_only / "sub")
    assert not list(read_only.iterdir())
    old = tmp_path / "full" / "a.json"
    atomic_write_text(old, "old")
    disk_full(tmp_path / "full")
    with pytest.raises(StorageError, match=rf"cannot write '{old}': no space is left on the device; nothing was "
                                           r"changed .*Free space there, or write to another directory \(--out\)"):
        atomic_write_text(old, "new" * 10_000)
    assert old.read_text() == "old" and [p.name for p in old.parent.iterdir()] == ["a.json"]   # no temporary file


def test_cli_names_a_read_only_cold_home_without_a_traceback(tmp_path, read_only, monkeypatch):
    monkeypatch.setenv("NEURALGRAPH_HOME", str(read_only))
    with pytest.raises(SystemExit) as e:
        runner.main(["--task", "wildpark", "--model", "statnn", "--quick", "--out", str(tmp_path / "out"),
                     "--no-progress"])
    msg = str(e.value)
    assert msg.startswith(f"error: cannot write '{read_only}/zoos/") and "nothing was changed" in msg, msg
    assert f"in the cache directory NEURALGRAPH_HOME='{read_only}': set NEURALGRAPH_HOME to a writable" in msg
    assert not list(read_only.iterdir())


def test_cli_names_a_full_results_disk_without_a_traceback(tmp_path, disk_full, monkeypatch):
    monkeypatch.setenv("NEURALGRAPH_HOME", str(tmp_path / "home"))
    zoo = write_toy_zoo(tmp_path / "zoo", runs=6, ckpts=1)
    args = ["--task", "wildpark", "--model", "statnn", "--quick", "--set", f"task.zoo={zoo}", "--set", "task.runs=6",
            "--set", "train.epochs=1", "--out", str(tmp_path / "out"), "--no-progress"]
    disk_full(tmp_path / "out")
    with pytest.raises(SystemExit) as e:
        runner.main(args)
    msg = str(e.value)
    assert msg.startswith(f"error: cannot write '{tmp_path / 'out'}/") and "no space is left on the device" in msg
    assert "Free space there, or write to another directory (--out)" in msg
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
