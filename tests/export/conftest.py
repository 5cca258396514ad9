import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These nets are tiny; on a busy shared CPU, OpenMP threads waiting on each other cost far more."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
