"""``timm-asap-evaluate``: evaluate one or more models side by side on the same images.

Clean top-1/top-5, the ImageNet-C/CIFAR-10-C common corruptions (generated on the fly or read from
the pre-generated layouts), FGSM/PGD/AutoAttack-style adversarial robustness (ART) and shift
consistency with a per-layer aliasing view. Writes ``results.json``, ``results.md``, PNG plots and
the resolved options (``evaluate_config.yaml``) into ``--output``.

Examples::

    timm-asap-evaluate --model resnet18_cifar@a.pth --model resnet18_cifar_asap@b.pth \\
        --dataset fashion_mnist --img-size 32 --in-chans 1 --num-classes 10 --count 500 --output out/eval
    timm-asap-evaluate --model preactresnet18_asap@runs/preact_asap --dataset fashion_mnist --split test \\
        --output out/run   # a fine-tuning run folder: its model_args, classes, channels and statistics apply
    timm-asap-evaluate --model resnet50.tv_in1k --model resnet50_asap --pretrained \\
        --dataset folder --data-dir /data/imagenet --split validation \\
        --corruption-source imagenet_c --corruption-dir /data/imagenet-c --output out/in1k
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import yaml

from timm_asap._files import atomic_write_text
from timm_asap.hub.errors import HubDownloadError
from timm_asap_lab.cli._errors import STATUS_BAD_INPUT, STATUS_UNREACHABLE, run_cli
from timm_asap_lab.cli._yaml_defaults import read_yaml_defaults
from timm_asap_lab.evaluation.runner import EvalOptions
from timm_asap_lab.files import check_folder_path, check_output_folder
from timm_asap_lab.runtime import AMP_CHOICES

__all__ = ['main', 'build_parser', 'parse_model_spec']

_logger = logging.getLogger(__name__)

# CLI-only keys (the rest are EvalOptions fields)
_MODEL_DATA_KEYS = ('model', 'pretrained', 'num_classes', 'in_chans', 'img_size', 'mean', 'std', 'dataset', 'data_dir',
                    'split', 'crop_pct', 'interpolation', 'output', 'run_config')
_LIST_FLOAT = ('fgsm_eps', 'pgd_linf_eps', 'pgd_l2_eps', 'autoattack_eps')


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(',') if v.strip()]


def _opt_int(value: str):
    return None if value.lower() in ('none', 'all', '') else int(value)


def _bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ('1', 'true', 'yes', 'on'):
        return True
    if value.lower() in ('0', 'false', 'no', 'off'):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    d = EvalOptions()
    p = argparse.ArgumentParser(prog='timm-asap-evaluate', description=__doc__.split('\n\n')[0])
    p.add_argument('--config', default=None, help='YAML file of defaults (keys: the long option names with _)')
    g = p.add_argument_group('models')
    g.add_argument('--model', action='append', default=None, metavar='[LABEL=]NAME[@CHECKPOINT]',
                   help='timm model name (repeat for side-by-side); registered *_asap/*_flc names work. CHECKPOINT: '
                        'a weights file (.safetensors, a fine-tuning last.pth/best.pth, a timm .pth.tar), a '
                        'fine-tuning run folder (config.yaml + model.safetensors) or a Hub folder (config.json + '
                        'model.safetensors); what it records (architecture and pooling, checked against NAME; '
                        'model_args, classes, channels, label names, normalisation, input size) is applied')
    g.add_argument('--pretrained', action='store_true', help='load pretrained weights through timm')
    g.add_argument('--num-classes', type=int, default=None,
                   help="classifier outputs (default: the checkpoint's, else the model's)")
    g.add_argument('--in-chans', type=int, default=None,
                   help="input channels (default: the checkpoint's, else the model's)")
    g.add_argument('--mean', type=float, nargs='+', default=None,
                   help="normalisation mean, one value per input channel or one (default: the checkpoint's, else "
                        "pretrained_cfg)")
    g.add_argument('--std', type=float, nargs='+', default=None)
    g.add_argument('--run-config', default=None,
                   help='a hub_configs YAML, a shipped config name, or a fine-tuning run folder (its config.yaml): '
                        'model, model_args, classes, channels, size and data defaults')
    g = p.add_argument_group('data')
    g.add_argument('--dataset', default='fashion_mnist',
                   help="'fashion_mnist', 'folder' (ImageFolder), or any timm.data name (hfds/..., torch/...)")
    g.add_argument('--data-dir', default=None)
    g.add_argument('--split', default='validation')
    g.add_argument('--img-size', type=int, default=None, help="input size (default: the model's)")
    g.add_argument('--crop-pct', type=float, default=None,
                   help="centre-crop fraction (default: 1.0 for Fashion-MNIST, else the model's pretrained_cfg)")
    g.add_argument('--interpolation', default=None, help="resize interpolation (default: the model's pretrained_cfg)")
    g.add_argument('--count', type=_opt_int, default=d.count, help="images evaluated ('all' for every one)")
    g.add_argument('--seed', type=int, default=d.seed)
    g.add_argument('--subset-order', choices=('random', 'first'), default=d.subset_order)
    g.add_argument('--batch-size', type=int, default=d.batch_size)
    g.add_argument('--workers', type=int, default=d.workers, help='DataLoader workers reading images')
    g.add_argument('--max-unreadable', type=float, default=d.max_unreadable,
                   help='fraction of the selected images that may be unreadable (skipped and counted)')
    g.add_argument('--device', default=d.device)
    g.add_argument('--amp', choices=AMP_CHOICES, default=d.amp)
    g.add_argument('--clean', type=_bool, default=d.clean)
    g = p.add_argument_group('common corruptions')
    g.add_argument('--corruptions', default='benchmark',
                   help="comma list, 'benchmark' (15), 'extra' (4), 'all' (19) or 'none'")
    g.add_argument('--severities', default='1,2,3,4,5')
    g.add_argument('--corruption-protocol', choices=('auto', 'imagenet', 'cifar'), default=d.corruption_protocol)
    g.add_argument('--corruption-source', choices=('generated', 'imagenet_c', 'cifar_c'), default=d.corruption_source)
    g.add_argument('--corruption-dir', default=None)
    g.add_argument('--corruption-cache', default=None,
                   help='folder keeping each generated corruption set for later runs (default: not kept)')
    g.add_argument('--corruption-workers', type=int, default=None,
                   help='processes generating corruptions (default: every core; 0: in this process)')
    g.add_argument('--mce-baseline', default=None, help='model label normalising mCE (default: the first model)')
    g.add_argument('--baseline-results', default=None, help="results.json holding the mCE baseline's rows")
    g.add_argument('--alexnet-mce', type=_bool, default=None,
                   help='normalise by AlexNet too (default: when the source is imagenet_c)')
    g = p.add_argument_group('adversarial attacks (FGSM/PGD: ART; AutoAttack: pyautoattack); eps in [0, 1] pixel '
                             'units, fractions like 8/255 allowed')
    g.add_argument('--fgsm-eps', default='1/255,2/255,4/255', help="comma list or 'none'")
    g.add_argument('--pgd-linf-eps', default='1/255,2/255,4/255')
    g.add_argument('--pgd-l2-eps', default='none')
    g.add_argument('--pgd-steps', type=int, default=d.pgd_steps)
    g.add_argument('--pgd-step-size', type=float, default=None, help='default 2.5 eps / steps')
    g.add_argument('--pgd-restarts', type=int, default=d.pgd_restarts)
    g.add_argument('--autoattack-eps', default='none',
                   help="eps list of AutoAttack, standard version (Croce & Hein's pyautoattack; slow)")
    g.add_argument('--autoattack-norm', choices=('linf', 'l2'), default=d.autoattack_norm)
    g.add_argument('--autoattack-steps', type=int, default=d.autoattack_steps,
                   help='APGD iterations: the standard version runs 100')
    g.add_argument('--square-queries', type=int, default=d.square_queries,
                   help='Square queries: the standard version runs 5000')
    g.add_argument('--attack-count', type=_opt_int, default=d.attack_count,
                   help='images attacked (the first ones of the evaluated subset)')
    g = p.add_argument_group('shift consistency and aliasing')
    g.add_argument('--shift-trials', type=int, default=d.shift_trials, help='0 skips shift consistency')
    g.add_argument('--max-shift', type=int, default=None)
    g.add_argument('--shift-mode', choices=('circular', 'crop'), default=d.shift_mode)
    g.add_argument('--shift-curve', type=_bool, default=d.shift_curve)
    g.add_argument('--aliasing-count', type=int, default=d.aliasing_count, help='0 skips the aliasing view')
    g = p.add_argument_group('output')
    g.add_argument('--output', default='output/evaluation')
    g.add_argument('--plots', type=_bool, default=d.plots)
    g.add_argument('--progress', type=_bool, default=d.progress)
    _show_defaults(p)
    return p


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append ``(default: ...)`` to every option's help that has a default and does not name one itself
    (argparse's ArgumentDefaultsHelpFormatter skips options without help text)."""
    for action in parser._actions:
        if not action.option_strings or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            continue
        if action.help is None or 'default' not in action.help:
            action.help = f"{action.help or ''} (default: %(default)s)".strip()


def parse_model_spec(spec: str) -> tuple[str, str, str]:
    """``[LABEL=]NAME[@CHECKPOINT]`` -> (label, name, checkpoint).

    Raises:
        ValueError: an empty name.
    """
    label, rest = spec.split('=', 1) if '=' in spec else (None, spec)
    name, ckpt = rest.split('@', 1) if '@' in rest else (rest, '')
    name = name.strip()
    if not name:
        raise ValueError(f"--model {spec!r}: empty model name; expected [LABEL=]NAME[@CHECKPOINT]")
    return (label or name).strip(), name, ckpt.strip()


def _eps_list(value) -> list[float]:
    from timm_asap_lab.evaluation.attacks import parse_eps
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else ([] if str(value).lower() in ('none', '') else _csv(str(value)))
    return [parse_eps(v) for v in items]


def _apply_yaml_defaults(parser: argparse.ArgumentParser, path: str) -> dict:
    data = read_yaml_defaults(parser, path)
    for key in ('corruptions', 'severities', *_LIST_FLOAT):
        if isinstance(data.get(key), list):
            data[key] = ','.join(str(v) for v in data[key]) if data[key] else 'none'
    if isinstance(data.get('model'), str):
        data['model'] = [data['model']]
    parser.set_defaults(**data)
    return data


def _resolve(args) -> tuple[EvalOptions, dict]:
    """Options for the library and the model/data settings of the CLI."""
    corruptions = [] if str(args.corruptions).lower() in ('none', '') else args.corruptions
    opts = EvalOptions(
        count=args.count, seed=args.seed, subset_order=args.subset_order, batch_size=args.batch_size,
        workers=args.workers, max_unreadable=args.max_unreadable, device=args.device, amp=args.amp, clean=args.clean,
        corruptions=corruptions, corruption_cache=args.corruption_cache, corruption_workers=args.corruption_workers,
        severities=[int(s) for s in _csv(str(args.severities))] if corruptions else list(EvalOptions().severities),
        corruption_protocol=args.corruption_protocol, corruption_source=args.corruption_source,
        corruption_dir=args.corruption_dir, mce_baseline=args.mce_baseline, baseline_results=args.baseline_results,
        alexnet_mce=args.alexnet_mce, fgsm_eps=_eps_list(args.fgsm_eps), pgd_linf_eps=_eps_list(args.pgd_linf_eps),
        pgd_l2_eps=_eps_list(args.pgd_l2_eps), pgd_steps=args.pgd_steps, pgd_step_size=args.pgd_step_size,
        pgd_restarts=args.pgd_restarts, autoattack_eps=_eps_list(args.autoattack_eps),
        autoattack_norm=args.autoattack_norm, autoattack_steps=args.autoattack_steps,
        square_queries=args.square_queries, attack_count=args.attack_count, shift_trials=args.shift_trials,
        max_shift=args.max_shift, shift_mode=args.shift_mode, shift_curve=args.shift_curve,
        aliasing_count=args.aliasing_count, plots=args.plots, progress=args.progress)
    opts.validate()
    setup = {k: getattr(args, k) for k in _MODEL_DATA_KEYS}
    return opts, setup


def _apply_run_config(args) -> None:
    """Fill model/data settings not given on the command line from a hub_configs YAML; its ``model_args``
    (with the band mode) build every model of its architecture."""
    from timm_asap_lab.config import find_run_config, load_config
    from timm_asap_lab.config_model import model_kwargs
    cfg = load_config((Path(args.run_config).is_dir() and find_run_config(args.run_config)) or args.run_config)
    if not args.model:
        args.model = [cfg.name]
    args.model_args = {k: v for k, v in model_kwargs(cfg).items() if k not in ('num_classes', 'in_chans')}
    args.model_args_of = cfg.model.architecture
    args.num_classes = args.num_classes or cfg.model.num_classes
    args.in_chans = args.in_chans or cfg.model.in_chans
    args.img_size = args.img_size or cfg.model.img_size
    if args.mean is None and cfg.data.mean:
        args.mean = list(cfg.data.mean)
    if args.std is None and cfg.data.std:
        args.std = list(cfg.data.std)
    if cfg.data.dataset:
        args.dataset = cfg.data.dataset
    args.data_dir = args.data_dir or cfg.data.data_dir
    if args.split == 'validation':
        args.split = cfg.data.val_split
    try:  # the fine-tuning pipeline's own resolution of crop, interpolation and statistics
        from timm_asap_lab.data import run_data_config
    except ImportError:
        run_data_config = None
    if run_data_config is not None:
        dc = run_data_config(cfg)
        args.crop_pct = args.crop_pct if args.crop_pct is not None else dc.get('crop_pct')
        args.interpolation = args.interpolation or dc.get('interpolation')
        if cfg.data.mean is not None or cfg.data.std is not None:
            args.mean = args.mean or list(dc['mean'])
            args.std = args.std or list(dc['std'])


def _build_models(args):
    from timm_asap_lab.evaluation.wrapper import create_eval_model
    models, labels = [], set()
    for spec in args.model:
        label, name, ckpt = parse_model_spec(spec)
        if label in labels:
            raise ValueError(f"two models share the label {label!r}; give labels with LABEL=NAME")
        labels.add(label)
        if not (args.pretrained or ckpt):
            _logger.warning(
                f"{label}: no weights given (neither --pretrained nor NAME@CHECKPOINT): evaluating random weights")
        same = getattr(args, 'model_args_of', None) == name.split('.')[0]
        model = create_eval_model(name, pretrained=args.pretrained, checkpoint_path=ckpt, num_classes=args.num_classes,
                                  in_chans=args.in_chans, mean=args.mean, std=args.std,
                                  **((getattr(args, 'model_args', None) or {}) if same else {}))
        models.append((label, model))
    return models


def _evaluate(parser: argparse.ArgumentParser, argv) -> int:
    """The command's work: every input is checked (options, models and checkpoints, data, output folder)
    before the first evaluation pass starts."""
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        _apply_yaml_defaults(parser, pre.config)
    args = parser.parse_args(argv)
    if args.run_config:
        _apply_run_config(args)
    if not args.model:
        raise ValueError("give at least one --model (or --run-config)")
    opts, setup = _resolve(args)
    check_folder_path(args.output, '--output')
    check_output_folder(args.output, writer='timm-asap evaluate', ours=['evaluate_config.yaml', 'results.json'])
    models = _build_models(args)
    from timm_asap_lab.evaluation.data import create_eval_dataset
    from timm_asap_lab.evaluation.wrapper import model_input_info
    info = model_input_info(models[0][1])
    img_size = args.img_size or (info['input_size'][-1] if info['input_size'] else 224)
    in_chans = args.in_chans or info['in_chans'] or 3
    if args.crop_pct is None:
        from timm_asap_lab.data import is_fashion_mnist
        args.crop_pct = 1.0 if is_fashion_mnist(args.dataset) else float(info.get('crop_pct') or 1.0)
    args.interpolation = args.interpolation or info.get('interpolation') or 'bilinear'
    setup.update(crop_pct=args.crop_pct, interpolation=args.interpolation)
    dataset = create_eval_dataset(args.dataset, args.data_dir, args.split, img_size, args.crop_pct,
                                  args.interpolation, in_chans)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / 'evaluate_config.yaml', yaml.safe_dump(
        {**setup, 'img_size': img_size, 'in_chans': in_chans, **dataclasses.asdict(opts)}, sort_keys=False))
    from timm_asap_lab.evaluation.runner import evaluate_models
    rows = evaluate_models(models, dataset, opts, out, dataset_name=f'{args.dataset or "folder"}:{args.split}')
    from timm_asap_lab.evaluation.report import markdown_report
    print(markdown_report(rows))
    _logger.info(f"wrote {out / 'results.json'}, {out / 'results.md'} and plots")
    return 0


def main(argv=None) -> int:
    """Run the evaluation.

    Returns:
        0 on success; 2 for arguments, checkpoints, data or options that cannot be used (one line on stderr,
        before any evaluation pass); 3 when pretrained weights are neither downloadable nor cached.
    """
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    logging.getLogger('art').setLevel(logging.WARNING)  # ART logs every attack call at INFO
    parser = build_parser()
    from timm_asap.models import WeightsNotAvailableError  # a tag without published weights: bad input, one line
    return run_cli('timm-asap-evaluate', lambda: _evaluate(parser, argv),
                   [(HubDownloadError, STATUS_UNREACHABLE), (WeightsNotAvailableError, STATUS_BAD_INPUT)])


if __name__ == '__main__':
    raise SystemExit(main())
