"""Pooling backends: each candidate equals the FFT oracle and the two-product form, forward and input
gradient; selection, the winners table, fallbacks, compile/export, and a process without triton.

The Triton kernel runs on CPU tensors through Triton's interpreter (``TRITON_INTERPRET=1``, switched on by
the ``interpreter`` and ``triton_kernel`` fixtures before the kernel is first defined) and compiled on CUDA
tensors: the default run's backend tests take the ``device`` fixture and run on both (the CUDA runs are
marked ``gpu``). The interpreter is slow, so the default run takes a few sizes; ``-m slow`` takes every
plane size of the registered networks at their default input size and the odd sizes 1..17, 27, 55, 111,
113, in both band modes and both layouts.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from timm_asap.layers import (
    ASAP2d, FLC2d, asap_pool2d, asap_pool2d_fft, flc_pool2d, flc_pool2d_fft, get_backend, output_size, set_backend,
)
from timm_asap.layers import backends, kronecker, triton_pool


# Input planes (H = W) of every ASAP/FLC layer in the registered networks at their default input size
# (test_network_planes_cover_the_registry checks this list against the registry).
NETWORK_PLANES = (8, 13, 14, 16, 18, 27, 28, 32, 36, 55, 56, 72, 111, 112, 144, 221, 224, 288)
ODD_PLANES = tuple(range(1, 18)) + (27, 55, 111, 113)
ALL_PLANES = tuple(sorted(set(NETWORK_PLANES) | set(ODD_PLANES)))
FAST_PLANES = (1, 2, 7, 14)
# Error bound relative to the largest output magnitude (inputs ~N(0, 1)); as in test_layers.py.
DTYPE_TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}
# (name, fast function, FFT oracle, kwargs): the linear variants every backend implements.
VARIANTS = {
    'asap-one': (asap_pool2d, asap_pool2d_fft, dict(padding='one')),
    'asap-none': (asap_pool2d, asap_pool2d_fft, dict(padding='none')),
    'asap-large': (asap_pool2d, asap_pool2d_fft, dict(padding='large')),
    'flc-real': (flc_pool2d, flc_pool2d_fft, dict()),
    'flc-real-backward': (flc_pool2d, flc_pool2d_fft, dict(norm='backward')),
}


def _triton_kernel(monkeypatch, interpret):
    pytest.importorskip('triton', reason='the Triton kernel tests need the triton package')
    if interpret:
        monkeypatch.setenv('TRITON_INTERPRET', '1')
    else:
        monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    triton_pool._kernel.cache_clear()
    yield
    triton_pool._kernel.cache_clear()


@pytest.fixture
def interpreter(monkeypatch):
    """Triton's CPU interpreter on for this test; the kernel is redefined under it and again after."""
    yield from _triton_kernel(monkeypatch, interpret=True)


@pytest.fixture
def triton_kernel(monkeypatch, device):
    """The Triton kernel for ``device``: run by the interpreter on the CPU, compiled for the GPU on CUDA."""
    yield from _triton_kernel(monkeypatch, interpret=device == 'cpu')


def _pool(name):
    return 'flc' if name.startswith('flc') else 'asap'


def _check_backend(backend, variant, size, mode, layout, dtype, width=None, device='cpu'):
    """Forward and input gradient of ``backend`` on ``device`` against the float64 FFT oracle and the
    two-product form."""
    fast, fft, kwargs = VARIANTS[variant]
    height, width = size, width or size
    try:
        out = (output_size(height, _pool(variant), kwargs.get('padding', 'one'), mode),
               output_size(width, _pool(variant), kwargs.get('padding', 'one'), mode))
    except ValueError:
        return  # no output at this size in this mode (tested in test_layers.py)
    gen = torch.Generator().manual_seed(size * 1000 + width)
    x64 = torch.randn(2, 3, height, width, generator=gen, dtype=torch.float64).to(device)
    g64 = torch.randn(2, 3, *out, generator=gen, dtype=torch.float64).to(device)
    oracle_x = x64.to(dtype).double().requires_grad_()
    oracle = fft(oracle_x, mode=mode, **kwargs)
    oracle.backward(g64)

    def run(name):
        set_backend(name)
        x = x64.to(dtype)
        if layout == 'channels_last':
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        assert backends.resolve_backend(x, height, width, dtype, False) == name
        y = fast(x, mode=mode, **kwargs)
        y.backward(g64.to(dtype))
        assert y.dtype == dtype and y.shape == oracle.shape
        assert (layout == 'channels_last') == y.is_contiguous(memory_format=torch.channels_last) or min(out) == 1
        return y.detach().double(), x.grad.double()

    y, grad = run(backend)
    y_ref, grad_ref = run('two_product')
    tol = DTYPE_TOL[dtype]
    scale_y = max(oracle.abs().max().item(), 1e-30)
    scale_g = max(oracle_x.grad.abs().max().item(), 1e-30)
    where = (backend, variant, size, width, mode, layout, dtype)
    assert (y - oracle.detach()).abs().max().item() / scale_y < tol, where
    assert (grad - oracle_x.grad).abs().max().item() / scale_g < tol, where
    assert (y - y_ref).abs().max().item() / scale_y < 2 * tol, where
    assert (grad - grad_ref).abs().max().item() / scale_g < 2 * tol, where


LAYOUTS = ('contiguous', 'channels_last')
MODES = ('centered', 'reference')


# ---- fast subset (default run) ----

@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('variant', ['asap-one', 'flc-real'])
def test_triton_exact_fast(triton_kernel, restore_backend, device, variant, mode, layout):
    for size in FAST_PLANES:
        _check_backend('triton', variant, size, mode, layout, torch.float32, device=device)
    _check_backend('triton', variant, 13, mode, layout, torch.float32, width=6, device=device)   # non-square


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=str)
def test_triton_half_dtypes_fast(triton_kernel, restore_backend, device, dtype):
    for layout in LAYOUTS:
        for size in (5, 14):  # with and without the low-rank term
            _check_backend('triton', 'asap-one', size, 'centered', layout, dtype, device=device)


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('variant', list(VARIANTS))
def test_kronecker_exact_all_small_planes(restore_backend, device, variant, mode, layout):
    for size in [s for s in ALL_PLANES if s * s <= kronecker.KRONECKER_MAX_PLANE]:
        _check_backend('kronecker', variant, size, mode, layout, torch.float32, device=device)
    _check_backend('kronecker', variant, 17, mode, layout, torch.float32, width=9, device=device)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=str)
def test_kronecker_half_dtypes(restore_backend, device, dtype):
    for layout in LAYOUTS:
        _check_backend('kronecker', 'asap-one', 28, 'centered', layout, dtype, device=device)


# ---- every plane size (slow) ----

@pytest.mark.slow
@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('variant', list(VARIANTS))
def test_triton_exact_all_planes(interpreter, restore_backend, variant, mode, layout):
    for size in ALL_PLANES:
        if variant in ('asap-one', 'flc-real') or size <= 64:
            _check_backend('triton', variant, size, mode, layout, torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize('layout', LAYOUTS)
def test_triton_half_dtypes_all_planes(interpreter, restore_backend, layout, dtype):
    for size in ALL_PLANES:
        _check_backend('triton', 'asap-one', size, 'centered', layout, dtype)


@pytest.mark.slow
def test_network_planes_cover_the_registry():
    import timm
    import timm_asap  # noqa: F401  (registers the networks)
    planes = set()

    def record(module, args):
        planes.add(tuple(args[0].shape[-2:]))

    for name in timm.list_models(['*_asap', '*_flc']):
        with torch.device('meta'):
            model = timm.create_model(name)
        for m in model.modules():
            if isinstance(m, (ASAP2d, FLC2d)):
                m.register_forward_pre_hook(record)
        with torch.no_grad():
            model(torch.empty(1, *model.pretrained_cfg['input_size'], device='meta'))
    assert planes and all(h == w for h, w in planes)
    assert {h for h, _ in planes} <= set(NETWORK_PLANES)


# ---- selection, table, fallbacks ----

def test_default_is_auto_and_auto_is_two_product_while_the_table_is_empty(restore_backend, monkeypatch):
    monkeypatch.delenv(backends.BACKEND_ENV, raising=False)
    backends._selected = None
    assert get_backend() == 'auto'
    assert backends.load_table() == {}, 'the committed table holds measured winners only'
    for x in (torch.randn(2, 3, 14, 14), torch.randn(2, 16, 56, 56).contiguous(memory_format=torch.channels_last)):
        assert backends.resolve_backend(x, x.shape[-2], x.shape[-1], x.dtype, False) == 'two_product'


def test_set_backend_returns_previous_and_env_variable_selects(restore_backend, monkeypatch):
    backends._selected = None
    monkeypatch.setenv(backends.BACKEND_ENV, 'kronecker')
    assert get_backend() == 'kronecker'
    assert set_backend('two_product') == 'kronecker'
    assert get_backend() == 'two_product'


def _write_table(path, winners):
    path.write_text(json.dumps({'format': 1, 'winners': winners}))


def test_auto_follows_a_winners_table(restore_backend, monkeypatch, tmp_path):
    path = tmp_path / 'table.json'
    _write_table(path, [dict(device='cpu', dtype='float32', height=14, width=14, layout='contiguous',
                             backend='kronecker')])
    monkeypatch.setattr(backends, 'TABLE_PATH', path)
    backends._table.cache_clear()
    try:
        set_backend('auto')
        x = torch.randn(2, 3, 14, 14)
        assert backends.resolve_backend(x, 14, 14, torch.float32, False) == 'kronecker'
        assert backends.resolve_backend(x.contiguous(memory_format=torch.channels_last), 14, 14,
                                        torch.float32, False) == 'two_product'
        assert backends.resolve_backend(x, 14, 14, torch.float32, True) == 'two_product'  # FLC 'abs'
        torch.testing.assert_close(asap_pool2d(x), asap_pool2d_fft(x), rtol=1e-5, atol=1e-5)
        # torch.compile reads the table at trace time, without a graph break
        torch._dynamo.reset()
        compiled = torch.compile(ASAP2d(), fullgraph=True, backend='aot_eager')
        torch.testing.assert_close(compiled(x), asap_pool2d_fft(x), rtol=1e-5, atol=1e-5)
    finally:
        backends._table.cache_clear()


def test_bad_table_names_the_file(tmp_path):
    path = tmp_path / 'table.json'
    _write_table(path, [dict(device='cpu', dtype='float32', height=14, width=14, layout='contiguous',
                             backend='cublas')])
    allowed = r"\['two_product', 'kronecker', 'triton'\]"
    with pytest.raises(ValueError, match=rf"table\.json.*must be one of {allowed}, got 'cublas'"):
        backends.load_table(path)
    path.write_text('{"format": 2, "winners": []}')
    with pytest.raises(ValueError, match='format must be 1'):
        backends.load_table(path)


def test_fallbacks_where_a_backend_does_not_apply(restore_backend, monkeypatch):
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    set_backend('triton')
    x = torch.randn(1, 2, 14, 14)
    assert backends.resolve_backend(x, 14, 14, torch.float32, False) == 'two_product'  # CPU
    set_backend('kronecker')
    big = torch.randn(1, 2, 112, 112)
    assert backends.resolve_backend(big, 112, 112, torch.float32, False) == 'two_product'
    torch.testing.assert_close(asap_pool2d(big), asap_pool2d_fft(big), rtol=1e-5, atol=1e-5)


def test_triton_skipped_under_compile_and_trace(interpreter, restore_backend):
    set_backend('triton')
    x = torch.randn(2, 3, 14, 14)
    ref = asap_pool2d_fft(x)
    torch._dynamo.reset()
    compiled = torch.compile(ASAP2d(), fullgraph=True, backend='aot_eager')
    torch.testing.assert_close(compiled(x), ref, rtol=1e-5, atol=1e-5)
    traced = torch.jit.trace(ASAP2d(), x)
    assert 'PythonOp' not in str(traced.graph)
    torch.testing.assert_close(traced(x), ref, rtol=1e-5, atol=1e-5)


def test_triton_double_backward(interpreter, restore_backend):
    set_backend('triton')
    x = torch.randn(1, 2, 9, 10, requires_grad=True)
    (g,) = torch.autograd.grad(asap_pool2d(x).square().sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    x64 = x.detach().double().requires_grad_()
    (g64,) = torch.autograd.grad(asap_pool2d_fft(x64).square().sum(), x64, create_graph=True)
    (gg64,) = torch.autograd.grad(g64.sum(), x64)
    torch.testing.assert_close(gg.double(), gg64, rtol=1e-5, atol=1e-5)


def test_kronecker_compiles_and_exports(restore_backend):
    set_backend('kronecker')
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), ASAP2d(), FLC2d()).eval()
    x = torch.randn(2, 3, 20, 18)
    with torch.no_grad():
        ref = model(x)
        program = torch.export.export(model, (x,))
        torch.testing.assert_close(program.module()(x), ref, rtol=1e-5, atol=1e-5)
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
        torch.testing.assert_close(compiled(x), ref, rtol=1e-5, atol=1e-5)


def test_works_without_triton():
    """A process where triton cannot be imported: pooling works, 'triton' is refused by name."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, timm_asap\n"
        "from timm_asap.layers import asap_pool2d, set_backend, get_backend\n"
        "from timm_asap.layers.triton_pool import triton_available\n"
        "assert not triton_available()\n"
        "set_backend('kronecker'); y = asap_pool2d(torch.randn(1, 2, 8, 8)); assert y.shape == (1, 2, 4, 4)\n"
        "try:\n"
        "    set_backend('triton')\n"
        "except ImportError as e:\n"
        "    print('refused:', e)\n"
        "assert get_backend() == 'kronecker'\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop(backends.BACKEND_ENV, None)
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused: pooling backend 'triton' needs the triton package" in out.stdout


def test_import_does_not_import_the_kernel():
    code = ("import sys, timm_asap, torch\n"
            "from timm_asap.layers import asap_pool2d\n"
            "asap_pool2d(torch.randn(1, 1, 8, 8))\n"
            "from timm_asap.layers import triton_pool\n"
            "assert triton_pool._kernel.cache_info().currsize == 0\n"
            "assert 'timm_asap.layers.triton_kernel' not in sys.modules\n")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('backend', ['kronecker', 'triton'])
@pytest.mark.parametrize('dtype', list(DTYPE_TOL), ids=str)
def test_backends_match_oracle_at_network_shapes_on_cuda(restore_backend, backend, dtype):
    """The networks' pooling inputs at their channel counts (3 to 1024 channels, batch 4, planes up to 224;
    above 64x64 Kronecker falls back to the two-product form) in both layouts, against the FFT oracle, with
    finite input gradients. The backend tests above take both devices at small shapes; these are too large for
    Triton's CPU interpreter (on the CPU ``-m slow`` takes their planes at 3 channels)."""
    set_backend(backend)
    for c, s in ((3, 224), (64, 112), (256, 56), (1024, 14), (256, 8), (8, 113)):
        for layout in LAYOUTS:
            x = torch.randn(4, c, s, s, device='cuda')
            if layout == 'channels_last':
                x = x.contiguous(memory_format=torch.channels_last)
            ref = asap_pool2d_fft(x.double())
            xd = x.to(dtype).requires_grad_()
            y = asap_pool2d(xd)
            y.backward(torch.ones_like(y))
            err = (y.double() - ref).abs().max() / ref.abs().max()
            assert err < DTYPE_TOL[dtype], (backend, c, s, layout, dtype)
            assert torch.isfinite(xd.grad).all()


# ---- the GPU check's CLI, in its tiny CPU mode ----

def test_benchmark_layers_backends_tiny_writes_the_table_auto_reads(tmp_path, capsys, restore_backend):
    from timm_asap_lab.tools.benchmark_layers import RESNET18_CIFAR_SHAPES
    from timm_asap_lab.cli.benchmark_layers import main
    table, markdown, rows_path = tmp_path / 'table.json', tmp_path / 'table.md', tmp_path / 'rows.json'
    assert main(['--backends', 'two_product,kronecker,triton', '--tiny', '--device', 'cpu',
                 '--layouts', 'contiguous', 'channels_last', '--json', str(table), '--markdown', str(markdown),
                 '--output', str(rows_path)]) == 0
    winners = backends.load_table(table)
    assert set(winners) == {('cpu', 'float32', s, s, layout) for s in (16, 8) for layout in LAYOUTS}
    assert set(winners.values()) <= {'two_product', 'kronecker'}
    rows = json.loads(rows_path.read_text())['rows']
    triton_rows = [r for r in rows if r['method'] == 'triton']
    assert triton_rows and all(r['ms'] is None and 'does not apply' in r['skipped'] for r in triton_rows)
    assert all(r['ratio_vs_avg_pool2d'] > 0 for r in rows if r['method'] == 'kronecker')
    assert '| cpu | float32 | channels_last | 2x16x8x8 |' in markdown.read_text()
    assert RESNET18_CIFAR_SHAPES == ((64, 32), (128, 16), (256, 8))
    assert get_backend() == backends._selected  # the benchmark restores the selection


@pytest.mark.parametrize('argv,match', [
    (['--backends', 'cublas'], r"--backends: unknown \['cublas'\]; allowed .*'two_product', 'kronecker', 'triton'"),
    (['--json', 'x.json'], '--json need --backends'),
    (['--backends', 'kronecker', '--shapes', '64x0'], 'must be >= 1'),
])
def test_benchmark_layers_bad_flags(argv, match):
    from timm_asap_lab.cli.benchmark_layers import main
    with pytest.raises(SystemExit, match=match):
        main(argv)


def test_benchmark_shapes_are_the_networks_downsampling_inputs():
    import timm
    import timm_asap  # noqa: F401
    from timm_asap_lab.tools.benchmark_layers import NETWORK_SHAPES
    for family, (shapes, _) in NETWORK_SHAPES.items():
        found = set()
        with torch.device('meta'):
            model = timm.create_model(f'{family}_asap')
        for m in model.modules():
            if isinstance(m, ASAP2d):
                m.register_forward_pre_hook(lambda mod, args: found.add(tuple(args[0].shape[1:3])))
        with torch.no_grad():
            model(torch.empty(1, *model.pretrained_cfg['input_size'], device='meta'))
        assert found == set(shapes), family


@pytest.mark.parametrize('arch', [80, 90])
def test_triton_kernel_compiles_for_cuda_without_a_gpu(arch):
    """Triton's compiler (to PTX and cubin, with the ptxas it ships) needs no GPU: the kernel the
    interpreter proves exact also builds for Ampere and Hopper, at the block sizes the launcher picks."""
    triton = pytest.importorskip('triton')
    from triton.backends.compiler import GPUTarget
    _, kernel = triton_pool._kernel()
    pointers = ['x_ptr', 'y_ptr', 'l1_ptr', 'r1_ptr', 'l2_ptr', 'r2_ptr']
    ints = ['channels', 'in_h', 'in_w', 'out_h', 'out_w', 'sxn', 'sxc', 'sxh', 'sxw', 'syn', 'syc', 'syh', 'syw']
    for dtype, (out_h, out_w), has_imag in (('fp32', (28, 28), True), ('bf16', (56, 56), True),
                                            ('fp16', (112, 112), False), ('bf16', (224, 224), True)):
        config = triton_pool.launch_config(out_h, out_w)
        num_warps = config.pop('num_warps')
        consts = dict(HAS_IMAG=has_imag, IEEE=dtype == 'fp32', WIDEN=False, **config)
        signature = {**{p: '*' + dtype for p in pointers}, **{n: 'i32' for n in ints},
                     **{c: 'constexpr' for c in consts}}
        compiled = triton.compile(triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=consts),
                                  target=GPUTarget('cuda', arch, 32), options={'num_warps': num_warps})
        assert compiled.asm['cubin'] and '.local' not in compiled.asm['ptx'], (dtype, out_h, 'register spills')
        assert compiled.metadata.shared <= 160 * 1024, (dtype, out_h, compiled.metadata.shared)
