"""ASAP / FLC pooling layers: fast matrix form vs the FFT formulation, dtypes, formats, autograd, export."""
import math

import pytest
import torch
import torch.nn.functional as F

from timm_asap.layers import (
    ASAP2d, ASAP2dFFT, FLC2d, FLC2dFFT, asap_pool2d, asap_pool2d_fft, create_pool, flc_pool2d, flc_pool2d_fft,
    output_size,
)
from timm_asap.layers import spectral_matrix

SIZES = range(1, 65)
# (name, fast function, FFT function, kwargs) for every variant the package offers.
VARIANTS = [
    ('asap-one', asap_pool2d, asap_pool2d_fft, dict(padding='one')),
    ('asap-none', asap_pool2d, asap_pool2d_fft, dict(padding='none')),
    ('asap-large', asap_pool2d, asap_pool2d_fft, dict(padding='large')),
    ('flc-real', flc_pool2d, flc_pool2d_fft, dict()),
    ('flc-abs-backward', flc_pool2d, flc_pool2d_fft, dict(variant='abs', norm='backward')),
]
MODULES = [(ASAP2d, asap_pool2d), (FLC2d, flc_pool2d)]


@pytest.fixture(params=['auto', 'paired', 'auto-nhwc', 'paired-nhwc'])
def contraction(request, monkeypatch):
    """'auto': the CPU's choice (the low-rank form for planes of 400 pixels and more with rank <= 2, else
    paired); 'paired': the two-product form GPUs use, forced for every size. '-nhwc': inputs passed
    through :func:`_layout` are made channels_last and contracted in NHWC order whatever their channel
    count (the order channels_last models and CPU-compiled models take)."""
    if request.param.startswith('paired'):
        monkeypatch.setattr(spectral_matrix, '_CPU_LOW_RANK_MAX', -1)
    if request.param.endswith('nhwc'):
        monkeypatch.setattr(spectral_matrix, '_MIN_NHWC_CHANNELS', 1)
    return request.param


def _layout(x, contraction):
    return x.contiguous(memory_format=torch.channels_last) if contraction.endswith('nhwc') else x


def _empty_output(pool, size, mode, padding='one'):
    try:
        output_size(size, pool, padding, mode)
        return False
    except ValueError:
        return True


@pytest.mark.parametrize('mode', ['centered', 'reference'])
@pytest.mark.parametrize('name,fast,fft,kwargs', VARIANTS, ids=[v[0] for v in VARIANTS])
def test_fast_form_equals_fft_formulation_float64_all_sizes(name, fast, fft, kwargs, mode, contraction):
    gen = torch.Generator().manual_seed(0)
    pool = 'flc' if name.startswith('flc') else 'asap'
    worst = 0.0
    for h in SIZES:
        for w in SIZES:
            if _empty_output(pool, h, mode, kwargs.get('padding', 'one')) or \
                    _empty_output(pool, w, mode, kwargs.get('padding', 'one')):
                continue
            x = torch.randn(1, 2, h, w, generator=gen, dtype=torch.float64)
            a, b = fast(_layout(x, contraction), mode=mode, **kwargs), fft(x, mode=mode, **kwargs)
            assert a.shape == b.shape, (h, w)
            worst = max(worst, (a - b).abs().max().item())
    assert worst < 1e-10


@pytest.mark.parametrize('name,fast,fft,kwargs', VARIANTS[:4], ids=[v[0] for v in VARIANTS[:4]])
def test_fast_form_equals_fft_formulation_on_device(name, fast, fft, kwargs, device):
    """One batch on ``device``: float64 to 1e-10, and float32 channels_last within float32 rounding."""
    x = torch.randn(4, 8, 56, 45, dtype=torch.float64, device=device)
    torch.testing.assert_close(fast(x, **kwargs), fft(x, **kwargs), rtol=0, atol=1e-10)
    x32 = x.float().contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(x32, **kwargs), fft(x, **kwargs).float(), rtol=1e-4, atol=1e-4)


def _public_crop_reference(x, pool):
    """The public code's band rule written out from the spec text: ``[int(M/4), int(M/4*3))``."""
    if pool == 'asap':
        x = F.pad(x, (0, 1, 0, 1))
    h, w = x.shape[-2:]
    spec = torch.fft.fftshift(torch.fft.fft2(x, norm='forward'))
    if pool == 'asap':
        win = torch.sqrt(torch.outer(torch.hamming_window(h, periodic=False, dtype=x.dtype),
                                     torch.hamming_window(w, periodic=False, dtype=x.dtype)))
        spec = spec * win
    spec = spec[..., int(h / 4):int(h / 4 * 3), int(w / 4):int(w / 4 * 3)]
    return torch.fft.ifft2(torch.fft.ifftshift(spec), norm='forward').real


@pytest.mark.parametrize('pool,fast', [('asap', asap_pool2d), ('flc', flc_pool2d)])
def test_reference_mode_reproduces_public_crop(pool, fast):
    gen = torch.Generator().manual_seed(1)
    for h in range(2, 65):
        x = torch.randn(1, 1, h, h + 3, generator=gen, dtype=torch.float64)
        ref = _public_crop_reference(x, pool)
        torch.testing.assert_close(fast(x, mode='reference'), ref, rtol=0, atol=1e-10)


def test_output_sizes():
    for size in SIZES:
        assert output_size(size, 'asap') == math.ceil(size / 2)
        assert output_size(size, 'flc', 'none') == math.ceil(size / 2)
        expected_ref = size // 2 + 1 if size % 4 == 2 else math.ceil(size / 2)
        assert output_size(size, 'asap', 'one', 'reference') == expected_ref
    assert output_size(14, 'asap', mode='reference') == 8
    assert output_size(14, 'asap') == 7
    # the centred band equals the public crop whenever size % 4 is 0 or 3
    x = torch.randn(2, 3, 56, 28, dtype=torch.float64)
    torch.testing.assert_close(asap_pool2d(x), asap_pool2d(x, mode='reference'), rtol=0, atol=1e-12)
    # and matches a stride-2 convolution's output size
    conv = torch.nn.Conv2d(3, 3, 3, stride=2, padding=1, dtype=torch.float64)
    for h, w in [(7, 9), (224, 224), (1, 5), (14, 13)]:
        y = torch.randn(1, 3, h, w, dtype=torch.float64)
        assert asap_pool2d(y).shape == conv(y).shape


@pytest.mark.parametrize('module_cls,fn', MODULES)
def test_module_equals_function(module_cls, fn):
    x = torch.randn(2, 3, 17, 12)
    for mode in ('centered', 'reference'):
        torch.testing.assert_close(module_cls(mode=mode)(x), fn(x, mode=mode), rtol=0, atol=0)
    assert create_pool('asap', padding='large')(x).shape == asap_pool2d(x, padding='large').shape
    assert isinstance(create_pool('flc_fft'), FLC2dFFT) and isinstance(create_pool('asap_fft'), ASAP2dFFT)


# Error bound per dtype, relative to the largest output magnitude (inputs ~N(0, 1)).
DTYPE_TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}


@pytest.mark.parametrize('dtype', list(DTYPE_TOL), ids=str)
@pytest.mark.parametrize('fn', [asap_pool2d, flc_pool2d])
def test_low_precision_dtypes(fn, dtype):
    x64 = torch.randn(2, 4, 28, 30, dtype=torch.float64)
    ref = fn(x64)
    y = fn(x64.to(dtype))
    assert y.dtype == dtype
    err = (y.double() - ref).abs().max() / ref.abs().max()
    assert err < DTYPE_TOL[dtype]


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=str)
def test_autocast(device, dtype):
    for shape in ((2, 3, 16, 16), (4, 8, 56, 56)):
        x = torch.randn(*shape, device=device)
        with torch.autocast(device, dtype=dtype):
            y = ASAP2d()(x)
        assert y.dtype == dtype
        ref = asap_pool2d(x.double())
        assert ((y.double() - ref).abs().max() / ref.abs().max()) < DTYPE_TOL[dtype], shape


@pytest.mark.parametrize('fn', [asap_pool2d, flc_pool2d])
def test_channels_last_and_non_contiguous(fn, contraction):
    # few channels take the NCHW contraction, many the NHWC one; 20x23 planes take the CPU's low-rank form
    for channels, h, w in ((3, 14, 15), (32, 14, 15), (32, 20, 23)):
        x = torch.randn(2, channels, h, w, dtype=torch.float64)
        ref = fn(x)
        y_cl = fn(x.contiguous(memory_format=torch.channels_last))
        assert y_cl.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y_cl, ref, rtol=0, atol=1e-12)
    x = torch.randn(2, 8, 14, 15, dtype=torch.float64)
    big = torch.randn(2, 8, 30, 31, dtype=torch.float64)
    sliced = big[:, :, 3:17, 5:20]                       # a non-contiguous view
    assert not sliced.is_contiguous()
    torch.testing.assert_close(fn(sliced), fn(sliced.contiguous()), rtol=0, atol=1e-12)
    transposed = x.transpose(2, 3)                        # non-contiguous, non-square
    torch.testing.assert_close(fn(transposed), fn(transposed.contiguous()), rtol=0, atol=1e-12)


@pytest.mark.parametrize('fn', [asap_pool2d, flc_pool2d])
def test_degenerate_sizes(fn):
    assert fn(torch.randn(0, 3, 8, 8)).shape == (0, 3, 4, 4)
    assert fn(torch.randn(0, 3, 8, 8).contiguous(memory_format=torch.channels_last)).shape == (0, 3, 4, 4)
    assert fn(torch.randn(1, 3, 8, 8)).shape == (1, 3, 4, 4)
    assert fn(torch.randn(2, 3, 1, 9)).shape == (2, 3, 1, 5)
    assert fn(torch.randn(2, 3, 9, 1)).shape == (2, 3, 5, 1)
    assert fn(torch.randn(2, 3, 1, 1)).shape == (2, 3, 1, 1)


def test_flc_forward_norm_keeps_constant_value():
    x = torch.full((1, 2, 16, 12), 3.5, dtype=torch.float64)
    torch.testing.assert_close(flc_pool2d(x), torch.full((1, 2, 8, 6), 3.5, dtype=torch.float64))


def test_nan_and_inf_propagate():
    x = torch.randn(1, 2, 8, 8)
    x[0, 0, 3, 3] = float('nan')
    x[0, 1, 2, 2] = float('inf')
    y = asap_pool2d(x)
    assert torch.isnan(y[0, 0]).any()
    assert not torch.isfinite(y[0, 1]).all()


@pytest.mark.parametrize('fn,kwargs', [
    (asap_pool2d, dict(padding='one')), (asap_pool2d, dict(padding='large', mode='reference')),
    (flc_pool2d, dict()), (flc_pool2d, dict(mode='reference', variant='abs', norm='backward')),
])
def test_gradcheck_float64(fn, kwargs):
    x = (torch.rand(1, 2, 7, 6, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fn(t, **kwargs), (x,))
    assert torch.autograd.gradgradcheck(lambda t: fn(t, **kwargs), (x,))


@pytest.mark.parametrize('bad,match', [
    (torch.randn(3, 8, 8), '4-D'),
    (torch.randn(1, 1, 3, 8, 8), '4-D'),
    (torch.ones(1, 1, 8, 8, dtype=torch.int64), 'torch.int64'),
    (torch.ones(1, 1, 8, 8, dtype=torch.bool), 'torch.bool'),
    (torch.randn(1, 1, 8, 8, dtype=torch.complex64), 'complex'),
])
@pytest.mark.parametrize('fn', [asap_pool2d, flc_pool2d, asap_pool2d_fft, flc_pool2d_fft])
def test_bad_input_raises_value_error(fn, bad, match):
    with pytest.raises(ValueError, match=match):
        fn(bad)


def test_bad_options_raise_value_error():
    for cls in (ASAP2d, FLC2d, ASAP2dFFT, FLC2dFFT):
        with pytest.raises(ValueError, match=r'supports stride=2, got 3'):
            cls(stride=3)
        with pytest.raises(ValueError, match=r'supports stride=2, got 1'):
            cls(channels=8, stride=1)
        cls(stride=(2, 2))
    with pytest.raises(ValueError, match=r"padding must be one of \['one', 'none', 'large'\], got 'two'"):
        ASAP2d(padding='two')
    with pytest.raises(ValueError, match=r"mode must be one of"):
        asap_pool2d(torch.randn(1, 1, 4, 4), mode='center')
    with pytest.raises(ValueError, match=r"variant must be one of"):
        FLC2d(variant='imag')
    with pytest.raises(ValueError, match='empty output for spatial size 1'):
        flc_pool2d(torch.randn(1, 1, 1, 4), mode='reference')
    with pytest.raises(ValueError, match="pool name must be one of .*, got 'blur'"):
        create_pool('blur')


def test_matrices_first_built_under_inference_mode_still_support_autograd():
    from timm_asap.layers import clear_cache
    clear_cache()
    with torch.inference_mode():
        ASAP2d()(torch.randn(1, 2, 11, 13))
    x = torch.randn(1, 2, 11, 13, requires_grad=True)
    ASAP2d()(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_no_state_and_meta_device():
    layer = ASAP2d(channels=16, device='meta', dtype=torch.bfloat16)
    assert layer.state_dict() == {} and list(layer.buffers()) == []
    y = layer(torch.empty(2, 16, 10, 10, device='meta'))
    assert y.shape == (2, 16, 5, 5) and y.device.type == 'meta'


def test_timm_aa_layer_resnet50d():
    import timm
    model = timm.create_model('resnet50d', aa_layer=ASAP2d, num_classes=5).eval()
    assert any(isinstance(m, ASAP2d) for m in model.modules())
    base_keys = set(timm.create_model('resnet50d', num_classes=5).state_dict())
    assert set(model.state_dict()) == base_keys
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 5) and torch.isfinite(out).all()


def test_timm_create_aa_does_not_swallow_stride_error():
    from timm.layers import create_aa
    assert isinstance(create_aa(ASAP2d, channels=8, stride=2), ASAP2d)
    with pytest.raises(ValueError, match='stride=2, got 3'):
        create_aa(ASAP2d, channels=8, stride=3)


def test_fx_symbolic_trace():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), ASAP2d(), FLC2d(), torch.nn.ReLU())
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(traced(x), model(x))
    gm = torch.fx.symbolic_trace(ASAP2d())
    assert any(n.op == 'call_function' and n.target is asap_pool2d for n in gm.graph.nodes)
    torch.testing.assert_close(gm(x), asap_pool2d(x))


def test_timm_fx_feature_extraction_treats_layers_as_leaves():
    import timm
    model = timm.create_model('resnet18', aa_layer=ASAP2d, features_only=True, feature_cls='fx',
                              out_indices=(1, 2, 3, 4)).eval()
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]


def test_jit_trace():
    # torch.jit.script is not supported: the matrix cache is a Python dict keyed by dtype/device and
    # TorchScript is deprecated upstream. torch.jit.trace records the matrices as constants.
    from timm_asap.layers import clear_cache
    clear_cache()  # a cold cache must not leak the matrix construction into the traced graph
    x = torch.randn(2, 3, 12, 12)
    traced = torch.jit.trace(ASAP2d(), x)
    torch.testing.assert_close(traced(x), asap_pool2d(x))


@pytest.mark.parametrize('module_cls', [ASAP2d, FLC2d])
def test_torch_compile_fullgraph(module_cls):
    torch._dynamo.reset()
    layer = module_cls()
    compiled = torch.compile(layer, fullgraph=True, backend='aot_eager' if module_cls is FLC2d else 'inductor')
    x = torch.randn(2, 3, 14, 14)
    torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-5)
    x.requires_grad_()
    compiled(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # more channels (the NHWC contraction is traced on the CPU), channels_last, and new sizes, which
    # recompile with their own matrices instead of failing on a symbolic size
    for x in (torch.randn(2, 16, 28, 28), torch.randn(2, 16, 28, 28).contiguous(memory_format=torch.channels_last),
              torch.randn(2, 16, 30, 26), torch.randn(3, 16, 8, 8)):
        torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('module_cls', [ASAP2d, FLC2d])
def test_torch_compile_dynamic_shapes(module_cls):
    torch._dynamo.reset()
    layer = module_cls()
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend='aot_eager')
    for shape in ((2, 32, 28, 28), (3, 32, 28, 28), (2, 8, 20, 20), (2, 3, 14, 14), (1, 17, 9, 12)):
        x = torch.randn(*shape)
        torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('warm', [False, True], ids=['cold-cache', 'warm-cache'])
def test_torch_export_with_many_channels(warm):
    from timm_asap.layers import clear_cache
    clear_cache()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), ASAP2d(), FLC2d(variant='abs')).eval()
    x = torch.randn(2, 3, 24, 22)
    with torch.no_grad():
        ref = model(x) if warm else None
        program = torch.export.export(model, (x,)).run_decompositions()
        assert not any('set_grad_enabled' in str(n.target) for n in program.graph.nodes)
        y = program.module()(x)
        ref = model(x) if ref is None else ref
    assert type(y) is torch.Tensor
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    # the matrices cached while exporting are ordinary tensors: eager and channels_last calls still work
    y_cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert type(y_cl) is torch.Tensor
    torch.testing.assert_close(y_cl, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('dynamo,opset', [(False, 17), (True, 18)], ids=['torchscript-opset17', 'dynamo-opset18'])
@pytest.mark.parametrize('module_cls', [ASAP2d, FLC2d])
def test_onnx_export_matches_onnxruntime(module_cls, dynamo, opset, tmp_path):
    ort = pytest.importorskip('onnxruntime')
    pytest.importorskip('onnx')
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), module_cls()).eval()
    x = torch.randn(2, 3, 20, 18)
    path = tmp_path / 'pool.onnx'
    torch.onnx.export(model, (x,), str(path), opset_version=opset, dynamo=dynamo)
    sess = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(torch.from_numpy(y), ref, rtol=1e-4, atol=1e-5)


def test_plan_cache_follows_the_cpu_tuning_constants(monkeypatch):
    args = (32, 32, 'asap', 'one', 'centered', 'ortho', False, False, torch.float32, torch.device('cpu'))
    assert spectral_matrix.pool_plan(*args).kind == 'low_rank'
    monkeypatch.setattr(spectral_matrix, '_CPU_LOW_RANK_MAX', -1)  # what the 'paired' contraction fixture does
    assert spectral_matrix.pool_plan(*args).kind == 'paired'
