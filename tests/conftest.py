"""Shared fixtures."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """Run torch on one intra-op thread: the tests' tiny models gain nothing from more, and CI's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def restore_backend():
    """Put the pooling backend selection back as it was after a test that sets it."""
    from timm_asap.layers import backends

    previous = backends._selected
    yield
    backends._selected = previous


@pytest.fixture
def no_network(monkeypatch):
    """Nothing may reach a Hub: huggingface_hub's offline mode and an endpoint nobody listens on."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(constants, 'ENDPOINT', 'http://127.0.0.1:9')
