"""Shared fixtures."""
import pytest
import torch


@pytest.fixture(params=['cpu', pytest.param('cuda', marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA (no GPU found)')])])
def device(request):
    """The device a test runs on: 'cpu', and 'cuda' (marked ``gpu``, skipped without a GPU). A test that takes
    this fixture runs once per device; ``pytest -m gpu`` selects the CUDA runs."""
    return request.param


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
