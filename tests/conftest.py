"""Suite-wide settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tests run tiny models on a shared 2-core CPU: one intra-op thread avoids OpenMP contention
    (measured ~50x faster than two threads under load). Subprocesses set their own threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
