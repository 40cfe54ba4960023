"""Device resolution and the autocast-precision rule of timm_asap_lab.runtime."""
import pytest
import torch

from timm_asap_lab import runtime
from timm_asap_lab.runtime import AMP_CHOICES, amp_context, cpu_has_native_bf16, resolve_amp, resolve_device


def test_resolve_device_auto_and_explicit():
    expected = 'cuda' if torch.cuda.is_available() else 'cpu'
    assert resolve_device('auto').type == expected
    assert resolve_device(None).type == expected
    assert resolve_device(' AUTO ').type == expected
    assert resolve_device('cpu') == torch.device('cpu')
    assert resolve_device(torch.device('cpu')) == torch.device('cpu')


@pytest.mark.parametrize('bad', ['gpu0', 'cuda:x', '', 'cpux'])
def test_resolve_device_bad_string(bad):
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda'") as info:
        resolve_device(bad)
    assert repr(bad) in str(info.value)


def test_resolve_device_unavailable_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert resolve_device('auto') == torch.device('cpu')
    with pytest.raises(ValueError, match="'cuda:0' asked for, but CUDA is not available; use 'cpu'"):
        resolve_device('cuda:0')


def test_resolve_device_missing_cuda_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    with pytest.raises(ValueError, match="has 1 CUDA device"):
        resolve_device('cuda:3')


@pytest.mark.parametrize('name,dtype', [('bf16', torch.bfloat16), ('bfloat16', torch.bfloat16),
                                        ('fp16', torch.float16), ('float16', torch.float16),
                                        ('float32', None), ('fp32', None), ('none', None), ('off', None),
                                        (None, None), ('BF16', torch.bfloat16)])
def test_resolve_amp_explicit(name, dtype):
    assert resolve_amp(torch.device('cpu'), name) is dtype


def test_resolve_amp_unknown():
    with pytest.raises(ValueError, match=r"precision must be one of \['auto', 'bf16'.*got 'half'"):
        resolve_amp('cpu', 'half')
    assert 'auto' in AMP_CHOICES


@pytest.mark.parametrize('native', [True, False])
def test_resolve_amp_auto_cpu_follows_capability(monkeypatch, native):
    monkeypatch.setattr(runtime, 'cpu_has_native_bf16', lambda: native)
    assert resolve_amp('cpu') is (torch.bfloat16 if native else None)


def test_cpu_native_bf16_needs_avx512(monkeypatch):
    cpu_has_native_bf16.cache_clear()
    try:
        monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: 'AVX2')
        assert cpu_has_native_bf16() is False
        cpu_has_native_bf16.cache_clear()
        monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: 'AVX512')
        monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: True, raising=False)
        assert cpu_has_native_bf16() is True
    finally:
        cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize('bf16_ok', [True, False])
def test_resolve_amp_auto_cuda(monkeypatch, bf16_ok):
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: bf16_ok)
    assert resolve_amp(torch.device('cuda'), 'auto') is (torch.bfloat16 if bf16_ok else None)
    if not bf16_ok:
        with pytest.raises(ValueError, match="does not support it; use 'float16' or 'float32'"):
            resolve_amp('cuda', 'bf16')
    assert resolve_amp('mps', 'auto') is None


def test_amp_context():
    x = torch.ones(2, 2)
    with amp_context('cpu', None):
        assert (x @ x).dtype == torch.float32
    with amp_context(torch.device('cpu'), torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16
