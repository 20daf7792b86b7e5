import pytest

from tests.threads import one_torch_thread


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine the
    spinning thread pool makes these tests ~10x slower; restore afterwards."""
    with one_torch_thread():
        yield
