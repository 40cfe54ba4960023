"""The Fashion-MNIST robustness study: baseline vs FLC vs ASAP, trained, evaluated, published, reloaded.

For each CIFAR-size family the baseline and its ``_flc`` and ``_asap`` variants are trained with the
same recipe and seed (the shipped ``resnet18_cifar.fmnist`` recipe), evaluated side by side on the
same test images (clean, the 15 corruptions x 5 severities, FGSM/PGD at several eps, shift
consistency; every number with its standard error), written as Hub folders (dry run, no network) and
loaded back by name to check that the published weights give the trained model's logits. Everything
lands under one output folder; re-running resumes finished work.

Presets (:data:`PRESETS`) size the work to the machine; each prints what it runs and its expected time
(measured on the spot: a few training and inference steps of each model, see :func:`estimate`):

* ``default``: a reduced-width pre-activation ResNet-18 (``preactresnet18`` with channels 8-16-32-64,
  0.18 M parameters, 8.7 MMAC per 32x32 image) on 30k of the 60k training images, one seed, with the
  ASAP conversion arm and smaller corruption and attack samples: under 15 minutes on a 2-core CPU.
* ``cpu``: the same family on all 60k images, 3 seeds, more epochs, the full conversion arm: about
  2.5 hours on 2 cores.
* ``gpu``: ``resnet18_cifar`` x 3 seeds: minutes on one H100-class GPU.
* ``full``: all three paper families, 3 seeds, the recipe's 20 epochs (more GPU time).

The corrupted test sets are made once per run (cached under ``<output>/eval_cache``) and shared by
every model and seed: all seeds are evaluated on the same images with the same corruption draws.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import statistics
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from timm_asap._files import atomic_path, atomic_write_text
from timm_asap.models.weight_tags import HUB_ORG
from timm_asap_lab.config import RunConfig, apply_overrides, load_config
from timm_asap_lab.evaluation.summary import standard_error
from timm_asap_lab.files import check_folder_path, check_output_folder, folder_lock
from timm_asap_lab.runtime import amp_context, resolve_amp, resolve_device
from timm_asap_lab.study_conversion import (Arm, arm_config, conversion_arms, converted_model, cost_rows, cost_table,
                                            goal_check, repaired_model)

__all__ = ['StudyOptions', 'Family', 'FAMILIES', 'VARIANT_SUFFIXES', 'PRESETS', 'preset_options', 'default_options',
           'full_options', 'run_study', 'study_table', 'estimate', 'convergence']

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """One network family of the study: a registered baseline built with ``model_args``, trained with its
    ``_flc`` and ``_asap`` variants.

    Attributes:
        name: the label of the family in folders, tables and Hub repository names.
        architecture: the registered baseline name (``<architecture>_flc`` / ``_asap`` are its variants).
        model_args: ``timm.create_model`` keyword arguments (recorded in the run config and config.json).
        description: size in words.
    """

    name: str
    architecture: str
    model_args: dict = field(default_factory=dict)
    description: str = ''

    def variants(self) -> list[tuple[str, str]]:
        """(label, registered architecture) of the baseline, FLC and ASAP models."""
        return [(self.name + suffix, self.architecture + suffix) for suffix in VARIANT_SUFFIXES]


VARIANT_SUFFIXES = ('', '_flc', '_asap')  # baseline, FLC, ASAP
_SMALL = Family('preactresnet18_w8', 'preactresnet18', {'channels': [8, 16, 32, 64], 'stem_chs': 8},
                'pre-activation ResNet-18 at 1/8 width: 0.18 M parameters, 8.7 MMAC per 32x32 grey image')
FAMILIES: dict[str, Family] = {f.name: f for f in (
    _SMALL,
    Family('resnet18_cifar', 'resnet18_cifar', {}, 'CIFAR ResNet-18: 11.2 M parameters, 0.56 GMAC per image'),
    Family('preactresnet18', 'preactresnet18', {}, 'pre-activation ResNet-18: 11.2 M parameters, 0.56 GMAC'),
    Family('wide_resnet28_10', 'wide_resnet28_10', {}, 'Wide ResNet 28-10: 36.5 M parameters, 5.2 GMAC'),
)}
RECIPE = 'resnet18_cifar.fmnist'          # the shipped config every model of the study is trained with
RECIPE_BATCH = 128                        # the recipe's batch size; its lr (0.05) is scaled linearly with the batch


@dataclass
class StudyOptions:
    """What the study runs.

    Attributes:
        output_dir: the folder holding every artefact.
        preset: the preset these options came from (recorded; see :data:`PRESETS`).
        families: names of :data:`FAMILIES`; each is trained as baseline, ``_flc`` and ``_asap``.
        seeds: training seeds (results are reported as mean and spread over them).
        epochs: training epochs (None: the recipe's).
        train_subset: training images (None: all 60k).
        val_subset: test images used for validation after each epoch (the plateau check; None: all 10k).
        batch_size: training batch size (None: the recipe's, 128); the learning rate is scaled with it.
        eval_count: test images for clean accuracy (None: all 10k).
        corruption_count: of those, the images corrupted (the first ones; each of 15 x 5 sets).
        attack_count: of those, the images attacked.
        shift_count: of those, the images of the shift-consistency pass.
        severities: corruption severities.
        eps: L-inf eps (in [0, 1] pixel units) for FGSM and PGD.
        pgd_steps: PGD iterations.
        shift_trials: random shift pairs per image.
        amp: precision of the clean, corruption and shift passes (``'auto'``: follows the hardware through
            :func:`timm_asap_lab.runtime.resolve_amp`, bf16 on CUDA and CPUs with native bf16, float32
            elsewhere); attacks always run in float32.
        data_dir: Fashion-MNIST IDX folder (None: Debian's, else a torchvision download).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        workers: DataLoader workers (0 on a small CPU: loading in the main process leaves the cores to
            the model).
        eval_batch_size: images per evaluation forward pass.
        max_seconds: time available (None: no limit); when the expected time is longer, fewer seeds run
            (at least one) and the output says so.
        progress: progress bars.
        full: the complete recipe (recorded in the outputs).
        convert_pools: poolings of the conversion arm (:mod:`timm_asap_lab.study_conversion`): each seed's
            trained baseline converted to them; empty: no conversion arm.
        convert_positions: where the arm's pooling goes for strided convolutions (``'before'``: the
            paper's placement; ``'after'``: the op at stride 1, then the pooling).
        convert_epochs: fine-tuning lengths of the arm (each a run of its own, cosine schedule to 0).
        convert_distill: fine-tune without (False) and/or with (True) distillation from the baseline.
        convert_lr: the arm's fine-tuning learning rate (peak, no warm-up), at the study's batch size.
        repair_images: unlabeled training images the ``repaired`` arm re-estimates BatchNorm statistics on.
    """

    output_dir: str = 'study_output'
    preset: str = 'default'
    families: list[str] = field(default_factory=lambda: [_SMALL.name])
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: int | None = 3
    train_subset: int | None = None
    val_subset: int | None = 2000
    batch_size: int | None = 128
    eval_count: int | None = None
    corruption_count: int = 1000
    attack_count: int = 500
    shift_count: int = 1000
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    eps: list[float] = field(default_factory=lambda: [1 / 255, 2 / 255, 4 / 255])
    pgd_steps: int = 10
    shift_trials: int = 2
    amp: str = 'auto'
    data_dir: str | None = None
    device: str = 'auto'
    workers: int = 0
    eval_batch_size: int = 256
    max_seconds: float | None = None
    progress: bool = True
    full: bool = False
    convert_pools: list[str] = field(default_factory=lambda: ['asap'])
    convert_positions: list[str] = field(default_factory=lambda: ['before'])
    convert_epochs: list[int] = field(default_factory=lambda: [1])
    convert_distill: list[bool] = field(default_factory=lambda: [False])
    convert_lr: float = 0.01
    repair_images: int = 2000

    def validate(self) -> StudyOptions:
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown or not self.families:
            raise ValueError(f"families must be a non-empty subset of {list(FAMILIES)}, got {self.families}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        for key in ('epochs', 'train_subset', 'val_subset', 'batch_size', 'eval_count'):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be >= 1 or None, got {value}")
        for key in ('corruption_count', 'attack_count', 'shift_count', 'pgd_steps', 'eval_batch_size'):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        resolve_amp('cpu', self.amp)  # raises naming the allowed precisions
        if self.shift_trials < 0:
            raise ValueError(f"shift_trials must be >= 0, got {self.shift_trials}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0 or None, got {self.max_seconds}")
        if any(not 0 <= e <= 1 for e in self.eps):
            raise ValueError(f"eps must lie in [0, 1] (pixel units), got {self.eps}")
        check_folder_path(self.output_dir, 'output folder')
        self._validate_conversion()
        # severities, counts, precision: as the evaluation will check them
        from timm_asap_lab.evaluation import EvalOptions
        EvalOptions.from_dict(_eval_options(self, torch.device('cpu'), Path(self.output_dir) / 'eval_cache')).validate()
        return self


    def _validate_conversion(self) -> None:
        from timm_asap.models import POOL_POSITIONS

        for key, allowed in (('convert_pools', ('asap', 'flc')), ('convert_positions', POOL_POSITIONS),
                             ('convert_distill', (False, True))):
            values = getattr(self, key)
            if any(v not in allowed for v in values) or len(set(values)) != len(values):
                raise ValueError(f"{key} must be distinct values of {list(allowed)}, got {values}")
        if any(not isinstance(e, int) or e < 1 for e in self.convert_epochs) or \
                len(set(self.convert_epochs)) != len(self.convert_epochs):
            raise ValueError(f"convert_epochs must be distinct integers >= 1, got {self.convert_epochs}")
        if self.convert_pools and not (self.convert_positions and self.convert_distill):
            raise ValueError("a conversion arm needs at least one of convert_positions and of convert_distill")
        if not self.convert_lr > 0:
            raise ValueError(f"convert_lr must be > 0, got {self.convert_lr}")
        if self.repair_images < 1:
            raise ValueError(f"repair_images must be >= 1, got {self.repair_images}")


#: preset name -> (what it is for, its options). ``default`` is the README's main command.
PRESETS: dict[str, tuple[str, dict]] = {
    'default': ('a real result in minutes on a 2-core CPU: the small family on 30k of the 60k training images, '
                'one seed, the ASAP conversion arm, 500 corrupted and 300 attacked test images',
                dict(train_subset=30000, corruption_count=500, attack_count=300)),
    'cpu': ('at most 2.5 hours on 2 CPU cores: the small family, 3 seeds (fewer when the measured estimate says 3 '
            'do not fit), trained to a plateau, and the conversion arm (ASAP and FLC pooling after the strided '
            'convolutions; 1 and 2 epochs of fine-tuning, without and with distillation)',
            dict(seeds=[0, 1, 2], epochs=5, max_seconds=9000.0, convert_pools=['asap', 'flc'],
                 convert_positions=['after'], convert_epochs=[1, 2], convert_distill=[False, True])),
    'gpu': ('minutes on one H100-class GPU: resnet18_cifar (baseline, FLC, ASAP) x 3 seeds, full evaluation',
            dict(families=['resnet18_cifar'], seeds=[0, 1, 2], epochs=6, batch_size=512, val_subset=None,
                 corruption_count=2000, attack_count=1000, shift_count=10000, shift_trials=5, workers=8,
                 eval_batch_size=1024)),
    'full': ('the complete recipe (well over an hour on one GPU): 3 families x 3 seeds x 20 epochs',
             dict(families=['resnet18_cifar', 'preactresnet18', 'wide_resnet28_10'], seeds=[0, 1, 2], epochs=None,
                  val_subset=None, batch_size=None, corruption_count=10000, attack_count=1000, shift_count=10000, shift_trials=5,
                  workers=8, eval_batch_size=1024, full=True)),
}


def preset_options(name: str = 'default', **overrides) -> StudyOptions:
    """The options of a preset, with ``overrides`` applied.

    Raises:
        ValueError: an unknown preset (naming the presets), or invalid overrides.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return StudyOptions(**{'preset': name, **PRESETS[name][1], **overrides}).validate()


def default_options(**overrides) -> StudyOptions:
    """The ``default`` preset (the README's main command)."""
    return preset_options('default', **overrides)


def full_options(**overrides) -> StudyOptions:
    """``--full``: all three paper families, 3 seeds, all 60k training images, the recipe's epochs."""
    return preset_options('full', **overrides)


def _stage(message: str) -> None:
    print(f"[study] {message}", flush=True)


def locate_data(data_dir: str | None) -> tuple[str, str]:
    """Find (or download) Fashion-MNIST; returns (folder, a sentence saying where it came from)."""
    from timm_asap_lab.data import DEFAULT_FASHION_MNIST_DIR, FashionMNIST, find_fashion_mnist

    if data_dir is None and find_fashion_mnist(DEFAULT_FASHION_MNIST_DIR, 'train') is not None:
        return DEFAULT_FASHION_MNIST_DIR, f"Debian's dataset-fashion-mnist ({DEFAULT_FASHION_MNIST_DIR})"
    ds = FashionMNIST(data_dir, split='test', download=True)  # raises a DataError naming what is missing
    FashionMNIST(str(ds.root), split='train', download=True)
    source = 'the given folder' if data_dir is not None else "torchvision's download"
    return str(ds.root), f"{source} ({ds.root})"


def study_config(label: str, arch: str, family: Family, seed: int, opts: StudyOptions, data_dir: str) -> RunConfig:
    """The shared recipe with the architecture, pooling, seed and the size options of the study applied."""
    base = load_config(RECIPE)
    pool = 'asap' if arch.endswith('_asap') else 'flc' if arch.endswith('_flc') else 'none'
    overrides = [f"model.architecture={arch}", f"model.pool={pool}", f"train.seed={seed}",
                 f"data.data_dir={data_dir}", f"data.workers={opts.workers}",
                 f"data.train_subset={'null' if opts.train_subset is None else opts.train_subset}",
                 f"data.val_subset={'null' if opts.val_subset is None else opts.val_subset}",
                 f"hub.repo_id={HUB_ORG}/{label}.fmnist"]
    if opts.epochs is not None:
        overrides.append(f"train.epochs={opts.epochs}")
        overrides.append(f"train.warmup_epochs={min(base.train.warmup_epochs, max(0, opts.epochs - 1))}")
    if opts.batch_size is not None:
        overrides.append(f"train.batch_size={opts.batch_size}")
        overrides.append(f"train.lr={base.train.lr * opts.batch_size / RECIPE_BATCH:g}")
    if family.model_args:
        overrides.append(f"model.model_args={json.dumps({**base.model.model_args, **family.model_args})}")
    return apply_overrides(base, overrides)


def _json_dump(path: Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=str))


EVAL_SEED = 0  # every training seed is evaluated on the same images, corruption draws, attack starts and shifts


def _eval_options(opts: StudyOptions, device: torch.device, cache_dir: Path) -> dict:
    return dict(count=opts.eval_count, seed=EVAL_SEED, batch_size=opts.eval_batch_size, workers=opts.workers,
                device=device.type, corruptions='benchmark', severities=list(opts.severities),
                corruption_protocol='cifar', corruption_count=opts.corruption_count, corruption_cache=str(cache_dir),
                fgsm_eps=list(opts.eps), pgd_linf_eps=list(opts.eps), pgd_steps=opts.pgd_steps,
                attack_count=opts.attack_count, shift_count=opts.shift_count, shift_trials=opts.shift_trials,
                shift_curve=opts.full, amp=opts.amp, progress=opts.progress)


def _headline(rows: list[dict]) -> dict[str, dict[str, tuple[float, int | None]]]:
    """Per model: (value in %, images it was measured on) of clean top-1, mean corruption accuracy, mCE,
    attack accuracies and shift consistency."""
    out: dict[str, dict[str, tuple[float, int | None]]] = {}
    for r in rows:
        m = out.setdefault(r['model'], {})
        task, n = r.get('task'), r.get('count')
        if task == 'clean':
            m['clean top-1'] = (r['top1'], n)
        elif task == 'corruption_summary' and r.get('corruption') == 'mean':
            m['corruption mCA'] = (r['mca'], n)
            if r.get('mce') is not None:
                m['mCE'] = (r['mce'], None)
        elif task == 'attack' and r.get('component') is None:
            m[f"{r['attack']} eps={r['eps'] * 255:g}/255"] = (r['robust_top1'], n)
        elif task == 'shift':
            m['shift consistency'] = (r['consistency'], n)
    return out


def study_table(per_seed: dict[int, list[dict]]) -> tuple[str, list[dict]]:
    """Mean (and std over seeds) of every headline metric with its standard error, as Markdown and as rows."""
    heads = {seed: _headline(rows) for seed, rows in per_seed.items()}
    models = list(next(iter(heads.values())))
    metrics: list[str] = []
    for seed_heads in heads.values():
        for m in seed_heads.values():
            metrics += [k for k in m if k not in metrics]
    rows = []
    for model in models:
        row: dict[str, Any] = {'model': model, 'seeds': sorted(per_seed)}
        for metric in metrics:
            found = [heads[s][model][metric] for s in heads if metric in heads[s].get(model, {})]
            if found:
                values = [v for v, _ in found]
                row[metric] = statistics.fmean(values)
                row[f'{metric} std'] = statistics.stdev(values) if len(values) > 1 else 0.0
                errors = [standard_error(v, n) for v, n in found]
                if all(e is not None for e in errors):  # of the seed mean: sampling error of each seed's value
                    row[f'{metric} se'] = math.sqrt(sum(e * e for e in errors)) / len(errors)
                row[f'{metric} n'] = found[0][1]
        rows.append(row)
    spread = len(per_seed) > 1
    lines = ['| model | ' + ' | '.join(metrics) + ' |', '|---|' + '---:|' * len(metrics)]
    for row in rows:
        cells = []
        for metric in metrics:
            if metric not in row:
                cells.append('-')
                continue
            cell = f"{row[metric]:.1f}"
            if spread:
                cell += f" ± {row[f'{metric} std']:.1f}"
            if f'{metric} se' in row:
                cell += f" (SE {row[f'{metric} se']:.1f})"
            cells.append(cell)
        lines.append(f"| {row['model']} | " + ' | '.join(cells) + ' |')
    counts = ', '.join(f"{m}: {rows[0][f'{m} n']}" for m in metrics if rows[0].get(f'{m} n'))
    note = (f"Accuracies, mCE and shift consistency in %, "
            f"{'mean ± std over seeds ' + str(sorted(per_seed)) if spread else 'seed ' + str(sorted(per_seed)[0])}; "
            f"SE: binomial standard error of the test-image sample (for the mean over corruptions an upper bound; "
            f"over seeds, of their mean). Test images per metric: {counts}. "
            f"mCE normalised by the first (baseline) model of each family.")
    return '\n'.join(lines) + '\n\n' + note + '\n', rows


PLATEAU_PP = 0.5  # validation top-1 (pp): the last epoch gains less than this over the best earlier one


def convergence(history: list[dict]) -> dict[str, Any]:
    """The validation curve of a run and whether it plateaued.

    Returns:
        ``val_top1`` (per epoch), ``last_gain_pp`` (the last epoch's top-1 minus the best earlier one) and
        ``plateaued`` (``last_gain_pp < PLATEAU_PP``; None with fewer than 2 validated epochs).
    """
    curve = [round(float(r['val_top1']), 2) for r in history if r.get('val_top1') is not None]
    if len(curve) < 2:
        return {'val_top1': curve, 'last_gain_pp': None, 'plateaued': None}
    gain = round(curve[-1] - max(curve[:-1]), 2)
    return {'val_top1': curve, 'last_gain_pp': gain, 'plateaued': gain < PLATEAU_PP}


def error_bars(rows: list[dict]) -> tuple[str, str]:
    """Which error the summary plot draws: the spread over seeds when there are several, else the sampling error.

    Args:
        rows: the rows of :func:`study_table` (each with its ``seeds``).

    Returns:
        (the row-key suffix of the bar lengths, ``' std'`` or ``' se'``; the caption saying what the bars are).

    Example:
        >>> error_bars([{'model': 'a', 'seeds': [0]}])[0]
        ' se'
    """
    seeds = sorted({s for row in rows for s in row['seeds']})
    if len(seeds) > 1:
        return ' std', f"bars: ± standard deviation over the {len(seeds)} seeds {seeds}"
    return ' se', (f"bars: ± binomial standard error of the test-image sample (seed {seeds[0]} only; "
                   f"for corruption mCA an upper bound)")


def _plot_summary(rows: list[dict], path: Path, title: str = 'Fashion-MNIST: baseline vs FLC vs ASAP') -> Path:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    metrics = [k for k in rows[0] if k not in ('model', 'seeds', 'mCE') and not k.endswith((' std', ' se', ' n'))]
    suffix, caption = error_bars(rows)
    width_in = max(6.0, 1.4 * len(metrics))
    fig, ax = plt.subplots(figsize=(width_in, 4.0))
    width = 0.8 / len(rows)
    colours = plt.get_cmap('tab10' if len(rows) <= 10 else 'tab20')  # one colour per model, never repeated
    for i, row in enumerate(rows):
        xs = [j + i * width for j in range(len(metrics))]
        ax.bar(xs, [row.get(m, math.nan) for m in metrics], width, color=colours(i),
               yerr=[row.get(f'{m}{suffix}', math.nan) for m in metrics], label=row['model'], capsize=2)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))])
    ax.set_xticklabels(metrics, rotation=25, ha='right', fontsize=8)
    ax.set_ylabel('accuracy / agreement (%)')
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over them
    ax.set_title(title + '\n' + textwrap.fill(caption, int(12 * width_in)), fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format='png')
    plt.close(fig)
    return path


def _reload_check(arch: str, cfg: RunConfig, trained: torch.nn.Module, hub_dir: Path, cache_dir: Path,
                  images: torch.Tensor) -> dict[str, Any]:
    """Load the published folder back by name (``local-dir:`` and ``hf-hub:`` from an offline cache)
    and compare its logits with the trained model's on uint8 ``images``."""
    import timm
    from huggingface_hub import constants as hf_constants

    from timm_asap.hub import load_hub_folder, seed_hub_cache
    from timm_asap_lab.evaluation import wrap_model

    repo_id = cfg.hub.repo_id
    seed_hub_cache(hub_dir, repo_id, cache_dir)  # the offline cache a download would leave
    offline = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = True
    try:
        by_hub = timm.create_model(f'hf-hub:{repo_id}', pretrained=True, cache_dir=str(cache_dir)).eval()
    finally:
        hf_constants.HF_HUB_OFFLINE = offline
    by_dir = load_hub_folder(hub_dir)
    x = images.float() / 255
    with torch.no_grad():
        logits = {name: wrap_model(net, cfg.data.mean, cfg.data.std)(x)
                  for name, net in (('trained', trained), ('hf-hub', by_hub), ('local-dir', by_dir))}
    diffs = {name: (logits[name] - logits['trained']).abs().max().item() for name in ('hf-hub', 'local-dir')}
    if type(by_hub).__name__ != type(trained).__name__:
        raise RuntimeError(f"{arch}: reloaded model is a {type(by_hub).__name__}, trained one a {type(trained).__name__}")
    return {'model': arch, 'max_abs_logit_diff': max(diffs.values()), 'per_source': diffs, 'identical': max(diffs.values()) == 0.0}


def _rates(label: str, arch: str, family: Family, batch: int, device: torch.device, steps: int = 2,
           **model_kwargs) -> dict:
    """Training and inference images per second of one model on ``device``, from a few timed steps
    (``model_kwargs``: further ``timm.create_model`` arguments, e.g. ``pool_position``)."""
    import timm
    import torch.nn.functional as F

    model = timm.create_model(arch, num_classes=10, in_chans=1, **family.model_args, **model_kwargs).to(device)
    cuda = device.type == 'cuda'
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model = model.to(memory_format=fmt)
    dtype = resolve_amp(device, 'auto') if cuda else None  # the trainer's autocast: CUDA only
    x = torch.randn(batch, 1, 32, 32, device=device).to(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def timed(fn) -> float:
        fn()  # warm-up (allocator, cuDNN algorithm choice)
        if cuda:
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
        return batch * steps / (time.perf_counter() - t)

    def train_step():
        with amp_context(device, dtype):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer_step():
        with torch.no_grad(), amp_context(device, dtype):
            model(x)

    model.train()
    train = timed(train_step)
    model.eval()
    return {'model': label, 'train_img_s': round(train, 1), 'infer_img_s': round(timed(infer_step), 1)}


RUN_OVERHEAD_S = 2.0  # per training run and per model evaluated: building, checkpoints, plots (measured)
POOL_START_S = 10.0   # starting the corruption processes (each imports torch and timm)


def estimate(opts: StudyOptions, device: torch.device) -> dict[str, Any]:
    """Expected wall time of ``opts`` on ``device`` from a few timed steps of each model.

    Training: runs x epochs x images / training img/s, plus one validation pass per epoch. Evaluation per
    (family, seed), for each model: clean + 75 corruption sets + 2 x trials shifted copies at the inference
    rate, and FGSM (2 passes) + PGD (steps + 2) per eps on the attacked images at the training-step rate
    (a gradient step costs about a training step). Corruption sets: made once, 75 x images x
    :data:`timm_asap_lab.evaluation.cache.CORRUPT_S_PER_IMAGE` over ``default_workers()`` processes, plus their start. Publishing: about 2 s
    per model; every run and evaluated model adds :data:`RUN_OVERHEAD_S`. The conversion arm adds its fine-tuning
    epochs (a third more per step with distillation), one evaluation per arm and the repair's forward passes, at
    the rates of the converted architecture with the arm's placement.

    Returns:
        ``rates`` (per model), the parts in seconds (``train_s``, ``corruption_sets_s``, ``evaluate_s``,
        ``publish_s``), ``total_s``, ``measure_s`` (time spent measuring).
    """
    from timm_asap_lab.evaluation.cache import CORRUPT_S_PER_IMAGE, default_workers

    t0 = time.perf_counter()
    batch = opts.batch_size or RECIPE_BATCH
    if device.type != 'cuda' and any(f != _SMALL.name for f in opts.families):
        batch = min(batch, 32)  # the paper-size networks run at tens of images per second on a CPU
    rates = [_rates(label, arch, FAMILIES[f], batch, device) for f in opts.families for label, arch in
             FAMILIES[f].variants()]
    seeds, epochs = len(opts.seeds), opts.epochs or 20
    n_train, n_val, n_test = opts.train_subset or 60000, opts.val_subset or 10000, opts.eval_count or 10000
    jobs = 15 * len(opts.severities)
    n_corr, n_att, n_shift = (min(n, n_test) for n in (opts.corruption_count, opts.attack_count, opts.shift_count))
    train_s = seeds * sum(epochs * (n_train / r['train_img_s'] + n_val / r['infer_img_s']) + RUN_OVERHEAD_S
                          for r in rates)
    infer_images = n_test + jobs * n_corr + 2 * opts.shift_trials * n_shift
    grad_steps = len(opts.eps) * n_att * (2 + opts.pgd_steps + 2)
    evaluate_s = seeds * sum(infer_images / r['infer_img_s'] + grad_steps / r['train_img_s'] + RUN_OVERHEAD_S
                             for r in rates)
    corruption_s = jobs * n_corr * CORRUPT_S_PER_IMAGE / default_workers() + POOL_START_S
    publish_s = 2.0 * len(rates)
    arms = conversion_arms(opts.convert_pools, opts.convert_positions, opts.convert_epochs, opts.convert_distill)
    for f in opts.families if arms else ():
        fam = FAMILIES[f]
        arm_rates = {(pool, pos): _rates(f'{fam.name}_{pool}', f'{fam.architecture}_{pool}', fam, batch, device,
                                         pool_position=pos)
                     for pool in opts.convert_pools for pos in opts.convert_positions}
        for arm in arms:
            r = arm_rates[(arm.pool, arm.position)]
            teacher = 1 + (1 / 3 if arm.distill else 0)  # a teacher forward costs about a third of a training step
            train_s += seeds * (arm.epochs * (teacher * n_train / r['train_img_s'] + n_val / r['infer_img_s'])
                                + (RUN_OVERHEAD_S if arm.epochs else 0))
            evaluate_s += seeds * (infer_images / r['infer_img_s'] + grad_steps / r['train_img_s'] + RUN_OVERHEAD_S
                                   + (opts.repair_images / r['infer_img_s'] if arm.repair else 0))
            publish_s += 2.0 if arm.epochs else 0.0
    total = train_s + corruption_s + evaluate_s + publish_s
    return {'rates': rates, 'batch': batch, 'train_s': round(train_s), 'corruption_sets_s': round(corruption_s),
            'evaluate_s': round(evaluate_s), 'publish_s': round(publish_s), 'total_s': round(total),
            'measure_s': round(time.perf_counter() - t0, 1)}


def _fit_seeds(opts: StudyOptions, expected: dict, log: Callable[[str], None]) -> tuple[StudyOptions, dict]:
    """Fewer seeds when the expected time exceeds ``opts.max_seconds`` (training and evaluation scale with seeds)."""
    per_seed = (expected['train_s'] + expected['evaluate_s']) / len(opts.seeds)
    fixed = expected['total_s'] - per_seed * len(opts.seeds)
    k = max(1, min(len(opts.seeds), int((opts.max_seconds - fixed) // max(per_seed, 1e-9))))
    total = round(fixed + k * per_seed)
    scale = k / len(opts.seeds)
    expected = {**expected, 'train_s': round(expected['train_s'] * scale),
                'evaluate_s': round(expected['evaluate_s'] * scale), 'total_s': total, 'seeds_planned': opts.seeds}
    log(f"time left {_minutes(opts.max_seconds)}: running {k} of the {len(opts.seeds)} seeds, {opts.seeds[:k]} "
        f"(expected {_minutes(total)})" + ('' if total <= opts.max_seconds else '; even one seed may not finish'))
    return dataclasses.replace(opts, seeds=opts.seeds[:k]), expected


def describe(opts: StudyOptions, device: torch.device, runs: list[dict] | None = None,
             evaluations: list[dict] | None = None) -> str:
    """What the study runs, in one paragraph: planned from ``opts``, or, given the records of the runs and
    evaluations that were used, what ran.

    Args:
        opts: the study options (families, preset).
        device: the device the study runs on.
        runs: the metrics of the training runs used (their recorded config and per-epoch history).
        evaluations: the records of the ``results.json`` files used (their ``config``): the evaluation
            options, image count, device and precision they were made with.
    """
    fams = '; '.join(f"{f} ({FAMILIES[f].description}) as baseline, _flc and _asap" for f in opts.families)
    if runs:
        seeds = sorted({int(r['config']['train']['seed']) for r in runs})
        training = _one_of(_describe_training(r['epochs_completed'], r['history'][-1]['train_images'],
                                              r['config']['train']['batch_size'],
                                              r['config']['data']['val_subset'] or 10000) for r in runs)
    else:
        seeds = opts.seeds
        training = _describe_training(opts.epochs or 'the recipe (20)', opts.train_subset or 60000,
                                      opts.batch_size or RECIPE_BATCH, opts.val_subset or 10000)
    if evaluations:
        evaluation = _one_of(_describe_evaluation(e['options'], e['count'], e['precision']) for e in evaluations)
    else:
        precision = str(resolve_amp(device, opts.amp) or 'float32').replace('torch.', '')
        evaluation = _describe_evaluation(_eval_options(opts, device, Path(opts.output_dir) / 'eval_cache'),
                                          opts.eval_count or 10000, precision)
    return f"preset {opts.preset!r}: {fams}; seeds {seeds}; {training}; {evaluation}{_describe_conversion(opts)}"


def _describe_conversion(opts: StudyOptions) -> str:
    if not opts.convert_pools:
        return ''
    distill = ' and '.join({False: 'without', True: 'with'}[d] for d in opts.convert_distill)
    return (f"; conversion arm: each seed's trained baseline converted to {', '.join(p.upper() for p in opts.convert_pools)} "
            f"(pool {' and '.join(opts.convert_positions)} the strided convolutions), evaluated zero-shot, after "
            f"re-estimating BatchNorm statistics on {opts.repair_images} unlabeled training images, and after "
            f"{' and '.join(map(str, opts.convert_epochs))} epoch(s) of fine-tuning at lr {opts.convert_lr:g} {distill} "
            f"distillation from the baseline")


def _one_of(texts) -> str:
    return ' / '.join(dict.fromkeys(texts))  # one text when every run (or evaluation) was made the same way


def _describe_training(epochs: int | str, train_images: int, batch: int, val_images: int) -> str:
    return f"{epochs} epoch(s) on {train_images} training images, batch {batch}, validation on {val_images}"


def _describe_evaluation(options: dict, images: int, precision: str) -> str:
    """The evaluation options (fields of :class:`~timm_asap_lab.evaluation.EvalOptions`) in words."""
    from timm_asap_lab.evaluation import check_corruptions

    def on(key: str) -> int:
        return min(options[key] or images, images)

    def eps(key: str) -> str:
        return ', '.join(f'{e * 255:g}/255' for e in options[key])

    sev = list(options['severities'])
    pgd = f"PGD-{options['pgd_steps']}"
    attacks = (f"FGSM and {pgd} at eps {eps('fgsm_eps')}" if options['fgsm_eps'] == options['pgd_linf_eps']
               else f"FGSM at eps {eps('fgsm_eps')} and {pgd} at eps {eps('pgd_linf_eps')}")
    return (f"evaluation: clean on {images} test images, {len(check_corruptions(options['corruptions']))} corruptions x "
            f"{len(sev)} severit{'y' if len(sev) == 1 else 'ies'} ({', '.join(map(str, sev))}) on "
            f"{on('corruption_count')}, {attacks} on {on('attack_count')}, shift consistency on {on('shift_count')} "
            f"({options['shift_trials']} trials); device {options['device']}, precision {precision} (attacks float32)")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def check_device(opts: StudyOptions, device: torch.device) -> None:
    """``--preset gpu``/``full`` need CUDA unless the device is given as ``cpu`` explicitly.

    Raises:
        ValueError: a GPU preset without CUDA and without ``device='cpu'``.
    """
    if opts.preset in ('gpu', 'full') and device.type != 'cuda' and opts.device != 'cpu':
        raise ValueError(f"preset {opts.preset!r} is sized for a CUDA GPU and none is available; run it on a GPU, "
                         f"use --preset default or cpu here, or pass --device cpu to run it on the CPU anyway "
                         f"(it then prints its expected time, hours on a small CPU)")


def _run_dir(out: Path, label: str, seed: int) -> Path:
    return out / 'runs' / label / f'seed{seed}'


#: what study.json keeps of each evaluation's record (not its timings or library versions)
_RECORD_KEYS = ('options', 'models', 'model_sha256', 'images_sha256', 'dataset', 'count', 'device', 'precision')


def _trained_nets(models: dict[str, RunConfig], out: Path, seed: int) -> list[tuple[str, torch.nn.Module]]:
    """(label, model taking [0, 1] inputs) of the trained runs ``models`` (label -> run config) of ``seed``."""
    from timm_asap_lab.evaluation import wrap_model
    from timm_asap_lab.publish import load_trained_model

    return [(label, wrap_model(load_trained_model(cfg, _run_dir(out, label, seed) / 'model.safetensors'),
                               cfg.data.mean, cfg.data.std)) for label, cfg in models.items()]


def _evaluate_family(what: str, eval_dir: Path, nets: list[tuple[str, torch.nn.Module]], images, eval_opts: dict,
                     device: torch.device, log: Callable[[str], None]) -> tuple[list[dict], dict]:
    """The rows and record of the models ``nets`` ((label, model taking [0, 1] inputs), ``what`` in the log):
    the stored ``eval_dir/results.json`` when its record equals this evaluation's (options, weights, images,
    precision), else a new evaluation (saying why in one line)."""
    from timm_asap_lab.evaluation import (EvalOptions, evaluate_models, evaluation_record, read_results,
                                          record_differences)
    from timm_asap_lab.evaluation.provenance import describe_differences

    stored = eval_dir / 'results.json'
    options = EvalOptions.from_dict(eval_opts)
    if stored.is_file():
        try:
            rows, recorded = read_results(stored)
            why = describe_differences(record_differences(recorded, evaluation_record(options, nets, images, device)))
        except ValueError as e:  # our own file, damaged: made again
            why = f"unreadable: {e}"
        if not why:
            log(f"evaluated {what}: found {stored}, made with these settings and weights; not evaluating again")
            return rows, {k: recorded.get(k) for k in _RECORD_KEYS}
        log(f"{stored} was made with other settings ({why}); evaluating {what} again")
    rows = evaluate_models(nets, images, options, out_dir=eval_dir, dataset_name='fashion_mnist/test')
    log(f"evaluated {what} ({', '.join(label for label, _ in nets)}): {len(rows)} result rows -> {eval_dir}")
    recorded = read_results(stored)[1]
    return rows, {k: recorded.get(k) for k in _RECORD_KEYS}


def _repair_images(opts: StudyOptions, data_dir: str, recipe: RunConfig) -> torch.Tensor:
    """The first ``opts.repair_images`` training images (uint8) of a fixed random order: the unlabeled images the
    ``repaired`` arm re-estimates BatchNorm statistics on."""
    from timm_asap_lab.evaluation import create_eval_dataset, load_images

    train_set = create_eval_dataset('fashion_mnist', data_dir, split='train', img_size=recipe.model.img_size,
                                    crop_pct=recipe.data.crop_pct, interpolation=recipe.data.interpolation,
                                    in_chans=recipe.model.in_chans)
    return load_images(train_set, count=opts.repair_images, seed=EVAL_SEED, name='fashion_mnist/train',
                       progress=False).images


def _arm_nets(arms: list[Arm], name: str, base_cfg: RunConfig, arm_configs: dict, out: Path, seed: int,
              train_images: torch.Tensor) -> list[tuple[str, torch.nn.Module]]:
    """(label, model taking [0, 1] inputs) of every arm of family ``name`` and ``seed``: the converted baseline
    zero-shot and repaired (built here), and the fine-tuned runs."""
    from timm_asap_lab.evaluation import wrap_model
    from timm_asap_lab.publish import load_trained_model

    base = load_trained_model(base_cfg, _run_dir(out, name, seed) / 'model.safetensors')
    nets = []
    for arm in arms:
        label = arm.label(name)
        if arm.epochs:
            net = load_trained_model(arm_configs[(label, seed)], _run_dir(out, label, seed) / 'model.safetensors')
        else:
            net = converted_model(arm, base_cfg, base)
            if arm.repair:
                net = repaired_model(net, train_images, base_cfg.data.mean, base_cfg.data.std)
        nets.append((label, wrap_model(net, base_cfg.data.mean, base_cfg.data.std)))
    return nets


def _conversion_summary(name: str, arms: list[Arm], scratch: dict[int, list[dict]], converted: dict[int, list[dict]],
                        runs: dict, seconds: dict[str, list[float]], opts: StudyOptions) -> dict[str, Any]:
    """The conversion arm of family ``name``: its table next to the baseline and from-scratch models, the cost of
    each arm in training images, and which arms reach the goal (:func:`timm_asap_lab.study_conversion.goal_check`)."""
    md, rows = study_table({seed: scratch[seed] + converted[seed] for seed in scratch})
    base_run = runs[(name, opts.seeds[0])]
    n_train = base_run['history'][-1]['train_images']
    scratch_images = base_run['epochs_completed'] * n_train
    by_label = {arm.label(name): arm for arm in arms}
    costs = cost_rows(by_label, scratch_images, opts.repair_images, n_train, seconds)
    goal = goal_check(rows, name, {pool: f"{name}_{pool}" for pool in opts.convert_pools}, by_label,
                      {r['model']: r['relative_cost'] for r in costs})
    markdown = (f"### Conversion arm: {name} converted after training\n\n"
                + '\n'.join(f"- `{label}`: {arm.describe()}" for label, arm in by_label.items())
                + f"\n\n{md}\nCost of each arm (the from-scratch models trained on {scratch_images} images):\n\n"
                + cost_table(costs, scratch_images)
                + "\nGoal: the base's clean accuracy, at least the from-scratch model's corruption gain, at most a "
                  "third of the from-scratch training images:\n\n" + '\n'.join(f"- {line}" for line in goal) + '\n')
    return {'table': rows, 'costs': costs, 'goal': goal, 'markdown': markdown}


def run_study(opts: StudyOptions | None = None, log: Callable[[str], None] = _stage) -> dict[str, Any]:
    """Run (or resume) the study and return its summary; every artefact is written under ``opts.output_dir``.

    Layout::

        <output_dir>/study.json            the options, estimate, data source, timings, table rows, convergence,
                                           reload checks
        <output_dir>/summary.md, summary.png   the side-by-side table (mean ± std over seeds, standard errors)
        <output_dir>/runs/<model>/seed<k>/ fine-tuning outputs (config.yaml, model.safetensors, metrics.json, ...)
        <output_dir>/eval/<family>/seed<k>/ results.json, results.md and the evaluation plots
        <output_dir>/eval_cache/           the corrupted test sets, made once and shared by every model and seed
        <output_dir>/hub/<model>/          the Hub folder written by the dry-run publish
        <output_dir>/hf_cache/             an offline Hub cache used to reload by name

    Everything that can be checked is checked before anything is written: the options, the device, the
    data, and every training run the study would take up (a finished or unfinished run under ``runs/`` is
    used only when it was made with the configuration asked for now). A stored evaluation
    (``eval/<family>/seed<k>/results.json``) is used only when its record (options, weights, images,
    precision) equals this evaluation's; otherwise the family and seed are evaluated again. The summary
    states what ran, read from the records of the runs and evaluations used.

    Raises:
        ValueError: invalid options, a GPU preset without CUDA (see :func:`check_device`), missing data.
        RunExistsError: a run under ``runs/`` was made with another configuration (nothing is written).
        FolderInUseError: another process is writing into ``opts.output_dir`` (it holds the folder's lock).
    """
    opts = (opts or default_options()).validate()
    with folder_lock(opts.output_dir, 'timm-asap study'):  # one study at a time writes into a folder
        return _run_study(opts, log)


def _run_study(opts: StudyOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """:func:`run_study` while it holds the output folder's lock."""
    from timm_asap_lab.evaluation import create_eval_dataset, load_images
    from timm_asap_lab.publish import build_hub_folder, load_eval_results, load_trained_model
    from timm_asap_lab.train import check_reusable, ensure_finetuned

    opts = (opts or default_options()).validate()
    device = resolve_device(opts.device)
    check_device(opts, device)
    out = Path(opts.output_dir)
    timings: dict[str, float] = {}
    start = time.perf_counter()

    data_dir, source = locate_data(opts.data_dir)
    families = {name: FAMILIES[name] for name in opts.families}
    variants = {name: fam.variants() for name, fam in families.items()}
    configs = {(label, seed): study_config(label, arch, families[name], seed, opts, data_dir)
               for name in families for label, arch in variants[name] for seed in opts.seeds}
    arms = conversion_arms(opts.convert_pools, opts.convert_positions, opts.convert_epochs, opts.convert_distill)
    arm_configs = {(arm.label(name), seed): arm_config(
        arm, configs[(name, seed)], _run_dir(out, name, seed), opts.convert_lr,
        f"{HUB_ORG}/{arm.label(name)}_fmnist") for name in families for arm in arms if arm.epochs for seed in opts.seeds}
    for (label, seed), cfg in {**configs, **arm_configs}.items():  # before anything is written: one line naming what differs
        check_reusable(cfg, _run_dir(out, label, seed))
    check_output_folder(out, writer='timm-asap study', ours=['options.json'])
    log(f"data: Fashion-MNIST from {source}")
    log(f"runs: {describe(opts, device)}")
    expected = estimate(opts, device)
    rates = ', '.join(f"{r['model']} {r['train_img_s']:.0f}" for r in expected['rates'])
    log(f"expected time: about {_minutes(expected['total_s'])} (training {_minutes(expected['train_s'])} at "
        f"{rates} img/s; corruption sets {_minutes(expected['corruption_sets_s'])}; evaluation "
        f"{_minutes(expected['evaluate_s'])}; publishing {_minutes(expected['publish_s'])}), from "
        f"{expected['measure_s']:.0f} s of timed steps on this machine")
    if opts.preset in ('gpu', 'full') and device.type != 'cuda':
        _logger.warning(f"preset {opts.preset!r} on the CPU: expected {_minutes(expected['total_s'])}")
    if opts.max_seconds is not None and expected['total_s'] > opts.max_seconds:
        opts, expected = _fit_seeds(opts, expected, log)
        configs = {key: cfg for key, cfg in configs.items() if key[1] in opts.seeds}
        arm_configs = {key: cfg for key, cfg in arm_configs.items() if key[1] in opts.seeds}
    out.mkdir(parents=True, exist_ok=True)
    _json_dump(out / 'options.json', dataclasses.asdict(opts))

    t = time.perf_counter()
    runs, train_metrics, curves = {}, {}, {}
    for (label, seed), cfg in configs.items():
        run_dir = _run_dir(out, label, seed)
        metrics = runs[(label, seed)] = ensure_finetuned(cfg, run_dir, device=device, progress=opts.progress)
        train_metrics[f'{label}/seed{seed}'] = {k: metrics.get(k) for k in ('val_top1', 'best_metric',
                                                                            'train_images_per_sec')}
        curve = curves[f'{label}/seed{seed}'] = convergence(metrics.get('history') or [])
        state = {True: 'plateaued', False: 'still improving', None: 'too few epochs to tell'}[curve['plateaued']]
        log(f"trained {label} seed {seed}: val top-1 by epoch {curve['val_top1']} ({state}"
            + (f", last epoch {curve['last_gain_pp']:+.2f} pp over the best earlier one" if curve['plateaued'] is not None
               else '') + f") -> {run_dir}")
    timings['train_s'] = time.perf_counter() - t
    t = time.perf_counter()
    arm_seconds: dict[str, list[float]] = {}
    for (label, seed), cfg in arm_configs.items():  # after the baselines they start from
        run_dir = _run_dir(out, label, seed)
        metrics = ensure_finetuned(cfg, run_dir, device=device, progress=opts.progress)
        arm_seconds.setdefault(label, []).append(sum(r.get('epoch_time_s', 0.0) for r in metrics.get('history') or []))
        log(f"fine-tuned {label} seed {seed} from the trained baseline: val top-1 by epoch "
            f"{convergence(metrics.get('history') or [])['val_top1']} -> {run_dir}")
    timings['convert_train_s'] = time.perf_counter() - t

    t = time.perf_counter()
    recipe = next(iter(configs.values()))
    test_set = create_eval_dataset('fashion_mnist', data_dir, split='test', img_size=recipe.model.img_size,
                                   crop_pct=recipe.data.crop_pct, interpolation=recipe.data.interpolation,
                                   in_chans=recipe.model.in_chans)
    images = load_images(test_set, count=opts.eval_count, seed=EVAL_SEED, name='fashion_mnist/test', progress=False)
    eval_opts = _eval_options(opts, device, out / 'eval_cache')
    train_images = _repair_images(opts, data_dir, recipe) if arms else None
    per_family_seed: dict[str, dict[int, list[dict]]] = {}
    arm_rows: dict[str, dict[int, list[dict]]] = {name: {} for name in families}
    evaluations: dict[str, dict] = {}
    for name in families:
        per_family_seed[name] = {}
        for seed in opts.seeds:
            models = {label: configs[(label, seed)] for label, _ in variants[name]}
            eval_dir = out / 'eval' / name / f'seed{seed}'
            per_family_seed[name][seed], evaluations[f'{name}/seed{seed}'] = _evaluate_family(
                f"the {name} family seed {seed}", eval_dir, _trained_nets(models, out, seed), images, eval_opts,
                device, log)
            if arms:
                arm_rows[name][seed], evaluations[f'{name}/seed{seed}/conversion'] = _evaluate_family(
                    f"the {name} conversion arm seed {seed}", eval_dir / 'conversion',
                    _arm_nets(arms, name, configs[(name, seed)], arm_configs, out, seed, train_images), images,
                    {**eval_opts, 'mce_baseline': name, 'baseline_results': str(eval_dir / 'results.json')},
                    device, log)
    timings['evaluate_s'] = time.perf_counter() - t

    t = time.perf_counter()
    first_seed = opts.seeds[0]
    reload_checks = []
    probe = load_images(test_set, count=16, seed=123, progress=False).images
    published = [(label, configs[(label, first_seed)], out / 'eval' / name / f'seed{first_seed}')
                 for name in families for label, _ in variants[name]]
    published += [(arm.label(name), arm_configs[(arm.label(name), first_seed)],
                   out / 'eval' / name / f'seed{first_seed}' / 'conversion') for name in families for arm in arms if arm.epochs]
    for label, cfg, results_dir in published:
        hub_dir = out / 'hub' / label
        run_dir = _run_dir(out, label, first_seed)
        trained = load_trained_model(cfg, run_dir / 'model.safetensors')
        build_hub_folder(trained, cfg, hub_dir, results=load_eval_results(results_dir), eval_model=label,
                         training=run_dir / 'metrics.json')
        check = _reload_check(label, cfg, trained, hub_dir, out / 'hf_cache', probe)
        reload_checks.append(check)
        verdict = 'identical logits' if check['identical'] else f"max |logit diff| {check['max_abs_logit_diff']:.2e}"
        log(f"published {label} -> {hub_dir} (dry run); reloaded by name: {verdict}")
        if check['max_abs_logit_diff'] > 1e-5:
            raise RuntimeError(f"{label}: the published weights do not reproduce the trained model "
                               f"(max |logit diff| {check['max_abs_logit_diff']:.3g})")
    timings['publish_reload_s'] = time.perf_counter() - t

    tables, all_rows = [], []
    for name in families:
        table, rows = study_table(per_family_seed[name])
        tables.append(f"### {name}\n\n{table}")
        all_rows += rows
    conversion = {name: _conversion_summary(name, arms, per_family_seed[name], arm_rows[name], runs, arm_seconds, opts)
                  for name in families} if arms else {}
    for name, part in conversion.items():
        tables.append(part.pop('markdown'))
        _plot_summary(part['table'], out / f'conversion_{name}.png',
                      title=f"Fashion-MNIST: {name} converted to {' and '.join(p.upper() for p in opts.convert_pools)}")
    plateau = '\n'.join(f"- {run}: val top-1 by epoch {c['val_top1']}"
                         + ('' if c['plateaued'] is None else
                            f" ({'plateaued' if c['plateaued'] else 'still improving'}: last epoch "
                            f"{c['last_gain_pp']:+.2f} pp over the best earlier one)") for run, c in curves.items())
    timings['total_s'] = time.perf_counter() - start
    size = describe(opts, device, runs=list(runs.values()), evaluations=list(evaluations.values()))
    summary_md = (f"# Fashion-MNIST robustness study\n\nData: {source}. Runs: {size}.\n\n" + '\n'.join(tables)
                  + f"\n### Convergence (validation top-1 per epoch, plateau: the last epoch gains < {PLATEAU_PP} pp)"
                  f"\n\n{plateau}\n\nWall time {_minutes(timings['total_s'])} (expected "
                  f"{_minutes(expected['total_s'])}).\n")
    atomic_write_text(out / 'summary.md', summary_md)
    _plot_summary(all_rows, out / 'summary.png')
    result = dict(options=dataclasses.asdict(opts), data_source=source, size=size, estimate=expected, table=all_rows,
                  conversion=conversion, train=train_metrics, convergence=curves, evaluations=evaluations,
                  reload=reload_checks, timings=timings)
    _json_dump(out / 'study.json', result)
    print('\n' + summary_md, flush=True)
    log(f"done in {_minutes(timings['total_s'])}; artefacts under {out}")
    return result
