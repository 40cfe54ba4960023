"""Coverage of :func:`asapify` over timm's model families.

For one small model of every timm family (``timm.list_modules()``), built with ``pretrained=False``
at its default input size, the conversion is checked against the unconverted model:

* output and ``forward_features`` shapes,
* ``features_only`` outputs (every out index) and ``feature_info`` reductions,
* state-dict names and shapes (a base checkpoint loads with ``strict=True``),
* strided layers the conversion cannot handle (:func:`plan_conversion`), and downsampling left in
  place because it happens in a module's own ``forward`` (``F.avg_pool2d``, strided slicing and the
  like): found by running the converted model under a ``TorchFunctionMode`` that records every op
  whose output is spatially smaller than its input, outside the converted layers.

Families without a convolutional body (only a patch-embedding convolution) are reported as skipped.
The shape checks run on the meta device when the model allows it (no memory, no compute), else on
the CPU with one image.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass, field
from typing import Iterable

import timm
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from tqdm import tqdm

from timm_asap.layers.create import POOL_LAYERS
from timm_asap.models.convert import ConversionError, PooledConvMixin, SpectralDownsample, asapify, plan_conversion
from timm_asap.models.registry import MODULES

__all__ = ['CoverageRow', 'family_models', 'pick_representative', 'check_model', 'coverage_rows', 'rows_to_markdown', 'rows_to_dicts']

# smaller-model name tokens first: the representative of a family is its smallest candidate
_SIZE_TOKENS = ('atto', 'femto', 'pico', 'nano', 'tiny', 'xxs', 'xs', 'mini', 'small', '_s', 'lite', 'b0', '050',
                '075', '100', '18', '26', 'base')
_SKIP_PREFIX = ('test_',)  # timm's test models


@dataclass
class CoverageRow:
    """The result for one family.

    Attributes:
        family: timm module name.
        model: the representative model.
        status: ``ok`` (every check passes), ``partial`` (shapes and state dict match, but some
            downsampling is left unconverted), ``fail`` (a shape or key mismatch, or an error) or
            ``skipped`` (not convolutional / not buildable).
        strided: strided layers found by :func:`plan_conversion`.
        converted: of those, converted.
        output: output and forward_features shapes match (None: not checked).
        features: features_only shapes and reductions match (None: the family has no features_only).
        state_dict: names and shapes match.
        left: strided layers or functional downsampling left unconverted.
        note: why something failed or was skipped.
        device: where the shapes were checked (``meta`` or ``cpu``).
    """

    family: str
    model: str
    status: str = 'fail'
    strided: int = 0
    converted: int = 0
    output: bool | None = None
    features: bool | None = None
    state_dict: bool | None = None
    left: list[str] = field(default_factory=list)
    note: str = ''
    device: str = ''


def family_models(family: str) -> list[str]:
    """timm's models in a family (module), timm's test models excluded."""
    return [m for m in timm.list_models(module=family) if not m.startswith(_SKIP_PREFIX)]


def _size_key(name: str) -> tuple:
    rank = next((i for i, tok in enumerate(_SIZE_TOKENS) if tok in name), len(_SIZE_TOKENS))
    return rank, len(name), name


def _n_params(name: str) -> int | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            model = timm.create_model(name, device='meta')
        return sum(p.numel() for p in model.parameters())
    except Exception:  # noqa: BLE001  (any build failure just drops the candidate)
        return None


def pick_representative(family: str, candidates: int = 6) -> str | None:
    """The model of ``family`` with the fewest parameters among its ``candidates`` smallest-named models."""
    names = sorted(family_models(family), key=_size_key)[:candidates]
    sized = [(n, c) for n in names if (c := _n_params(n)) is not None]
    return min(sized, key=lambda t: t[1])[0] if sized else None


def _is_convolutional(model: nn.Module) -> bool:
    """More than a patch embedding: some spatial (k > 1) convolution or several downsampling layers."""
    spatial = [m for m in model.modules() if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1]
    patchify = [m for m in spatial if m.kernel_size == m.stride]
    return len(spatial) > len(patchify) or len(plan_conversion(model)) > 1


def _spatial(t, fmt: str):
    if not isinstance(t, torch.Tensor) or t.ndim != 4:
        return None
    return tuple(t.shape[1:3]) if fmt == 'NHWC' else tuple(t.shape[-2:])


def _first_tensor(args):
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
        if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor):
            return a[0]
    return None


_CONVERTED = (PooledConvMixin, SpectralDownsample) + tuple(POOL_LAYERS.values())


_SPATIAL_OP = re.compile(r'conv|pool|interpolate|upsample|unfold|resize')


class _DownsamplingRecorder(TorchFunctionMode):
    """Records the innermost module of every torch op whose output is spatially smaller than its input."""

    def __init__(self, stack: list[str], found: dict[str, str], fmt: str):
        super().__init__()
        self.stack, self.found, self.fmt = stack, found, fmt

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, '__name__', '')
        if not (_SPATIAL_OP.search(name) or name == '__getitem__'):  # reshapes/views are not downsampling
            return out
        inp = _spatial(_first_tensor(args), self.fmt)
        outp = _spatial(out, self.fmt)
        # both spatial dims shrink by >= 1.5x (a linear layer on an NHWC block shrinks only the last
        # dim); global pooling (1x1 outputs) is not downsampling
        if (inp is not None and outp is not None and min(inp) >= 4 and outp != (1, 1)
                and all(o * 3 <= i * 2 for o, i in zip(outp, inp)) and self.stack):
            self.found.setdefault(self.stack[-1], name)
        return out


def _functional_downsampling(model: nn.Module, x: torch.Tensor, fmt: str) -> list[str]:
    """Modules whose own forward code downsamples with a torch op that asapify did not replace.

    Runs ``model(x)`` recording, for every torch function call whose output is spatially smaller
    than its input, the innermost module being run. Calls inside converted layers (spectral pools,
    pooled convolutions) are expected and not reported.

    Returns:
        ``'<module name> (<op>)'`` entries.
    """
    stack: list[str] = []
    found: dict[str, str] = {}
    handles = []

    def enter(name: str) -> None:
        stack.append(name)

    def leave() -> None:
        stack.pop()

    for name, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(lambda mod, args, n=name: enter(n)))
        handles.append(m.register_forward_hook(lambda mod, args, out: leave()))
    try:
        with torch.no_grad(), _DownsamplingRecorder(stack, found, fmt):
            model(x)
    finally:
        for h in handles:
            h.remove()
    converted = {n for n, m in model.named_modules() if isinstance(m, _CONVERTED)}
    listed = {op.name for op in plan_conversion(model) if op.action in ('keep', 'unsupported')}
    return [f"{n or '<model>'} ({op})" for n, op in found.items() if n not in converted and n not in listed]


def _build(name: str, device: str, **kwargs) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return timm.create_model(name, device=device, **kwargs).eval()


def _convert(model: nn.Module, pool: str) -> tuple[nn.Module, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        asapify(model, pool=pool, strict=False)
    left = [str(w.message).split(': ', 1)[-1] for w in caught if 'left' in str(w.message) and 'asapify' in str(w.message)]
    return model, left


def _features(name: str, device: str, pool: str | None):
    """A features_only model, converted before any FX tracing; None when the family has none."""
    try:
        model = _build(name, device, features_only=True)
    except Exception:  # noqa: BLE001
        return None
    if pool is None:
        return model
    try:
        return _convert(model, pool)[0]
    except ValueError:  # a traced wrapper: convert inside the builder, before tracing
        from timm.models._features_fx import FeatureGraphNet

        def graph(model_, **cfg):
            return FeatureGraphNet(asapify(model_, pool=pool, strict=False), **cfg)
        return _build(name, device, features_only=True, feature_cls=graph)


def _compare_shapes(name: str, device: str, pool: str, row: CoverageRow) -> None:
    base = _build(name, device)
    cfg = base.pretrained_cfg
    size = tuple(cfg.get('input_size', (3, 224, 224)))
    x = torch.randn(1, *size) if device == 'cpu' else torch.empty(1, *size, device=device)
    fmt = str(getattr(base, 'output_fmt', 'NCHW'))
    plan = plan_conversion(base)
    row.strided = len([op for op in plan if op.action != 'keep'])
    model, _ = _convert(_build(name, device), pool)
    row.converted = row.strided - len([op for op in plan if op.action == 'unsupported'])
    row.left = [op.name + f' ({op.reason})' for op in plan if op.action == 'unsupported']
    kept = [op.name for op in plan if op.action == 'keep']
    if kept:
        row.note = f"kept as is: {', '.join(kept)} (lossless space-to-depth)"
    sd, bsd = model.state_dict(), base.state_dict()
    row.state_dict = list(sd) == list(bsd) and all(sd[k].shape == bsd[k].shape for k in sd)
    with torch.no_grad():
        row.output = model(x).shape == base(x).shape
        if hasattr(base, 'forward_features'):
            fa, fb = model.forward_features(x), base.forward_features(x)
            if isinstance(fa, torch.Tensor):
                row.output = row.output and fa.shape == fb.shape
    row.left += [f"{entry}: downsamples inside its forward" for entry in _functional_downsampling(model, x, fmt)]
    fbase = _features(name, device, None)
    if fbase is not None:
        fmodel = _features(name, device, pool)
        with torch.no_grad():
            outs, bouts = fmodel(x), fbase(x)
        if isinstance(outs, dict):
            outs, bouts = list(outs.values()), list(bouts.values())
        row.features = ([o.shape for o in outs] == [o.shape for o in bouts]
                        and fmodel.feature_info.reduction() == fbase.feature_info.reduction())


def check_model(name: str, family: str = '', pool: str = 'asap', device: str = 'meta') -> CoverageRow:
    """Convert ``name`` and compare it with the base model (see the module docstring).

    Args:
        name: timm model name (built with ``pretrained=False``).
        family: label of the row (default: the model's timm module).
        pool: ``'asap'`` or ``'flc'``.
        device: ``'meta'`` (falls back to ``'cpu'`` when the model cannot run on meta) or ``'cpu'``.

    Returns:
        The :class:`CoverageRow`.
    """
    family = family or timm.models.get_arch_name(name)
    row = CoverageRow(family=family, model=name)
    try:
        probe = _build(name, 'meta')
    except Exception as e:  # noqa: BLE001
        row.status, row.note = 'skipped', f"cannot build: {type(e).__name__}: {str(e)[:120]}"
        return row
    if not _is_convolutional(probe):
        row.status, row.note = 'skipped', 'not convolutional (patch embedding only)'
        return row
    errors = []
    for dev in ((device, 'cpu') if device == 'meta' else (device,)):
        row.device = dev
        try:
            _compare_shapes(name, dev, pool, row)
            errors = []
            break
        except ConversionError as e:
            errors.append(str(e))
            break
        except Exception as e:  # noqa: BLE001  (the report records any failure)
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
    if errors:
        row.status, row.note = 'fail', errors[-1]
    elif not (row.output and row.state_dict and row.features is not False):
        row.status = 'fail'
        row.note = ', '.join(k for k, v in (('output shape', row.output), ('state dict', row.state_dict),
                                             ('features', row.features)) if v is False) + ' differ'
    else:
        row.status = 'partial' if row.left else 'ok'
    return row


def coverage_rows(
        families: Iterable[str] | None = None,
        pool: str = 'asap',
        device: str = 'meta',
        progress: bool = True,
) -> list[CoverageRow]:
    """One :class:`CoverageRow` per timm family (default: every ``timm.list_modules()`` entry but ours).

    Args:
        families: timm module names, or ``None`` for all; a name may also be ``family:model`` to
            choose the representative.
        pool: ``'asap'`` or ``'flc'``.
        device: ``'meta'`` or ``'cpu'``.
        progress: show a tqdm bar.
    """
    own = set(MODULES)
    if families is None:
        families = [f for f in timm.list_modules() if f not in own]
    rows = []
    bar = tqdm(list(families), disable=not progress, desc='families')
    for item in bar:
        family, _, model = item.partition(':')
        bar.set_postfix_str(family)
        model = model or pick_representative(family)
        if model is None:
            rows.append(CoverageRow(family, '', 'skipped', note='no buildable model'))
            continue
        rows.append(check_model(model, family, pool=pool, device=device))
    return rows


def _mark(v: bool | None) -> str:
    return 'n/a' if v is None else ('yes' if v else 'NO')


def rows_to_markdown(rows: list[CoverageRow]) -> str:
    """A markdown table of the rows plus a count per status."""
    lines = ['| family | model | status | strided layers converted | output shapes | features_only | state dict | left unconverted / note |',
             '|---|---|---|---|---|---|---|---|']
    for r in rows:
        detail = '; '.join(r.left[:3]) + (f' (+{len(r.left) - 3} more)' if len(r.left) > 3 else '')
        detail = '; '.join(x for x in (detail, r.note) if x)
        detail = re.sub(r'\s+', ' ', detail).replace('|', '/')
        conv = f"{r.converted}/{r.strided}" if r.status != 'skipped' else ''
        lines.append(f"| {r.family} | {r.model} | {r.status} | {conv} | {_mark(r.output) if r.status != 'skipped' else ''} "
                     f"| {_mark(r.features) if r.status != 'skipped' else ''} "
                     f"| {_mark(r.state_dict) if r.status != 'skipped' else ''} | {detail} |")
    counts = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    lines.append('')
    lines.append('Totals: ' + ', '.join(f"{k} {v}" for k, v in sorted(counts.items())))
    return '\n'.join(lines)


def rows_to_dicts(rows: list[CoverageRow]) -> list[dict]:
    """The rows as plain dicts (for JSON)."""
    return [asdict(r) for r in rows]
