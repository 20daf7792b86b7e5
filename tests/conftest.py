import pytest

from tests.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def llama():
    return tiny_model("llama")


@pytest.fixture
def tiny_dir(tmp_path, llama, tokenizer):
    """A tiny Llama saved as an HF directory with its tokenizer."""
    path = tmp_path / "tiny-llama"
    llama.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def text_file(tmp_path):
    from tests.tiny import SAMPLE_TEXT

    path = tmp_path / "sonnet.txt"
    path.write_text((SAMPLE_TEXT + "\n") * 20)
    return path
