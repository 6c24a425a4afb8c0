"""A damaged results checkpoint is one error naming the file and the fix, not a torch traceback."""
import pytest

from neuralgraph.training import TrainConfig, fit
from tests.tasks.test_training import TinyTask, make_model


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])   # empty, half (OSError: Invalid argument), the directory cut
def test_truncated_results_checkpoint(tmp_path, keep):
    fit(make_model("weights"), TinyTask(None), TrainConfig(epochs=1, batch_size=8), str(tmp_path), progress=False)
    ckpt = tmp_path / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[:int(keep * len(data))])
    with pytest.raises(ValueError, match=r"checkpoint.pt, a results checkpoint, is damaged .*delete it to train "
                                            r"this seed from scratch"):
        fit(make_model("weights"), TinyTask(None), TrainConfig(epochs=2, batch_size=8), str(tmp_path), progress=False)
