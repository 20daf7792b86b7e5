"""One torch thread for a block: tiny tensors gain nothing from threads, and on a shared 2-core
machine the spinning thread pool made the tests several times slower."""
from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
