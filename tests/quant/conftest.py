import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are small: on a busy 2-core machine, thread hand-offs made the suite 5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
