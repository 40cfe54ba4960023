"""``timm-asap benchmark-models``: throughput of resnet50 vs its ASAP/FLC/BlurPool/FFT-ASAP versions, of resnet18 vs
its ASAP/FLC versions, or of resnet18_cifar vs its ASAP/FLC versions at 32 px, each converted model in the paper's
placement and/or with the pooling after the strided convolutions (``--pool-position``); ``--profile``: where a
converted model's extra time goes."""
from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch
import yaml

from timm_asap._files import atomic_write_text
from timm_asap_lab.cli._errors import run_cli
from timm_asap_lab.cli._yaml_defaults import parse_args_with_yaml_defaults
from timm_asap_lab.tools.benchmark_models import (AFTER_SUFFIX, DEFAULT_ROUNDS, FAMILIES, MODELS, benchmark_models,
                                                  cpu_peak_rss, format_profile, format_table, placed_labels,
                                                  profile_extra_time, target_checks)
from timm_asap_lab.tools.timing import MIN_ROUNDS, SPREAD_LIMIT

PROG = 'timm-asap benchmark-models'
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


# 'resnetaa50' on the command line for the table label 'resnetaa50 (BlurPool)'; the after-placement labels are
# chosen with --pool-position, not by name
_SHORT_NAMES = {label.split(' ')[0]: label for label in MODELS if not label.endswith(AFTER_SUFFIX)}
POSITIONS = {'before': ('before',), 'after': ('after',), 'both': ('before', 'after')}


def _model_label(name: str) -> str:
    """The table label for a short name (or a label itself); an error naming the allowed short names."""
    label = _SHORT_NAMES.get(name, name)
    if label not in MODELS:
        raise argparse.ArgumentTypeError(f"unknown model {name!r}; allowed: {', '.join(_SHORT_NAMES)}")
    return label


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description='Interleaved inference and training-step throughput of resnet50, resnet50_asap, resnet50_flc, '
                    "timm's resnetaa50 (BlurPool) and resnet50 with the FFT formulation of ASAP, with ratios "
                    'against resnet50 measured in the same run (or, with --family resnet18, of ResNet-18 and its ASAP/FLC '
                    'versions; with --family resnet18_cifar, of the CIFAR-size ResNet-18 and its ASAP/FLC versions at '
                    '32 px). --pool-position after/both times the converted models with the pooling after the strided '
                    'convolutions too. CPU float32 always; CUDA (bfloat16 autocast, channels_last) when a GPU is '
                    'present; each with and without torch.compile. --profile shows where the converted models\' extra '
                    'time goes.')
    p.add_argument('--config', type=Path, default=None,
                   help='YAML file of defaults for these options (keys as the long option names, with _)')
    p.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto',
                   help='auto: CPU, plus CUDA when available (default)')
    p.add_argument('--cuda-dtype', choices=sorted(DTYPES), default='bfloat16')
    p.add_argument('--cuda-channels-last', action=argparse.BooleanOptionalAction, default=True)
    p.add_argument('--cpu-channels-last', action=argparse.BooleanOptionalAction, default=False)
    p.add_argument('--compile', choices=['off', 'on', 'both'], default='both')
    p.add_argument('--family', choices=sorted(FAMILIES), default='resnet50',
                   help='resnet50 or resnet18 (at 224 px), or resnet18_cifar (at 32 px, 10 classes); the first model '
                        'is the baseline of the ratios (default: resnet50)')
    p.add_argument('--pool-position', choices=sorted(POSITIONS), default='before',
                   help="placement of the converted models' pooling for strided convolutions: before (the paper's, "
                        "default), after (the conv at stride 1, then the pooling; labelled '<model> (pool after)') or "
                        "both, timed in the same run")
    p.add_argument('--models', nargs='+', type=_model_label, metavar='MODEL', default=None,
                   help=f"models of the family, of {', '.join(_SHORT_NAMES)} (default: the whole family)")
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--img-size', type=int, default=None, help="input size (default: 224; 32 for resnet18_cifar)")
    p.add_argument('--profile', action='store_true',
                   help="instead of timing, profile a few training steps of each converted model of the family and "
                        "its baseline (torch.profiler) and write profile.md / profile.json: the pooling modules' "
                        "time and the operators with the most extra time")
    p.add_argument('--rounds', type=int, default=DEFAULT_ROUNDS,
                   help=f"timed interleaved rounds (default {DEFAULT_ROUNDS}); each ratio is the median of the "
                        f"per-round ratios, shown with their lowest and highest; a target verdict needs at least "
                        f"{MIN_ROUNDS} rounds whose ratios agree within {SPREAD_LIMIT:g}x, else it says unreliable")
    p.add_argument('--iters', type=int, default=1, help='steps per model and pass in each round')
    p.add_argument('--warmup', type=int, default=1, help='untimed rounds first (compilation happens here)')
    p.add_argument('--cuda-rounds', type=int, default=None, help='rounds on CUDA (default: 10x --rounds)')
    p.add_argument('--cpu-memory', action=argparse.BooleanOptionalAction, default=True,
                   help='measure the CPU training-step peak RSS of each model in a fresh process')
    p.add_argument('--output-dir', type=Path, default=Path('benchmark_models'),
                   help='writes benchmark_models.json, benchmark_models.md and the resolved config.yaml here')
    p.add_argument('--no-progress', action='store_true')
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse ``argv``; values from ``--config`` YAML become the defaults that the command line overrides."""
    args = parse_args_with_yaml_defaults(build_parser(), argv)
    if args.models:  # YAML defaults skip argparse's type; a YAML string names one model
        names = [args.models] if isinstance(args.models, str) else list(args.models)
        try:
            args.models = [_model_label(str(m)) for m in names]
        except argparse.ArgumentTypeError as err:
            raise SystemExit(f"--models: {err}") from None
    if args.img_size is None:
        args.img_size = 32 if args.family == 'resnet18_cifar' else 224
    if args.pool_position not in POSITIONS:  # a YAML default skips argparse's choices
        raise SystemExit(f"--pool-position must be one of {sorted(POSITIONS)}, got {args.pool_position!r}")
    if args.models:
        foreign = [m for m in args.models if m not in FAMILIES[args.family]]
        if foreign:
            raise SystemExit(f"--models: {', '.join(foreign)} not of the {args.family} family "
                             f"(--family); allowed: {', '.join(FAMILIES[args.family])}")
    for key in ('batch_size', 'img_size', 'rounds', 'iters'):
        if getattr(args, key) < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.warmup < 0:
        raise SystemExit(f"--warmup must be >= 0, got {args.warmup}")
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: no CUDA device is available')
    return args


def _machine() -> str:
    load = os.getloadavg()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'
    return (f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, "
            f"{torch.get_num_threads()} used by torch; GPU: {gpu}; load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")


def _profile(args) -> int:
    device = 'cuda' if args.device == 'cuda' or (args.device == 'auto' and torch.cuda.is_available()) else 'cpu'
    dtype = DTYPES[args.cuda_dtype] if device == 'cuda' else torch.float32
    cl = args.cuda_channels_last if device == 'cuda' else args.cpu_channels_last
    labels = [m for m in placed_labels(args.models or FAMILIES[args.family], POSITIONS[args.pool_position])
              if m != FAMILIES[args.family][0]]
    results = [profile_extra_time(m, device=device, dtype=dtype, batch_size=args.batch_size, img_size=args.img_size,
                                  channels_last=cl, steps=args.rounds) for m in labels]
    text = f"{_machine()}\n\n" + '\n\n'.join(format_profile(r) for r in results) + '\n'
    print(text)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output_dir / 'profile.md', text)
    atomic_write_text(args.output_dir / 'profile.json', json.dumps({'machine': _machine(), 'profiles': results}, indent=1))
    print(f"wrote {args.output_dir}/profile.md and profile.json")
    return 0


def main(argv=None) -> int:
    """Run the command; bad input prints one ``timm-asap benchmark-models: error: ...`` line and returns 2."""
    return run_cli(PROG, lambda: _main(argv))


def _main(argv=None) -> int:
    args = parse_args(argv)
    if args.profile:
        return _profile(args)
    compiles = {'off': [False], 'on': [True], 'both': [False, True]}[args.compile]
    settings = []
    if args.device in ('auto', 'cpu'):
        settings += [('cpu', torch.float32, args.cpu_channels_last, c, args.rounds) for c in compiles]
    if args.device == 'cuda' or (args.device == 'auto' and torch.cuda.is_available()):
        rounds = args.cuda_rounds or 10 * args.rounds
        settings += [('cuda', DTYPES[args.cuda_dtype], args.cuda_channels_last, c, rounds) for c in compiles]
    elif args.device == 'auto':
        print('no CUDA device: CPU only')
    start = _machine()
    print(start)
    rows = []
    for device, dtype, cl, comp, rounds in settings:
        rows += benchmark_models(device, dtype, args.batch_size, args.img_size, cl, comp, args.models, rounds,
                                 args.iters, args.warmup, progress=not args.no_progress, family=args.family,
                                 pool_positions=POSITIONS[args.pool_position])
        if device == 'cuda':
            torch.cuda.empty_cache()
    rss = []
    if args.cpu_memory and any(s[0] == 'cpu' for s in settings):
        labels = [r['model'] for r in rows if r['device'] == 'cpu' and r['pass'] == 'train' and not r['compile']]
        rss = [cpu_peak_rss(label, args.batch_size, args.img_size) for label in dict.fromkeys(labels)]
    end = _machine()
    table = format_table(rows, rss)
    checks = target_checks(rows)
    print(table)
    print('\n'.join(checks))
    print(f"at the end: {end}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output_dir / 'benchmark_models.md', f"start: {start}\nend: {end}\n\n{table}\n\n" + '\n'.join(checks) + '\n')
    atomic_write_text(args.output_dir / 'benchmark_models.json', json.dumps(
        dict(machine_start=start, machine_end=end, rows=rows, cpu_peak_rss=rss, targets=checks), indent=1))
    resolved = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != 'config'}
    atomic_write_text(args.output_dir / 'config.yaml', yaml.safe_dump(resolved, sort_keys=False))
    print(f"wrote {args.output_dir}/benchmark_models.md, benchmark_models.json and config.yaml")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
