"""A damaged or crafted results checkpoint is one error naming the file and the fix, not a torch traceback."""
import pytest
import torch

from neuralgraph.data.formats.safe import UnsafeFileError
from neuralgraph.io import DataFileError
from neuralgraph.training import TrainConfig, fit
from tests.data.test_zoo_format import Payload
from tests.data.test_zoo_readers import assert_refused_as_unsafe
from tests.tasks.test_training import TinyTask, make_model


def _trained(tmp_path):
    fit(make_model("weights"), TinyTask(None), TrainConfig(epochs=1, batch_size=8), str(tmp_path), progress=False)
    return tmp_path / "checkpoint.pt"


def _resume(tmp_path):
    fit(make_model("weights"), TinyTask(None), TrainConfig(epochs=2, batch_size=8), str(tmp_path), progress=False)


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])   # empty, half (OSError: Invalid argument), the directory cut
def test_truncated_results_checkpoint(tmp_path, keep):
    ckpt = _trained(tmp_path)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[:int(keep * len(data))])
    with pytest.raises(DataFileError, match=r"checkpoint.pt', a results checkpoint, is damaged .*delete it to train "
                                            r"this seed from scratch"):
        _resume(tmp_path)


def test_crafted_results_checkpoint_is_refused_as_unsafe_and_named(tmp_path):
    ckpt = _trained(tmp_path)
    target = tmp_path / "pwned"
    torch.save({**torch.load(ckpt, weights_only=True), "state": Payload(target)}, ckpt)
    with pytest.raises(UnsafeFileError) as err:
        _resume(tmp_path)
    assert not target.exists()
    assert_refused_as_unsafe(err.value, ckpt, "a results checkpoint")
    assert "delete it to train this seed from scratch" in str(err.value)


def test_a_plain_file_that_is_not_a_results_checkpoint(tmp_path):
    ckpt = _trained(tmp_path)
    torch.save({"model": {}}, ckpt)
    with pytest.raises(DataFileError, match=r"checkpoint.pt' is not a results checkpoint .*delete it"):
        _resume(tmp_path)
