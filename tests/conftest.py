"""Test-session settings: one torch thread (tests are many small ops; OpenMP spinning across a busy
2-core machine makes them 10x slower and less deterministic), and the built-in activation vocabulary for each
test."""
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _activation_vocabulary():
    """Each test sees the built-in activation vocabulary: a name one test registers (``register_activation``)
    would otherwise grow every later model's activation table and change its parameter count."""
    from neuralgraph.convert import activations as A

    saved = (list(A.ACTIVATIONS), dict(A.MODULE_ACTIVATIONS), dict(A.FUNCTION_ACTIVATIONS))
    yield
    if A.ACTIVATIONS != saved[0]:
        A.ACTIVATIONS[:] = saved[0]
        A.VERSION += 1  # conversion plans cached with the registered name must not be reused
    for table, before in zip((A.MODULE_ACTIVATIONS, A.FUNCTION_ACTIVATIONS), saved[1:]):
        table.clear()
        table.update(before)
