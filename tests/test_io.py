"""neuralgraph.io: files written atomically get the mode the umask gives; a file system that refuses the
write (read-only, full) is one error naming the path and where to write instead."""
import os
import stat

import pytest

from neuralgraph.data.zoo import ZooDataset
from neuralgraph.io import atomic_write_text
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
