"""One call that evaluates several models side by side and writes every artefact."""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.utils.data
from torch import nn

from timm_asap._files import atomic_write_text
from timm_asap.layers.band import check_choice
from timm_asap_lab.evaluation._deps import library_versions, require
from timm_asap_lab.evaluation.attacks import AttackSpec, check_eps, parse_eps
from timm_asap_lab.evaluation.corruptions import SEVERITIES, check_corruptions, check_severities
from timm_asap_lab.evaluation.data import EvalImages, load_images
from timm_asap_lab.evaluation.engine import (CORRUPTION_SOURCES, check_corruption_source, evaluate_clean,
                                             evaluate_corruptions, model_in_chans, predict_logits, resolve_device)
from timm_asap_lab.evaluation.provenance import evaluation_record
from timm_asap_lab.evaluation.report import (markdown_report, plot_aliasing, plot_attacks, plot_corruptions, plot_shift,
                                             read_results, write_results)
from timm_asap_lab.evaluation.shift import SHIFT_MODES, aliasing_view, evaluate_shift_consistency
from timm_asap_lab.evaluation.summary import corruption_summary
from timm_asap_lab.evaluation.wrapper import NormalizedModel, check_eval_mode
from timm_asap_lab.files import check_folder_path
from timm_asap_lab.runtime import resolve_amp

__all__ = ['EvalOptions', 'evaluate_models', 'build_attack_specs', 'require_dependencies', 'check_mce_baseline',
           'check_model_classes']

_logger = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    """What :func:`evaluate_models` runs.

    Attributes:
        count: images evaluated (a seeded random subset; None: all).
        seed: seed of the subset, the corruptions, the attacks and the shifts.
        subset_order: ``'random'`` or ``'first'``.
        batch_size: images per forward pass.
        workers: DataLoader workers reading and decoding images.
        max_unreadable: fraction of the selected images that may be unreadable (each is skipped and
            counted, in ``results.json`` and the report) before the evaluation stops with an error.
        device: ``'auto'`` (CUDA when present), ``'cpu'``, ``'cuda'``, ...
        amp: precision of the clean/corruption/shift passes (:func:`timm_asap_lab.runtime.resolve_amp`):
            ``'auto'`` follows the hardware (bf16 on CUDA and on CPUs with native bf16, float32 elsewhere);
            ``'bf16'``, ``'fp16'``, ``'none'`` force one. Attacks always run in float32.
        clean: evaluate clean top-1/top-5.
        corruptions: corruption names, ``'benchmark'`` (the 15), ``'all'`` (15 + 4 extra), or empty or
            ``'none'`` to skip.
        severities: severities 1..5.
        corruption_protocol: ``'auto'``, ``'imagenet'``, ``'cifar'`` parameter tables (generated source).
        corruption_source: ``'generated'``, ``'imagenet_c'`` or ``'cifar_c'``.
        corruption_dir: root of pre-generated corruption data.
        corruption_cache: folder keeping each generated (corruption, severity, images) set for later
            models, seeds and runs (None: not kept); see :mod:`timm_asap_lab.evaluation.cache`.
        corruption_workers: processes generating corruptions (None: ``os.cpu_count()``; 0: in this process).
        mce_baseline: model name (of this run, or of ``baseline_results``) normalising mCE; None: the
            first model.
        baseline_results: a results.json holding the baseline's rows.
        alexnet_mce: also normalise by AlexNet's published errors; None: when the source is ImageNet-C.
        fgsm_eps: FGSM eps list (L-inf), e.g. ``[1/255, 2/255, 4/255]``.
        pgd_linf_eps: PGD L-inf eps list.
        pgd_l2_eps: PGD L2 eps list.
        pgd_steps: PGD iterations.
        pgd_step_size: PGD step (None: 2.5 eps / steps).
        pgd_restarts: PGD random starts.
        autoattack_eps: eps list of AutoAttack, standard version (``pyautoattack``; empty: skip; it is slow).
        autoattack_norm: ``'linf'`` or ``'l2'``.
        autoattack_steps: APGD iterations; the standard version runs 100 (other values are rejected).
        square_queries: Square attack queries; the standard version runs 5000 (other values are rejected).
        attack_count: images attacked (the first ones of the evaluated subset; None: all).
        corruption_count: images corrupted (the first ones of the evaluated subset; None: all).
        shift_count: images of the shift-consistency pass (the first ones; None: all).
        shift_trials: random shift pairs per image (0: skip shift consistency).
        max_shift: largest shift in pixels (None: a quarter of the image size).
        shift_mode: ``'circular'`` or ``'crop'``.
        shift_curve: also the agreement-against-diagonal-shift curve.
        aliasing_count: images for the aliasing view (0: skip).
        plots: write PNG plots.
        progress: progress bars.
    """

    count: int | None = 500
    seed: int = 0
    subset_order: str = 'random'
    batch_size: int = 128
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    max_unreadable: float = 0.01
    device: str = 'auto'
    amp: str = 'auto'
    clean: bool = True
    corruptions: list[str] | str = 'benchmark'
    severities: list[int] = field(default_factory=lambda: list(SEVERITIES))
    corruption_protocol: str = 'auto'
    corruption_source: str = 'generated'
    corruption_dir: str | None = None
    corruption_cache: str | None = None
    corruption_workers: int | None = None
    mce_baseline: str | None = None
    baseline_results: str | None = None
    alexnet_mce: bool | None = None
    fgsm_eps: list[float] = field(default_factory=lambda: [1 / 255, 2 / 255, 4 / 255])
    pgd_linf_eps: list[float] = field(default_factory=lambda: [1 / 255, 2 / 255, 4 / 255])
    pgd_l2_eps: list[float] = field(default_factory=list)
    pgd_steps: int = 10
    pgd_step_size: float | None = None
    pgd_restarts: int = 1
    autoattack_eps: list[float] = field(default_factory=list)
    autoattack_norm: str = 'linf'
    autoattack_steps: int = 100
    square_queries: int = 5000
    attack_count: int | None = None
    corruption_count: int | None = None
    shift_count: int | None = None
    shift_trials: int = 5
    max_shift: int | None = None
    shift_mode: str = 'circular'
    shift_curve: bool = True
    aliasing_count: int = 16
    plots: bool = True
    progress: bool = True

    @classmethod
    def from_dict(cls, data: dict | None) -> 'EvalOptions':
        """Build options from a mapping (e.g. YAML); unknown keys are errors naming the allowed ones."""
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown evaluation option {unknown[0]!r}; allowed: {sorted(names)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __post_init__(self) -> None:
        if isinstance(self.corruptions, str) and self.corruptions.strip().lower() in ('none', ''):
            self.corruptions = []  # as the command line's --corruptions none

    def validate(self, image_shape: Sequence[int] | None = None) -> 'EvalOptions':
        """Check choices and ranges (eps ranges need the image shape).

        Raises:
            ValueError: naming the option, the value and what is allowed.
        """
        if self.count is not None and self.count < 1:
            raise ValueError(f"count must be >= 1 or None, got {self.count}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.corruption_workers is not None and self.corruption_workers < 0:
            raise ValueError(f"corruption_workers must be >= 0 or None (every core), got {self.corruption_workers}")
        if not 0 <= self.max_unreadable <= 1:
            raise ValueError(f"max_unreadable must be a fraction in [0, 1], got {self.max_unreadable}")
        resolve_amp('cpu', self.amp)  # raises naming the allowed precisions
        resolve_device(self.device)  # raises naming what this machine has
        check_choice('corruption_source', self.corruption_source, CORRUPTION_SOURCES)
        if self.corruptions:
            check_corruptions(self.corruptions)
            check_severities(self.severities)
        check_choice('shift_mode', self.shift_mode, SHIFT_MODES)
        if self.shift_trials < 0 or self.aliasing_count < 0:
            raise ValueError("shift_trials and aliasing_count must be >= 0")
        if self.autoattack_norm not in ('linf', 'l2'):
            raise ValueError(f"autoattack_norm must be 'linf' or 'l2', got {self.autoattack_norm!r}")
        if self.autoattack_eps and (self.autoattack_steps, self.square_queries) != (100, 5000):
            raise ValueError(f"the standard AutoAttack runs 100 APGD iterations and 5000 Square queries; got "
                             f"autoattack_steps={self.autoattack_steps}, square_queries={self.square_queries}")
        for key in ('attack_count', 'corruption_count', 'shift_count'):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1 or None, got {getattr(self, key)}")
        if self.corruptions:
            self._validate_corruption_inputs()
        if image_shape is not None:
            build_attack_specs(self, image_shape)
        return self

    def _validate_corruption_inputs(self) -> None:
        """The corruption cache, the pre-generated data and the mCE settings, checked before any pass runs."""
        if self.corruption_source == 'generated':
            if self.corruption_cache is not None:
                check_folder_path(self.corruption_cache, 'corruption_cache')
        else:
            check_corruption_source(self.corruptions, self.severities, self.corruption_source, self.corruption_dir)
        if self.alexnet_mce and tuple(check_severities(self.severities)) != SEVERITIES:
            raise ValueError(f"alexnet_mce needs all five severities (AlexNet's published errors average them), got "
                             f"severities {list(self.severities)}")
        if self.baseline_results is not None and not Path(self.baseline_results).is_file():
            raise FileNotFoundError(f"baseline_results {self.baseline_results}: no such file (a results.json of an "
                                    f"earlier evaluation)")


def build_attack_specs(opts: EvalOptions, image_shape: Sequence[int]) -> list[AttackSpec]:
    """The attack configurations the options ask for, eps checked against the image shape."""
    specs = []
    for attack, norm, eps_list in (('fgsm', 'linf', opts.fgsm_eps), ('pgd', 'linf', opts.pgd_linf_eps),
                                   ('pgd', 'l2', opts.pgd_l2_eps),
                                   ('autoattack', opts.autoattack_norm, opts.autoattack_eps)):
        for eps in eps_list or []:
            eps = check_eps(parse_eps(eps), norm, image_shape)
            if attack == 'autoattack':
                spec = AttackSpec(attack, norm, eps, steps=opts.autoattack_steps, restarts=1,
                                  square_queries=opts.square_queries)
            elif attack == 'fgsm':
                spec = AttackSpec(attack, norm, eps, steps=1, restarts=0)
            else:
                spec = AttackSpec(attack, norm, eps, steps=opts.pgd_steps, step_size=opts.pgd_step_size,
                                  restarts=opts.pgd_restarts)
            if spec.steps < 1 or spec.restarts < 0 or (spec.step_size is not None and spec.step_size <= 0):
                raise ValueError(f"invalid attack settings {spec}")
            specs.append(spec)
    return specs


def evaluate_models(
        models: Sequence[tuple[str, nn.Module]],
        data,
        options: EvalOptions | dict | None = None,
        out_dir: str | os.PathLike | None = None,
        dataset_name: str | None = None,
) -> list[dict]:
    """Evaluate models side by side on the same images and write ``results.json``, ``results.md`` and plots.

    ``results.json`` records how its numbers were made (:func:`~timm_asap_lab.evaluation.provenance.evaluation_record`:
    the options, the models' names and weight digests, the images' digest, the precision), so that a stored
    result is reused only for the same evaluation (:func:`~timm_asap_lab.evaluation.provenance.record_differences`).

    Args:
        models: (name, model) pairs; each model takes [0, 1] inputs (wrap with
            :func:`timm_asap_lab.evaluation.wrap_model`) and must be in eval mode.
        data: a dataset / DataLoader of (image, label) with uint8 or [0, 1] images of one size, or
            :class:`EvalImages`.
        options: :class:`EvalOptions` or a mapping of its fields.
        out_dir: folder for the artefacts (None: return the rows only).
        dataset_name: recorded in every row (default: the data's class name).

    Returns:
        The flat result rows (each with ``model``, ``dataset``, ``count``, ``seed`` and library versions).

    Raises:
        ValueError: invalid options or inputs (checked before the long passes start), a model in
            training mode, empty data.
    """
    opts = options if isinstance(options, EvalOptions) else EvalOptions.from_dict(options)
    opts.validate()
    if not models:
        raise ValueError("no models to evaluate")
    for name, model in models:
        check_eval_mode(model, f"model {name!r}")
    if out_dir is not None:
        check_folder_path(out_dir, 'the output folder')
    require_dependencies(opts)
    baseline_rows = read_results(opts.baseline_results)[0] if opts.corruptions and opts.baseline_results else None
    if opts.corruptions:
        check_mce_baseline(opts, [n for n, _ in models], baseline_rows)
    images = load_images(data, opts.count, opts.seed, opts.subset_order, workers=opts.workers,
                         batch_size=opts.batch_size, name=dataset_name, progress=opts.progress,
                         max_unreadable=opts.max_unreadable)
    specs = build_attack_specs(opts, images.shape)
    device = resolve_device(opts.device)
    record = evaluation_record(opts, models, images, device)  # before any forward pass
    check_model_classes(models, images, _dataset_classes(data), dataset_name or images.name)
    common = dict(device=device, progress=opts.progress)
    rows: list[dict] = []
    timing: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str):
        nonlocal clock
        now = time.perf_counter()
        timing[stage] = round(now - clock, 3)
        clock = now
        _logger.info(f"evaluation stage {stage!r} took {timing[stage]:.1f} s")

    lap('load')
    if opts.clean:
        rows += evaluate_clean(models, images, opts.batch_size, amp=opts.amp, **common)
        lap('clean')
    corruption_stats: dict = {}
    if opts.corruptions:
        corrupted = _first(images, opts.corruption_count)
        rows += evaluate_corruptions(models, corrupted, opts.corruptions, opts.severities, opts.seed,
                                     opts.corruption_protocol, opts.corruption_source, opts.corruption_dir,
                                     count=opts.count, subset_order=opts.subset_order,
                                     img_size=images.shape[-1] if opts.corruption_source == 'imagenet_c' else None,
                                     batch_size=opts.batch_size, workers=opts.workers, amp=opts.amp,
                                     cache=opts.corruption_cache, generate_workers=opts.corruption_workers,
                                     stats=corruption_stats, **common)
        baseline = opts.mce_baseline or models[0][0]
        alexnet = opts.alexnet_mce
        if alexnet is None:
            alexnet = opts.corruption_source == 'imagenet_c' and tuple(check_severities(opts.severities)) == SEVERITIES
        rows += [{'count': len(corrupted), **r} for r in corruption_summary(rows, baseline, baseline_rows, alexnet=alexnet)]
        lap('corruptions')
    if specs:
        from timm_asap_lab.evaluation.attacks import evaluate_attacks
        rows += evaluate_attacks(models, images, specs, opts.attack_count, opts.batch_size, opts.seed, **common)
        lap('attacks')
    if opts.shift_trials:
        rows += evaluate_shift_consistency(models, _first(images, opts.shift_count), opts.shift_trials, opts.max_shift, opts.shift_mode,
                                           opts.shift_curve, opts.seed, opts.batch_size, amp=opts.amp, **common)
        lap('shift')
    if opts.aliasing_count:
        rows += aliasing_view(models, images, opts.aliasing_count, **common)
        lap('aliasing')
    meta = {'dataset': dataset_name or images.name, 'count': len(images), 'unreadable': images.unreadable,
            'seed': opts.seed, 'device': str(device), 'precision': record['precision'], **library_versions()}
    rows = [{**r, **{k: v for k, v in meta.items() if k not in r}} for r in rows]
    if out_dir is not None:
        write_artefacts(rows, out_dir, {**record, 'timing_s': timing, 'corruption_sets': corruption_stats, **meta},
                        plots=opts.plots)
    return rows


def require_dependencies(opts: EvalOptions) -> None:
    """Import the optional packages the asked-for passes need, before any pass runs.

    Raises:
        ImportError: naming the package, the pass that needs it and the extra that installs it.
    """
    if opts.fgsm_eps or opts.pgd_linf_eps or opts.pgd_l2_eps:
        require('art.attacks.evasion', 'adversarial attacks (FGSM/PGD)')
        require('art.estimators.classification', 'adversarial attacks (FGSM/PGD)')
    if opts.autoattack_eps:
        require('pyautoattack', 'AutoAttack')
    if opts.corruptions and opts.corruption_source == 'generated':
        for module in ('cv2', 'skimage.filters', 'scipy.ndimage'):
            require(module, 'image corruptions')
        if 'frost' in check_corruptions(opts.corruptions):
            require('corrupt_tta', 'the frost corruption (its texture images)')
    if opts.plots:
        require('matplotlib', 'the plots (--plots false skips them)')


def check_mce_baseline(opts: EvalOptions, names: Sequence[str], baseline_rows: Sequence[dict] | None) -> None:
    """Refuse an mCE baseline that is neither a model of this run nor has results for every asked-for
    corruption and severity in ``baseline_rows``.

    Raises:
        ValueError: naming the baseline and what is available.
    """
    baseline = opts.mce_baseline or names[0]
    if baseline in names:
        return
    have = {(r.get('corruption'), r.get('severity')) for r in baseline_rows or []
            if r.get('task') == 'corruption' and r.get('model') == baseline}
    if not have:
        found = sorted({r.get('model') for r in baseline_rows or [] if r.get('task') == 'corruption'})
        raise ValueError(f"mCE baseline {baseline!r} is not a model of this run ({list(names)})"
                         + (f" and has no corruption results in {opts.baseline_results} (it holds {found})"
                            if opts.baseline_results else '; give its results with baseline_results'))
    missing = [(c, s) for c in check_corruptions(opts.corruptions) for s in check_severities(opts.severities)
               if (c, s) not in have]
    if missing:
        raise ValueError(f"mCE baseline {baseline!r} has no result in {opts.baseline_results} for "
                         f"{len(missing)} asked-for corruption sets, e.g. {missing[:3]}")


def _dataset_classes(data) -> list[str] | None:
    if isinstance(data, EvalImages):
        return None
    from timm_asap_lab.data import dataset_classes
    return dataset_classes(getattr(data, 'dataset', data) if isinstance(data, torch.utils.data.DataLoader) else data)


def _model_classes(model: nn.Module, images: EvalImages) -> int:
    """The class count of a model: its ``num_classes`` (timm), else the length of its logits for one image
    (predicted as the evaluation passes predict)."""
    inner = model.model if isinstance(model, NormalizedModel) else model
    n = getattr(inner, 'num_classes', None)
    if isinstance(n, int) and not isinstance(n, bool):
        return n
    device = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device('cpu'))
    return int(predict_logits(model, images.images[:1], device, 'none', model_in_chans(model)).shape[-1])


def check_model_classes(models: Sequence[tuple[str, nn.Module]], images: EvalImages, classes: Sequence[str] | None,
                        where: str) -> None:
    """Refuse a model whose classes are not the data's, by the rule fine-tuning applies
    (:mod:`timm_asap_lab.data.classes`): as many classes as the data's reader knows, every label among them, and
    no class that the model's recorded label names (``pretrained_cfg['label_names']``) put at another label.

    Raises:
        DataError: naming the model, its class count or label names, and the data's.
    """
    from timm_asap_lab.data import check_classes, check_label_names, check_labels
    for name, model in models:
        n = _model_classes(model, images)
        fix = f"evaluate model {name!r} on data with its {n} classes"
        check_classes(classes, n, where, model=f"the class count of model {name!r}", fix=fix)
        check_labels(images.labels, n, where, fix=f"model {name!r} has {n} classes; {fix}")
        inner = model.model if isinstance(model, NormalizedModel) else model
        label_names = (getattr(inner, 'pretrained_cfg', None) or {}).get('label_names')
        check_label_names(classes, label_names, where, f"model {name!r}")


def _first(images: EvalImages, count: int | None) -> EvalImages:
    """The first ``count`` of the evaluated images (all when None or larger)."""
    if count is None or count >= len(images):
        return images
    return EvalImages(images.images[:count], images.labels[:count], images.indices[:count], images.name,
                      images.unreadable)


def write_artefacts(rows: Sequence[dict], out_dir, config: dict | None = None, plots: bool = True) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and (with ``plots``) the PNG figures into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {'results.json': write_results(out / 'results.json', rows, config),
               'results.md': atomic_write_text(out / 'results.md', markdown_report(rows))}
    if plots:
        for name, fn in (('corruptions.png', plot_corruptions), ('attacks.png', plot_attacks),
                         ('shift_consistency.png', plot_shift), ('aliasing.png', plot_aliasing)):
            path = fn(rows, out / name)
            if path is not None:
                written[name] = path
    return written
