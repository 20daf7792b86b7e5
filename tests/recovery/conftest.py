import pytest

from tests.threads import one_torch_thread


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    # The tiny models are far faster on one thread than with threads that fight
    # over a shared, loaded machine.
    with one_torch_thread():
        yield


@pytest.fixture(scope="package")
def sonnet_splits(_one_thread, tmp_path_factory, tokenizer):
    from compress.data import TextConfig, load_text
    from tests.tiny import SAMPLE_TEXT

    path = tmp_path_factory.mktemp("text") / "sonnet.txt"
    path.write_text((SAMPLE_TEXT + "\n") * 20)
    return load_text(path, tokenizer, TextConfig(seq_len=32))


@pytest.fixture(scope="package")
def _fitted(_one_thread, sonnet_splits):
    from tests.recovery.helpers import trained_teacher

    return trained_teacher(sonnet_splits.train)


@pytest.fixture
def fitted_teacher(_fitted):
    """A tiny Llama fitted to the sonnet (a fresh copy per test)."""
    import copy

    return copy.deepcopy(_fitted)
