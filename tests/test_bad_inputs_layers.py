"""Bad inputs to the pooling layers: each gives a clear error naming what was wrong and what is allowed, or
the correct result (non-finite values, zero magnitudes)."""
import re

import pytest
import torch

from timm_asap.layers import (
    ASAP2d, ASAP2dFFT, FLC2d, FLC2dFFT, asap_pool2d, create_pool, flc_pool2d, flc_pool2d_fft, pool_arguments,
    set_backend,
)
from timm_asap.layers import backends

ALL_LAYERS = (ASAP2d, FLC2d, ASAP2dFFT, FLC2dFFT)


@pytest.mark.parametrize('cls,kwargs,error,match', [
    (FLC2d, dict(padding='one'), TypeError,
     r"FLC2d got unknown argument\(s\) \['padding'\]; allowed: \['channels', 'stride', 'mode', 'variant', 'norm'"),
    (ASAP2d, dict(variant='abs'), TypeError,
     r"ASAP2d got unknown argument\(s\) \['variant'\]; allowed: \['channels', 'stride', 'padding', 'mode'"),
    (ASAP2d, dict(pading='one', mod='x'), TypeError, r"\['mod', 'pading'\]"),
    (FLC2dFFT, dict(padding='large'), TypeError, r"FLC2dFFT got unknown argument\(s\) \['padding'\]"),
    (ASAP2d, dict(padding=1), ValueError, r"ASAP2d padding must be one of \['one', 'none', 'large'\], got 1"),
    (ASAP2d, dict(mode=None), ValueError, r"ASAP2d mode must be one of \['centered', 'reference'\], got None"),
    (FLC2d, dict(variant=['abs']), ValueError, r"FLC2d variant must be one of \['real', 'abs'\], got \['abs'\]"),
    (FLC2d, dict(norm='ortho'), ValueError, r"FLC2d norm must be one of \['forward', 'backward'\], got 'ortho'"),
    (ASAP2d, dict(stride=2.0), ValueError, r'ASAP2d supports stride=2, got 2.0'),
    (ASAP2d, dict(stride='2'), ValueError, r"ASAP2d supports stride=2, got '2'"),
    (FLC2d, dict(stride=(2, 2, 2)), ValueError, r'FLC2d supports stride=2, got \(2, 2, 2\)'),
    (FLC2d, dict(stride=True), ValueError, r'supports stride=2, got True'),
    (ASAP2d, dict(channels='64'), ValueError, r"ASAP2d channels must be None or an int >= 0, got '64'"),
    (FLC2d, dict(channels=-1), ValueError, r'FLC2d channels must be None or an int >= 0, got -1'),
])
def test_layer_arguments_rejected_with_allowed_ones(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(**kwargs)


def test_layer_arguments_still_accepted():
    for cls in ALL_LAYERS:
        cls(channels=8, stride=(2, 2))
        cls(8, 2)
    ASAP2d(channels=torch.tensor(3).item(), padding='large', mode='reference', device='cpu', dtype=torch.float32)


def test_create_pool_and_pool_arguments():
    with pytest.raises(TypeError, match=r"FLC2d got unknown argument\(s\) \['padding'\]; allowed"):
        create_pool('flc', padding='large')
    with pytest.raises(ValueError, match=r"pool name must be one of \['asap', 'asap_fft', 'flc', 'flc_fft'\], got 'blur'"):
        create_pool('blur')
    with pytest.raises(ValueError, match=r"pool name must be one of .*, got \['asap'\]"):
        pool_arguments(['asap'])
    assert pool_arguments('asap') == ('channels', 'stride', 'padding', 'mode', 'device', 'dtype')
    assert pool_arguments('flc') == ('channels', 'stride', 'mode', 'variant', 'norm', 'device', 'dtype')


@pytest.mark.parametrize('name', ['cuda', 'Triton', '', None, 1])
def test_bad_backend_names(name, restore_backend):
    allowed = re.escape("['auto', 'two_product', 'kronecker', 'triton']")
    with pytest.raises(ValueError, match=f"pooling backend must be one of {allowed}, got {re.escape(repr(name))}"):
        set_backend(name)


def test_bad_backend_environment_variable(restore_backend, monkeypatch):
    backends._selected = None
    monkeypatch.setenv(backends.BACKEND_ENV, 'fast')
    with pytest.raises(ValueError, match=r"\$TIMM_ASAP_POOL_BACKEND must be one of \['auto', .*got 'fast'"):
        asap_pool2d(torch.randn(1, 1, 4, 4))


def test_triton_refused_where_not_installed(restore_backend, monkeypatch):
    monkeypatch.setattr(backends, 'triton_available', lambda: False)
    with pytest.raises(ImportError, match="'triton' needs the triton package.*one of 'auto', 'two_product'"):
        set_backend('triton')


# ---- FLC variant='abs' where the pooled magnitude is 0 ----

def _abs_grads(x):
    fast_x = x.clone().requires_grad_()
    fft_x = x.clone().requires_grad_()
    g = torch.randn(flc_pool2d(x, variant='abs').shape, dtype=x.dtype, generator=torch.Generator().manual_seed(0))
    (flc_pool2d(fast_x, variant='abs') * g).sum().backward()
    (flc_pool2d_fft(fft_x, variant='abs') * g).sum().backward()
    return fast_x.grad, fft_x.grad


def test_flc_abs_gradient_finite_on_an_all_zero_plane():
    fast, fft = _abs_grads(torch.zeros(1, 1, 8, 8, dtype=torch.float64))
    assert torch.isfinite(fast).all() and torch.isfinite(fft).all()
    torch.testing.assert_close(fast, fft, rtol=0, atol=1e-12)


def test_flc_abs_gradient_with_one_black_image_in_a_batch():
    x = torch.randn(3, 4, 12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x[1] = 0
    fast, fft = _abs_grads(x)
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast, fft, rtol=1e-9, atol=1e-12)
    assert torch.isnan(flc_pool2d(torch.full((1, 1, 4, 4), float('nan')), variant='abs')).all()  # NaN stays NaN


def test_flc_abs_black_image_gives_finite_parameter_gradients_in_a_network():
    import timm
    import timm_asap  # noqa: F401
    torch.manual_seed(0)
    model = timm.create_model('resnet18_cifar_flc', num_classes=10, pool_args=dict(variant='abs'))
    assert any(isinstance(m, FLC2d) and m.variant == 'abs' for m in model.modules())
    x = torch.randn(4, 3, 32, 32)
    x[2] = 0
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert torch.isfinite(loss) and not bad


# ---- non-finite values spread over their plane, and only there ----

@pytest.mark.parametrize('fn,kwargs', [(asap_pool2d, {}), (flc_pool2d, {}), (flc_pool2d, dict(variant='abs'))])
@pytest.mark.parametrize('value', [float('nan'), float('inf')])
def test_a_non_finite_pixel_spreads_over_its_plane_only(fn, kwargs, value):
    x = torch.randn(2, 3, 16, 14)
    x[1, 2, 5, 7] = value
    y = fn(x, **kwargs)
    assert not torch.isfinite(y[1, 2]).any(), 'every output pixel of that plane depends on the bad pixel'
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[1, 2] = False
    assert torch.isfinite(y[mask]).all(), 'other channels and images are untouched'
