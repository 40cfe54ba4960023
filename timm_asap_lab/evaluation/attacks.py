"""Adversarial robustness: FGSM and PGD with the Adversarial Robustness Toolbox (ART), AutoAttack with the
authors' own package.

Inputs are in [0, 1] (the model wrapper normalises), so eps is in units of the pixel range
(e.g. 8/255 for L-inf). Attacks run in float32, on the model's device.

Robust accuracy counts an example only when the model classifies it correctly both clean and under
attack (the RobustBench / AutoAttack convention); examples misclassified when clean are not attacked.

AutoAttack is Croce & Hein's (ICML 2020) ``standard`` version from the PyPI package ``pyautoattack``
(APGD-CE, APGD-T with 9 target classes, FAB-T, Square with 5000 queries, each run on the examples
still robust), for L-inf and L2: the suite RobustBench and the papers report, labelled
"AutoAttack (standard)". Every adversarial example is checked to lie in the eps ball and in [0, 1]
before it counts.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from timm_asap.layers.band import check_choice
from timm_asap_lab.evaluation._deps import require
from timm_asap_lab.evaluation.data import EvalImages
from timm_asap_lab.evaluation.engine import _check_models, adapt_channels, model_in_chans, resolve_device

__all__ = ['ATTACKS', 'NORMS', 'AttackSpec', 'check_eps', 'parse_eps', 'run_attack', 'evaluate_attacks',
           'AUTOATTACK_COMPONENTS']

ATTACKS = ('fgsm', 'pgd', 'autoattack')
NORMS = ('linf', 'l2')
AUTOATTACK_COMPONENTS = ('apgd-ce', 'apgd-t', 'fab-t', 'square')  # the standard version, in order
_ART_NORM = {'linf': np.inf, 'l2': 2}
_TOL = 1e-5


@dataclass(frozen=True)
class AttackSpec:
    """One attack configuration.

    Attributes:
        attack: ``'fgsm'``, ``'pgd'`` or ``'autoattack'``.
        norm: ``'linf'`` or ``'l2'``.
        eps: perturbation budget in [0, 1] pixel units (L2: Euclidean norm over C x H x W).
        steps: PGD iterations (FGSM: ignored; AutoAttack: fixed by the standard version, 100).
        step_size: PGD step (None: ``2.5 * eps / steps``).
        restarts: PGD random starts (0: start at the clean image; n >= 1: n random starts in the
            eps ball, keeping any success).
        square_queries: Square attack queries (AutoAttack: fixed by the standard version, 5000).
    """

    attack: str
    norm: str
    eps: float
    steps: int = 10
    step_size: float | None = None
    restarts: int = 1
    square_queries: int = 5000

    def resolved_step(self) -> float:
        if self.attack == 'fgsm':
            return self.eps
        return self.step_size if self.step_size is not None else 2.5 * self.eps / max(self.steps, 1)


def parse_eps(value) -> float:
    """A number or a fraction string (``'8/255'``) as float."""
    if isinstance(value, str):
        value = value.strip()
        if '/' in value:
            num, den = value.split('/', 1)
            return float(num) / float(den)
    return float(value)


def check_eps(eps: float, norm: str, shape: Sequence[int]) -> float:
    """Validate an eps for a norm and an image shape (C, H, W).

    Raises:
        ValueError: unknown norm; eps negative, not finite, or beyond the largest possible
            perturbation of a [0, 1] image (L-inf: 1; L2: sqrt(C H W)).
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; allowed: {list(NORMS)}")
    eps = float(eps)
    limit = 1.0 if norm == 'linf' else math.sqrt(float(np.prod(shape)))
    if not math.isfinite(eps) or eps < 0 or eps > limit:
        raise ValueError(f"eps for {norm} must be in [0, {limit:.4g}] (inputs are in [0, 1]), got {eps}")
    return eps


def _check_spec(spec: AttackSpec, shape) -> None:
    check_choice('attack', spec.attack, ATTACKS)
    check_eps(spec.eps, spec.norm, shape)
    if spec.steps < 1:
        raise ValueError(f"attack steps must be >= 1, got {spec.steps}")
    if spec.restarts < 0:
        raise ValueError(f"attack restarts must be >= 0, got {spec.restarts}")
    if spec.step_size is not None and not spec.step_size > 0:
        raise ValueError(f"attack step_size must be > 0, got {spec.step_size}")
    if spec.square_queries < 1:
        raise ValueError(f"square_queries must be >= 1, got {spec.square_queries}")


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed numpy's and torch's global generators (ART draws from them) and restore them afterwards."""
    np_state = np.random.get_state()
    torch_state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def _drop_inference_caches() -> None:
    """Drop the spectral pooling layers' cached matrices before attacks.

    Matrices first built under ``torch.inference_mode()`` (e.g. by a validation pass elsewhere in the
    process) are inference tensors that autograd refuses to use; rebuilding them costs microseconds.
    """
    from timm_asap.layers import clear_cache
    clear_cache()


class _ChannelAdapter(nn.Module):
    """Repeats grey inputs to the model's channel count (so attacks perturb the grey image)."""

    def __init__(self, model: nn.Module, in_chans: int | None):
        super().__init__()
        self.model = model
        self.in_chans = in_chans

    def forward(self, x):
        out = self.model(adapt_channels(x, self.in_chans))
        return out[0] if isinstance(out, (tuple, list)) else out


def _classifier(model: nn.Module, shape, nb_classes: int, device: torch.device):
    estimators = require('art.estimators.classification', 'adversarial attacks')
    in_chans = model_in_chans(model)
    net = _ChannelAdapter(model, in_chans if in_chans != shape[0] else None).eval()
    return estimators.PyTorchClassifier(
        model=net, loss=nn.CrossEntropyLoss(), input_shape=tuple(shape), nb_classes=nb_classes,
        clip_values=(0.0, 1.0), device_type='gpu' if device.type == 'cuda' else 'cpu')


@torch.no_grad()
def _logits(model: nn.Module, x: np.ndarray, device: torch.device, batch_size: int) -> torch.Tensor:
    chans = model_in_chans(model)
    out = []
    for start in range(0, len(x), batch_size):
        xb = torch.from_numpy(x[start:start + batch_size]).to(device).float()
        logits = model(adapt_channels(xb, chans))
        out.append((logits[0] if isinstance(logits, (tuple, list)) else logits).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def _within(x_adv: np.ndarray, x: np.ndarray, spec: AttackSpec) -> np.ndarray:
    delta = (x_adv - x).reshape(len(x), -1).astype(np.float64)
    size = np.abs(delta).max(axis=1) if spec.norm == 'linf' else np.sqrt((delta ** 2).sum(axis=1))
    in_box = (x_adv >= -_TOL).reshape(len(x), -1).all(axis=1) & (x_adv <= 1 + _TOL).reshape(len(x), -1).all(axis=1)
    return (size <= spec.eps + _TOL) & in_box


def _autoattack_robust(model: nn.Module, x: np.ndarray, y: np.ndarray, spec: AttackSpec, shape, device: torch.device,
                       batch_size: int, seed: int) -> np.ndarray:
    """Croce & Hein's standard AutoAttack (``pyautoattack``): which examples stay correct under it."""
    aa = require('pyautoattack', 'AutoAttack')
    in_chans = model_in_chans(model)
    net = _ChannelAdapter(model, in_chans if in_chans != shape[0] else None).eval()
    classes = int(_logits(model, x[:1], device, 1).shape[1])
    if classes < 4:
        raise ValueError(f"AutoAttack's targeted attacks (APGD-T, FAB-T) need at least 4 classes, the model has {classes}")
    attack = aa.AutoAttack(net, norm={'linf': 'Linf', 'l2': 'L2'}[spec.norm], eps=spec.eps, version='standard',
                           device=device, seed=seed)
    attack.verbose = False
    # the standard version targets the 9 highest wrong classes (all of CIFAR-10's); fewer classes have fewer
    attack.apgd_targeted.n_target_classes = attack.fab.n_target_classes = min(9, classes - 1)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    with torch.autocast(device.type, enabled=False):  # attacks run in float32
        x_adv, _ = attack.run_standard_evaluation(x_t, y_t, batch_size=batch_size)
    x_adv = x_adv.detach().cpu().numpy().astype(np.float32)
    pred = _logits(model, x_adv, device, batch_size).argmax(1).numpy()
    return ~(_within(x_adv, x, spec) & (pred != y))


def run_attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, spec: AttackSpec, batch_size: int = 128,
               seed: int = 0, device='auto', progress: bool = False) -> dict:
    """Attack one model on a batch of images.

    Args:
        model: classifier taking [0, 1] inputs, in eval mode.
        images: (N, C, H, W) uint8 or float in [0, 1].
        labels: (N,) int labels.
        spec: the attack.
        batch_size: attack batch size.
        seed: seed of the attack's randomness.
        device: ``'auto'``, ``'cpu'``, ``'cuda'``.
        progress: show ART's progress bars.

    Returns:
        ``{'clean_correct': bool array, 'robust_correct': bool array, 'components': []}`` (``components``
        is kept for compatibility; the standard AutoAttack reports only its final result).

    Raises:
        ValueError: invalid attack settings, a model in training mode, or no images.
        ImportError: ART (or, for AutoAttack, ``pyautoattack``) is not installed.
    """
    _check_models([('model', model)])
    if len(images) == 0:
        raise ValueError("no images to attack")
    shape = tuple(images.shape[1:])
    _check_spec(spec, shape)
    evasion = require('art.attacks.evasion', 'adversarial attacks')
    device = resolve_device(device)
    model = model.to(device)
    _drop_inference_caches()
    x = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    x = x.cpu().numpy().astype(np.float32)
    y = labels.cpu().numpy().astype(np.int64)
    clean_logits = _logits(model, x, device, batch_size)
    nb_classes = clean_logits.shape[1]
    clean_correct = (clean_logits.argmax(1).numpy() == y)
    robust = clean_correct.copy()
    classifier = _classifier(model, shape, nb_classes, device)
    norm = _ART_NORM[spec.norm]

    def attack_points(attack, idx, y_target=None):
        """Run ``attack`` on the examples ``idx``; mark those it breaks (within the eps ball) as not robust."""
        if len(idx) == 0:
            return
        x_sub = x[idx]
        x_adv = attack.generate(x_sub, y=y[idx] if y_target is None else y_target).astype(np.float32)
        ok = _within(x_adv, x_sub, spec)
        pred = _logits(model, x_adv, device, batch_size).argmax(1).numpy()
        broken = ok & (pred != y[idx])
        robust[idx[broken]] = False

    with _seeded(seed):
        if spec.eps == 0 and spec.attack == 'autoattack':
            pass  # a zero budget leaves every image unchanged: robust == clean (ART's APGD rejects eps=0)
        elif spec.attack == 'fgsm':
            # eps_step is only used by ART's 'minimal' mode; it must be positive even for eps=0
            attack_points(evasion.FastGradientMethod(classifier, norm=norm, eps=spec.eps, eps_step=max(spec.eps, 1e-12),
                                                     targeted=False, num_random_init=0, batch_size=batch_size),
                          np.flatnonzero(robust))
        elif spec.attack == 'pgd':
            attack_points(evasion.ProjectedGradientDescent(
                classifier, norm=norm, eps=spec.eps, eps_step=max(spec.resolved_step(), 1e-12), max_iter=spec.steps,
                targeted=False, num_random_init=spec.restarts, batch_size=batch_size, verbose=progress),
                np.flatnonzero(robust))
        else:
            robust &= _autoattack_robust(model, x, y, spec, shape, device, batch_size, seed)
    return {'clean_correct': clean_correct, 'robust_correct': robust, 'components': []}


def evaluate_attacks(
        models: Sequence[tuple[str, nn.Module]],
        data: EvalImages,
        specs: Sequence[AttackSpec],
        count: int | None = None,
        batch_size: int = 128,
        seed: int = 0,
        device='auto',
        progress: bool = True,
) -> list[dict]:
    """Robust accuracy of each model under each attack spec, on the first ``count`` images of ``data``.

    Returns:
        One row per (model, spec): ``task='attack'``, ``attack``, ``norm``, ``eps``, ``steps``,
        ``step_size``, ``restarts``, ``clean_top1`` and ``robust_top1`` (in %, on the attacked
        examples), ``count``, ``library`` (package and version; AutoAttack: ``pyautoattack <version>
        (standard)``).

    Raises:
        ValueError: invalid specs (checked before any attack runs), no models, a model in training mode.
        ImportError: ART is not installed.
    """
    _check_models(models)
    if len(data) == 0:
        raise ValueError("no evaluation images")
    for spec in specs:
        _check_spec(spec, data.shape)
    n = len(data) if count is None else min(count, len(data))
    if n < 1:
        raise ValueError(f"attack example count must be >= 1, got {count}")
    images, labels = data.images[:n], data.labels[:n]
    art = require('art', 'adversarial attacks')
    libraries = {'fgsm': f'adversarial-robustness-toolbox {art.__version__}',
                 'pgd': f'adversarial-robustness-toolbox {art.__version__}'}
    if any(spec.attack == 'autoattack' for spec in specs):
        libraries['autoattack'] = f"pyautoattack {require('pyautoattack', 'AutoAttack').__version__} (standard)"
    rows = []
    total = len(models) * len(specs)
    bar = tqdm(total=total, desc='attacks', disable=not progress, leave=False)
    for name, model in models:
        for spec in specs:
            bar.set_postfix_str(f'{name} {spec.attack}-{spec.norm} eps={spec.eps:.4g}')
            res = run_attack(model, images, labels, spec, batch_size, seed, device)
            base = {'task': 'attack', 'model': name, 'count': n, 'library': libraries[spec.attack],
                    **{k: v for k, v in asdict(spec).items() if k != 'square_queries'},
                    'step_size': spec.resolved_step() if spec.attack != 'autoattack' else None,
                    'clean_top1': 100.0 * float(res['clean_correct'].mean())}
            if spec.attack == 'autoattack':
                base.update(version='standard', components=list(AUTOATTACK_COMPONENTS), steps=100,
                            square_queries=5000, restarts=1)
            rows.append({**base, 'component': None, 'robust_top1': 100.0 * float(res['robust_correct'].mean())})
            bar.update(1)
    bar.close()
    return rows
