import pytest

from tests.threads import one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are small: on a busy 2-core machine, thread hand-offs made the suite 5x slower."""
    with one_torch_thread():
        yield
