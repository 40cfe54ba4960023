"""The Fashion-MNIST robustness study: baseline vs FLC vs ASAP, trained, evaluated, published, reloaded.

For each CIFAR-size family (``resnet18_cifar`` by default; ``preactresnet18`` and ``wide_resnet28_10``
with ``--full``) the baseline and its ``_flc`` and ``_asap`` variants are trained with the same recipe
and seed (the shipped ``resnet18_cifar.fmnist`` recipe), evaluated side by side on the same test images
(clean, the 15 corruptions x 5 severities, FGSM/PGD at several eps, shift consistency), written as Hub
folders (dry run, no network) and loaded back by name to check that the published weights give the
trained model's logits. Everything lands under one output folder; re-running resumes finished work.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .config import RunConfig, apply_overrides, load_config
from .models.weight_tags import HUB_ORG

__all__ = ['StudyOptions', 'FAMILIES', 'VARIANT_SUFFIXES', 'default_options', 'full_options', 'run_study',
           'study_table']

_logger = logging.getLogger(__name__)

FAMILIES = ('resnet18_cifar', 'preactresnet18', 'wide_resnet28_10')
VARIANT_SUFFIXES = ('', '_flc', '_asap')  # baseline, FLC, ASAP
RECIPE = 'resnet18_cifar.fmnist'          # the shipped config every model of the study is trained with


@dataclass
class StudyOptions:
    """What the study runs.

    Attributes:
        output_dir: the folder holding every artefact.
        families: CIFAR-size families; each is trained as baseline, ``_flc`` and ``_asap``.
        seeds: training seeds (results are reported as mean and spread over them).
        epochs: training epochs (None: the recipe's).
        train_subset: training images (None: all 60k).
        val_subset: test images used for validation during training (None: all 10k).
        batch_size: training batch size (None: the recipe's).
        eval_count: test images for clean, corruption and shift evaluation.
        attack_count: images attacked (the first of the evaluated ones; at most ``eval_count``).
        severities: corruption severities.
        eps: L-inf eps (in [0, 1] pixel units) for FGSM and PGD.
        pgd_steps: PGD iterations.
        shift_trials: random shift pairs per image.
        amp: autocast for the clean, corruption and shift passes (``bf16``, ``fp16``, ``none`` or ``auto``:
            bf16 on CUDA only); attacks always run in float32.
        data_dir: Fashion-MNIST IDX folder (None: Debian's, else a torchvision download).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        workers: DataLoader workers (0 on a small CPU: loading in the main process leaves the cores to
            the model).
        progress: progress bars.
        full: the complete recipe (recorded in the outputs).
    """

    output_dir: str = 'study_output'
    families: list[str] = field(default_factory=lambda: ['resnet18_cifar'])
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: int | None = 2
    train_subset: int | None = 3000
    val_subset: int | None = 500
    batch_size: int | None = 64
    eval_count: int = 150
    attack_count: int = 50
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    eps: list[float] = field(default_factory=lambda: [1 / 255, 2 / 255, 4 / 255])
    pgd_steps: int = 5
    shift_trials: int = 2
    amp: str = 'bf16'
    data_dir: str | None = None
    device: str = 'auto'
    workers: int = 0
    progress: bool = True
    full: bool = False

    def validate(self) -> StudyOptions:
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown or not self.families:
            raise ValueError(f"families must be a non-empty subset of {list(FAMILIES)}, got {self.families}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        for key in ('epochs', 'train_subset', 'val_subset', 'batch_size'):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be >= 1 or None, got {value}")
        for key in ('eval_count', 'attack_count', 'pgd_steps'):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.amp not in ('auto', 'bf16', 'fp16', 'none'):
            raise ValueError(f"amp must be one of ['auto', 'bf16', 'fp16', 'none'], got {self.amp!r}")
        if self.shift_trials < 0:
            raise ValueError(f"shift_trials must be >= 0, got {self.shift_trials}")
        if any(not 0 <= e <= 1 for e in self.eps):
            raise ValueError(f"eps must lie in [0, 1] (pixel units), got {self.eps}")
        return self


def default_options(**overrides) -> StudyOptions:
    """The CPU default: one family, one seed, 3000 training images, two epochs, 150 test images (50 attacked)."""
    return StudyOptions(**overrides).validate()


def full_options(**overrides) -> StudyOptions:
    """``--full``: all three families, 3 seeds, all 60k training images, the recipe's epochs, the whole test set."""
    opts = dict(families=list(FAMILIES), seeds=[0, 1, 2], epochs=None, train_subset=None, val_subset=None,
                batch_size=None, eval_count=10000, attack_count=1000, pgd_steps=10, shift_trials=5, workers=8,
                amp='auto', full=True)
    opts.update(overrides)
    return StudyOptions(**opts).validate()


def _stage(message: str) -> None:
    print(f"[study] {message}", flush=True)


def _device(name: str) -> torch.device:
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def locate_data(data_dir: str | None) -> tuple[str, str]:
    """Find (or download) Fashion-MNIST; returns (folder, a sentence saying where it came from)."""
    from .data import DEFAULT_FASHION_MNIST_DIR, FashionMNIST, find_fashion_mnist

    if data_dir is None and find_fashion_mnist(DEFAULT_FASHION_MNIST_DIR, 'train') is not None:
        return DEFAULT_FASHION_MNIST_DIR, f"Debian's dataset-fashion-mnist ({DEFAULT_FASHION_MNIST_DIR})"
    ds = FashionMNIST(data_dir, split='test', download=True)  # raises a DataError naming what is missing
    FashionMNIST(str(ds.root), split='train', download=True)
    source = 'the given folder' if data_dir is not None else "torchvision's download"
    return str(ds.root), f"{source} ({ds.root})"


def study_config(arch: str, seed: int, opts: StudyOptions, data_dir: str) -> RunConfig:
    """The shared recipe with the architecture, pooling, seed and the size options of the study applied."""
    base = load_config(RECIPE)
    pool = 'asap' if arch.endswith('_asap') else 'flc' if arch.endswith('_flc') else 'none'
    overrides = [f"model.architecture={arch}", f"model.pool={pool}", f"train.seed={seed}",
                 f"data.data_dir={data_dir}", f"data.workers={opts.workers}",
                 f"data.train_subset={'null' if opts.train_subset is None else opts.train_subset}",
                 f"data.val_subset={'null' if opts.val_subset is None else opts.val_subset}",
                 f"hub.repo_id={HUB_ORG}/{arch}.fmnist"]
    if opts.epochs is not None:
        overrides.append(f"train.epochs={opts.epochs}")
        overrides.append(f"train.warmup_epochs={min(base.train.warmup_epochs, max(0, opts.epochs - 1))}")
    if opts.batch_size is not None:
        overrides.append(f"train.batch_size={opts.batch_size}")
    return apply_overrides(base, overrides)


def _json_dump(path: Path, data: Any) -> Path:
    tmp = path.with_name(f'.{path.name}.tmp')
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
    return path


def _eval_options(opts: StudyOptions, seed: int, device: torch.device) -> dict:
    return dict(count=opts.eval_count, seed=seed, batch_size=128, workers=opts.workers, device=device.type,
                corruptions='benchmark', severities=list(opts.severities), corruption_protocol='cifar',
                fgsm_eps=list(opts.eps), pgd_linf_eps=list(opts.eps), pgd_steps=opts.pgd_steps,
                attack_count=min(opts.attack_count, opts.eval_count), shift_trials=opts.shift_trials,
                shift_curve=opts.full, amp=opts.amp, progress=opts.progress)


def _headline(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per model: clean top-1, mean corruption accuracy, mCE, attack accuracies, shift consistency."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        m = out.setdefault(r['model'], {})
        task = r.get('task')
        if task == 'clean':
            m['clean top-1'] = r['top1']
        elif task == 'corruption_summary' and r.get('corruption') == 'mean':
            m['corruption mCA'] = r['mca']
            if r.get('mce') is not None:
                m['mCE'] = r['mce']
        elif task == 'attack' and r.get('component') is None:
            m[f"{r['attack']} eps={r['eps'] * 255:g}/255"] = r['robust_top1']
        elif task == 'shift':
            m['shift consistency'] = r['consistency']
    return out


def study_table(per_seed: dict[int, list[dict]]) -> tuple[str, list[dict]]:
    """Mean and spread over seeds of every headline metric, as Markdown and as rows."""
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
            values = [heads[s][model][metric] for s in heads if metric in heads[s].get(model, {})]
            if values:
                row[metric] = statistics.fmean(values)
                row[f'{metric} std'] = statistics.stdev(values) if len(values) > 1 else 0.0
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
            cells.append(cell)
        lines.append(f"| {row['model']} | " + ' | '.join(cells) + ' |')
    note = (f"Accuracies, mCE and shift consistency in %, {'mean ± std over seeds ' + str(sorted(per_seed)) if spread else 'seed ' + str(sorted(per_seed)[0])}; "
            f"mCE normalised by the first (baseline) model of each family.")
    return '\n'.join(lines) + '\n\n' + note + '\n', rows


def _plot_summary(rows: list[dict], path: Path) -> Path:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    metrics = [k for k in rows[0] if k not in ('model', 'seeds', 'mCE') and not k.endswith(' std')]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(metrics)), 3.6))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        xs = [j + i * width for j in range(len(metrics))]
        ax.bar(xs, [row.get(m, math.nan) for m in metrics], width,
               yerr=[row.get(f'{m} std', 0.0) for m in metrics], label=row['model'], capsize=2)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))])
    ax.set_xticklabels(metrics, rotation=25, ha='right', fontsize=8)
    ax.set_ylabel('accuracy / agreement (%)')
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title('Fashion-MNIST: baseline vs FLC vs ASAP')
    fig.tight_layout()
    tmp = path.with_name(f'.{path.stem}.tmp.png')
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def _reload_check(arch: str, cfg: RunConfig, trained: torch.nn.Module, hub_dir: Path, cache_dir: Path,
                  images: torch.Tensor) -> dict[str, Any]:
    """Load the published folder back by name (``local-dir:`` and ``hf-hub:`` from an offline cache)
    and compare its logits with the trained model's on uint8 ``images``."""
    import timm
    from huggingface_hub import constants as hf_constants

    from .evaluation import wrap_model
    from .hub import load_hub_folder, seed_hub_cache

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


def run_study(opts: StudyOptions | None = None, log: Callable[[str], None] = _stage) -> dict[str, Any]:
    """Run (or resume) the study and return its summary; every artefact is written under ``opts.output_dir``.

    Layout::

        <output_dir>/study.json            the options, data source, timings, the table rows, reload checks
        <output_dir>/summary.md, summary.png   the side-by-side table (mean ± std over seeds) and its plot
        <output_dir>/runs/<arch>/seed<k>/  fine-tuning outputs (config.yaml, model.safetensors, metrics.json, ...)
        <output_dir>/eval/<family>/seed<k>/ results.json, results.md and the evaluation plots
        <output_dir>/hub/<arch>/           the Hub folder written by the dry-run publish
        <output_dir>/hf_cache/             an offline Hub cache used to reload by name
    """
    from .evaluation import create_eval_dataset, evaluate_models, load_images, wrap_model
    from .evaluation.report import read_results
    from .hub import build_hub_folder, load_eval_results, load_trained_model
    from .train import ensure_finetuned

    opts = (opts or default_options()).validate()
    out = Path(opts.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(opts.device)
    timings: dict[str, float] = {}
    start = time.perf_counter()

    data_dir, source = locate_data(opts.data_dir)
    preset = full_options() if opts.full else default_options()
    changed = [k for k in ('families', 'seeds', 'epochs', 'train_subset', 'val_subset', 'eval_count', 'attack_count',
                           'pgd_steps', 'shift_trials') if getattr(opts, k) != getattr(preset, k)]
    size = ('full recipe' if opts.full else 'CPU default: a subset and few epochs') + \
        (f" with changed {', '.join(changed)}" if changed else '') + \
        f" - {opts.train_subset or 60000} training images, {opts.epochs or 'recipe'} epoch(s), " \
        f"{opts.eval_count} test images ({opts.attack_count} attacked), seeds {opts.seeds}, device {device.type}"
    log(f"data: Fashion-MNIST from {source}")
    log(f"size: {size}")
    _json_dump(out / 'options.json', dataclasses.asdict(opts))

    archs = {fam: [fam + s for s in VARIANT_SUFFIXES] for fam in opts.families}
    configs = {(a, seed): study_config(a, seed, opts, data_dir) for fam in archs for a in archs[fam] for seed in opts.seeds}

    t = time.perf_counter()
    train_metrics = {}
    for (arch, seed), cfg in configs.items():
        run_dir = out / 'runs' / arch / f'seed{seed}'
        metrics = ensure_finetuned(cfg, run_dir, device=device, progress=opts.progress)
        train_metrics[f'{arch}/seed{seed}'] = {k: metrics.get(k) for k in ('val_top1', 'best_metric', 'train_images_per_sec')}
        log(f"trained {arch} seed {seed}: val top-1 {metrics.get('val_top1', float('nan')):.2f}% ({run_dir})")
    timings['train_s'] = time.perf_counter() - t

    t = time.perf_counter()
    recipe = configs[(archs[opts.families[0]][0], opts.seeds[0])]
    test_set = create_eval_dataset('fashion_mnist', data_dir, split='test', img_size=recipe.model.img_size,
                                   crop_pct=recipe.data.crop_pct, interpolation=recipe.data.interpolation,
                                   in_chans=recipe.model.in_chans)
    per_family_seed: dict[str, dict[int, list[dict]]] = {}
    for fam, fam_archs in archs.items():
        per_family_seed[fam] = {}
        for seed in opts.seeds:
            eval_dir = out / 'eval' / fam / f'seed{seed}'
            if (eval_dir / 'results.json').is_file():
                rows, _ = read_results(eval_dir / 'results.json')
                log(f"evaluated {fam} seed {seed}: found {eval_dir / 'results.json'}, not evaluating again")
            else:
                images = load_images(test_set, count=opts.eval_count, seed=seed,
                                     name='fashion_mnist/test', progress=False)
                models = []
                for arch in fam_archs:
                    cfg = configs[(arch, seed)]
                    net = load_trained_model(cfg, out / 'runs' / arch / f'seed{seed}' / 'model.safetensors')
                    models.append((arch, wrap_model(net, cfg.data.mean, cfg.data.std)))
                rows = evaluate_models(models, images, _eval_options(opts, seed, device), out_dir=eval_dir,
                                       dataset_name='fashion_mnist/test')
                log(f"evaluated {fam} seed {seed}: {len(rows)} result rows -> {eval_dir}")
            per_family_seed[fam][seed] = rows
    timings['evaluate_s'] = time.perf_counter() - t

    t = time.perf_counter()
    first_seed = opts.seeds[0]
    reload_checks = []
    probe = load_images(test_set, count=16, seed=123, progress=False).images
    for fam, fam_archs in archs.items():
        for arch in fam_archs:
            cfg = configs[(arch, first_seed)]
            hub_dir = out / 'hub' / arch
            trained = load_trained_model(cfg, out / 'runs' / arch / f'seed{first_seed}' / 'model.safetensors')
            build_hub_folder(trained, cfg, hub_dir, results=load_eval_results(out / 'eval' / fam / f'seed{first_seed}'),
                             eval_model=arch)
            check = _reload_check(arch, cfg, trained, hub_dir, out / 'hf_cache', probe)
            reload_checks.append(check)
            verdict = 'identical logits' if check['identical'] else f"max |logit diff| {check['max_abs_logit_diff']:.2e}"
            log(f"published {arch} -> {hub_dir} (dry run); reloaded by name: {verdict}")
            if check['max_abs_logit_diff'] > 1e-5:
                raise RuntimeError(f"{arch}: the published weights do not reproduce the trained model "
                                   f"(max |logit diff| {check['max_abs_logit_diff']:.3g})")
    timings['publish_reload_s'] = time.perf_counter() - t

    tables, all_rows = [], []
    for fam in archs:
        table, rows = study_table(per_family_seed[fam])
        tables.append(f"### {fam}\n\n{table}")
        all_rows += rows
    summary_md = (f"# Fashion-MNIST robustness study\n\nData: {source}. Size: {size}.\n\n" + '\n'.join(tables))
    (out / 'summary.md').write_text(summary_md)
    _plot_summary(all_rows, out / 'summary.png')
    timings['total_s'] = time.perf_counter() - start
    result = dict(options=dataclasses.asdict(opts), data_source=source, size=size, table=all_rows,
                  train=train_metrics, reload=reload_checks, timings=timings)
    _json_dump(out / 'study.json', result)
    print('\n' + summary_md, flush=True)
    log(f"done in {timings['total_s'] / 60:.1f} min; artefacts under {out}")
    return result

