"""Shift consistency (Zhang, ICML 2019) and a per-layer aliasing view.

Shift consistency: the probability that the top-1 class is the same for two random shifts of the
same image. Shifts are circular (``torch.roll``, no border effects; the default) or crops of size
``H - max_shift`` at two random offsets (Zhang's ImageNet protocol, which needs images loaded
``max_shift`` pixels larger than the model's input). The curve view gives the agreement with the
unshifted prediction for diagonal shifts 0..max_shift.

Aliasing view: for every layer that reduces the spatial size (strided convolutions and pools,
ASAP/FLC/BlurPool layers), with ``x`` the layer's input, ``x_low`` its ideal low-pass (the
frequencies the output grid can hold: ``|k| < n_out / 2`` per axis, with the FFT of ``x``) and
``L`` the layer:

* ``input_high_energy`` = ||x - x_low||^2 / ||x - mean(x)||^2, the share of the input's energy above
  the new Nyquist frequency (what must be removed before subsampling), and
* ``output_alias_energy`` = ||L(x) - L(x_low)||^2 / ||L(x) - mean(L(x))||^2, the share of the
  output's energy produced by those frequencies.

Energies leave out each feature map's mean (its DC term), so the fractions do not depend on
brightness or biases. For a linear downsampler this is exactly the aliased part (an
  ideal alias-free downsampler gives 0); for max pooling it also contains the non-linear mixing of
  high frequencies into low ones.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from timm_asap.layers.band import check_choice
from timm_asap_lab.evaluation.data import EvalImages
from timm_asap_lab.evaluation.engine import (_check_models, adapt_channels, model_in_chans, predict_logits,
                                             resolve_device)

__all__ = ['SHIFT_MODES', 'shift_images', 'evaluate_shift_consistency', 'aliasing_view', 'lowpass']

SHIFT_MODES = ('circular', 'crop')


def shift_images(x: torch.Tensor, dh: torch.Tensor, dw: torch.Tensor, mode: str, max_shift: int) -> torch.Tensor:
    """Shift each image of a batch by its own offset.

    Args:
        x: (N, C, H, W).
        dh: (N,) integer row offsets in [0, max_shift].
        dw: (N,) integer column offsets.
        mode: ``'circular'`` (roll by the offsets; output H x W) or ``'crop'`` (window of size
            (H - max_shift, W - max_shift) starting at the offsets).
        max_shift: the largest offset.

    Shape:
        - Output: (N, C, H, W) for circular, (N, C, H - max_shift, W - max_shift) for crop.
    """
    n, _, h, w = x.shape
    if check_choice('shift mode', mode, SHIFT_MODES) == 'circular':
        rows = (torch.arange(h).view(1, h) - dh.view(n, 1)) % h
        cols = (torch.arange(w).view(1, w) - dw.view(n, 1)) % w
    else:  # 'crop'
        rows = torch.arange(h - max_shift).view(1, -1) + dh.view(n, 1)
        cols = torch.arange(w - max_shift).view(1, -1) + dw.view(n, 1)
    batch = torch.arange(n).view(n, 1, 1)
    out = x.permute(0, 2, 3, 1)[batch, rows.view(n, -1, 1), cols.view(n, 1, -1)]
    return out.permute(0, 3, 1, 2).contiguous()


def evaluate_shift_consistency(
        models: Sequence[tuple[str, nn.Module]],
        data: EvalImages,
        trials: int = 5,
        max_shift: int | None = None,
        mode: str = 'circular',
        curve: bool = True,
        seed: int = 0,
        batch_size: int = 128,
        device='auto',
        amp: str = 'auto',
        progress: bool = True,
) -> list[dict]:
    """Shift consistency of each model on the same images and shifts.

    Args:
        models: (name, model) pairs in eval mode, taking [0, 1] inputs.
        data: the images.
        trials: random shift pairs per image.
        max_shift: largest offset in pixels (None: a quarter of the image height).
        mode: ``'circular'`` or ``'crop'``.
        curve: also compute the agreement with the unshifted prediction for diagonal shifts 0..max_shift
            (circular mode; in crop mode relative to the crop at offset 0).
        seed: seed of the random offsets.
        batch_size: images per batch.
        device: device.
        amp: AMP setting.
        progress: progress bar.

    Returns:
        One ``task='shift'`` row per model (``consistency`` and ``shifted_top1`` in %, ``trials``,
        ``max_shift``, ``mode``) and, with ``curve``, ``task='shift_curve'`` rows (``shift``,
        ``agreement``, ``top1``).

    Raises:
        ValueError: trials < 1, a max_shift that is negative or leaves no image, an unknown mode.
    """
    _check_models(models)
    if len(data) == 0:
        raise ValueError("no evaluation images")
    if trials < 1:
        raise ValueError(f"shift trials must be >= 1, got {trials}")
    check_choice('shift mode', mode, SHIFT_MODES)
    h, w = data.images.shape[-2:]
    max_shift = max(1, h // 4) if max_shift is None else int(max_shift)
    if max_shift < 1 or max_shift >= min(h, w):
        raise ValueError(f"max_shift must be in [1, {min(h, w) - 1}] for {h}x{w} images, got {max_shift}")
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    n = len(data)
    offsets = torch.randint(0, max_shift + 1, (trials, 4, n), generator=gen)
    moved = [(name, model.to(device), model_in_chans(model)) for name, model in models]
    agree = {name: 0 for name, _ in models}
    correct = {name: 0 for name, _ in models}
    shifts = list(range(max_shift + 1)) if curve else []
    curve_agree = {(name, d): 0 for name, _ in models for d in shifts}
    curve_correct = {(name, d): 0 for name, _ in models for d in shifts}
    steps = trials + len(shifts)
    bar = tqdm(total=steps * ((n + batch_size - 1) // batch_size), desc='shift consistency', disable=not progress,
               leave=False)
    for start in range(0, n, batch_size):
        x = data.images[start:start + batch_size]
        y = data.labels[start:start + batch_size]
        sl = slice(start, start + len(x))
        for t in range(trials):
            o = offsets[t][:, sl]
            xa = shift_images(x, o[0], o[1], mode, max_shift)
            xb = shift_images(x, o[2], o[3], mode, max_shift)
            for name, model, chans in moved:
                pa = predict_logits(model, xa, device, amp, chans).argmax(1)
                pb = predict_logits(model, xb, device, amp, chans).argmax(1)
                agree[name] += int((pa == pb).sum())
                correct[name] += int((pa == y).sum()) + int((pb == y).sum())
            bar.update(1)
        if shifts:
            zero = torch.zeros(len(x), dtype=torch.long)
            refs = {name: predict_logits(model, shift_images(x, zero, zero, mode, max_shift), device, amp, chans).argmax(1)
                    for name, model, chans in moved}
            for d in shifts:
                dd = torch.full((len(x),), d, dtype=torch.long)
                xs = shift_images(x, dd, dd, mode, max_shift)
                for name, model, chans in moved:
                    p = predict_logits(model, xs, device, amp, chans).argmax(1)
                    curve_agree[(name, d)] += int((p == refs[name]).sum())
                    curve_correct[(name, d)] += int((p == y).sum())
                bar.update(1)
    bar.close()
    rows = []
    for name, _ in models:
        rows.append({'task': 'shift', 'model': name, 'count': n, 'trials': trials, 'max_shift': max_shift, 'mode': mode,
                     'consistency': 100.0 * agree[name] / (n * trials),
                     'shifted_top1': 100.0 * correct[name] / (2 * n * trials)})
        for d in shifts:
            rows.append({'task': 'shift_curve', 'model': name, 'count': n, 'shift': d, 'mode': mode,
                         'agreement': 100.0 * curve_agree[(name, d)] / n, 'top1': 100.0 * curve_correct[(name, d)] / n})
    return rows


def lowpass(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Ideal low-pass of (N, C, H, W) keeping the frequencies an (out_h, out_w) grid holds (|k| < n_out / 2)."""
    h, w = x.shape[-2:]
    kh = torch.fft.fftfreq(h, d=1.0 / h, device=x.device).abs()
    kw = torch.fft.fftfreq(w, d=1.0 / w, device=x.device).abs()
    mask = (kh < out_h / 2).view(h, 1) & (kw < out_w / 2).view(1, w)
    spec = torch.fft.fft2(x.double())
    return torch.fft.ifft2(spec * mask).real.to(x.dtype)


def _energy(t: torch.Tensor) -> float:
    return float(t.double().pow(2).sum())


def _ac_energy(t: torch.Tensor) -> float:
    """Energy without each map's mean (the DC term), so fractions do not depend on brightness or bias."""
    t = t.double()
    return float((t - t.mean(dim=(-2, -1), keepdim=True)).pow(2).sum())


def _is_downsampling(inp, out) -> bool:
    return (isinstance(inp, torch.Tensor) and isinstance(out, torch.Tensor) and inp.ndim == 4 and out.ndim == 4
            and (out.shape[-2] < inp.shape[-2] or out.shape[-1] < inp.shape[-1])
            and out.shape[-2] * out.shape[-1] > 1)


@torch.no_grad()
def aliasing_view(models: Sequence[tuple[str, nn.Module]], data: EvalImages, count: int = 16,
                  device='auto', progress: bool = True) -> list[dict]:
    """Energy above the new Nyquist frequency before, and aliased energy after, every downsampling layer.

    Layers are the leaf modules whose output is spatially smaller than their input (global pools
    with a 1x1 output are left out), found with forward hooks on the first ``count`` images.

    Returns:
        One ``task='aliasing'`` row per (model, layer): ``layer`` (module path), ``layer_type``,
        ``index`` (order of execution), ``in_shape``/``out_shape`` (C x H x W), ``input_high_energy``
        and ``output_alias_energy`` (energy fractions, normally in [0, 1]).

    Raises:
        ValueError: no models, a model in training mode, no images.
    """
    _check_models(models)
    n = min(count, len(data))
    if n < 1:
        raise ValueError("no evaluation images for the aliasing view")
    device = resolve_device(device)
    rows = []
    for name, model in tqdm(models, desc='aliasing view', disable=not progress, leave=False):
        model = model.to(device)
        x = adapt_channels(data.images[:n].to(device).float().div(255), model_in_chans(model))
        captured: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []
        handles = []

        def hook(mod, args, out, path=None):
            if len(args) == 1 and _is_downsampling(args[0], out):
                captured.append((path, mod, args[0].detach(), out.detach()))

        for path, module in model.named_modules():
            if next(module.children(), None) is None:
                handles.append(module.register_forward_hook(lambda m, a, o, p=path: hook(m, a, o, p)))
        try:
            model(x)
        finally:
            for hd in handles:
                hd.remove()
        for index, (path, module, inp, out) in enumerate(captured):
            inp = inp.float()
            low = lowpass(inp, out.shape[-2], out.shape[-1])
            out_low = module(low.to(inp.dtype)).float()
            in_energy = _ac_energy(inp)
            out_energy = _ac_energy(out.float())
            rows.append({
                'task': 'aliasing', 'model': name, 'count': n, 'index': index, 'layer': path,
                'layer_type': type(module).__name__,
                'in_shape': 'x'.join(str(s) for s in inp.shape[1:]),
                'out_shape': 'x'.join(str(s) for s in out.shape[1:]),
                'input_high_energy': _energy(inp - low) / in_energy if in_energy > 0 else 0.0,
                'output_alias_energy': _energy(out.float() - out_low) / out_energy if out_energy > 0 else 0.0,
            })
    return rows
