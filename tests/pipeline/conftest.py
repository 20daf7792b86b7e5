import pytest

from tests.threads import one_torch_thread

@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    # Tiny models run faster on one thread than on threads fighting over a loaded machine,
    # and one thread gives the same sums in the test process and in its subprocesses.
    with one_torch_thread():
        yield

@pytest.fixture(scope="package")
def tiny_inputs(tmp_path_factory):
    """A tiny Llama saved as an HF directory, and a text file: what a recipe names."""
    from tests.pipeline.helpers import write_inputs

    return write_inputs(tmp_path_factory.mktemp("inputs"))
