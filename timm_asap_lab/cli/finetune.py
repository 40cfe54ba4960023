"""``timm-asap-finetune``: convert a base timm checkpoint to its ASAP/FLC model and fine-tune it.

Examples::

    timm-asap-finetune --config resnet18_cifar_asap.fmnist --set train.epochs=2 data.train_subset=5000
    torchrun --nproc_per_node 8 -m timm_asap_lab.cli.finetune --config hub_configs/resnet50_asap.ft_in1k.yaml \\
        --data-dir /data/imagenet --output output/r50_asap
    timm-asap-finetune --output output/r50_asap --resume   # after preemption: the run's own config.yaml

The config is a ``hub_configs/*.yaml`` file or a shipped config's name; ``--set section.key=value``
overrides any key (values are YAML: ``--set train.lr=0.1 model.model_args='{drop_rate: 0.1}'``), and
the shortcut flags (``--epochs``, ``--data-dir``, ...) are the same as the matching ``--set``. The
resolved config is saved as ``<output>/config.yaml``.

``model.base`` names the base checkpoint: a timm name with tag, ``hf-hub:<org>/<name>``,
``local-dir:<folder>``, a ``.safetensors``/``.pth`` file or a fine-tuning run folder (see
:mod:`timm_asap_lab.train.model`); ``convert_asap.fmnist`` is the shipped recipe for a base of your own::

    timm-asap-finetune --config convert_asap.fmnist --set model.base=runs/my_base --output runs/my_asap

Exit status: 0 done; 2 bad config, arguments or base checkpoint (one line ``timm-asap-finetune: error:
...``); 1 the run failed (data, non-finite loss, checkpoint); 3 an ``hf-hub:`` base is neither reachable
nor cached; 128 + signal number when SIGTERM/SIGINT stopped it after writing a resumable checkpoint.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import yaml

from timm_asap_lab.cli._errors import STATUS_BAD_INPUT, STATUS_FAILED, STATUS_UNREACHABLE, run_cli
from timm_asap_lab.config import RUN_CONFIG_FILE, ConfigError, apply_overrides, load_config

__all__ = ['main', 'build_parser']

_PROG = 'timm-asap-finetune'

_SHORTCUTS = {  # flag dest -> config key
    'data_dir': 'data.data_dir',
    'epochs': 'train.epochs',
    'batch_size': 'train.batch_size',
    'lr': 'train.lr',
    'workers': 'data.workers',
    'amp_dtype': 'train.amp_dtype',
    'seed': 'train.seed',
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``timm-asap-finetune``."""
    p = argparse.ArgumentParser(
        prog='timm-asap-finetune',
        description='Fine-tune an ASAP/FLC model from a hub_configs YAML: load the base timm weights into the '
                    'ASAP/FLC architecture (zero-shot conversion), then train. Runs on one CPU/GPU or under '
                    'torchrun (DDP).',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='model.base: a timm name with tag, hf-hub:<org>/<name>, local-dir:<folder>, a .safetensors/.pth file '
               'or a fine-tuning run folder (--config convert_asap.fmnist --set model.base=...: convert your own '
               'pretrained CNN). Exit status: 0 done, 2 bad config/arguments/base, 1 failed run, 3 Hub unreachable, '
               '128+N stopped by signal N (a resumable checkpoint was written).')
    p.add_argument('--config', '-c', default=None,
                   help='hub_configs/<name>.yaml, or the name of a shipped config (e.g. resnet18_cifar_asap.fmnist); '
                        'may be left out with --resume and --output: the run\'s saved <output>/config.yaml is used')
    p.add_argument('--set', '-s', dest='overrides', action='append', nargs='+', default=[], metavar='KEY=VALUE',
                   help='override config keys, e.g. --set train.lr=0.1 data.workers=0 (repeatable)')
    p.add_argument('--output', '-o', default=None,
                   help='output folder (default: output/finetune/<architecture>.<tag>)')
    p.add_argument('--resume', nargs='?', const='last', default=None, metavar='CHECKPOINT',
                   help="continue a run: without a value <output>/last.pth; 'auto': resume when <output>/last.pth "
                        "exists, else start (for preemptible job scripts); or a checkpoint path")
    p.add_argument('--device', default=None, help='cuda, cpu or cuda:N (default: cuda when available)')
    p.add_argument('--no-progress', action='store_true', help='no tqdm progress bars')
    p.add_argument('--print-config', action='store_true', help='print the resolved config as YAML and exit')
    p.add_argument('--log-level', default='INFO', choices=['DEBUG', 'INFO', 'WARNING', 'ERROR'])
    g = p.add_argument_group('shortcuts (each is the same as the --set of the key shown)')
    g.add_argument('--data-dir', default=None, help='data.data_dir')
    g.add_argument('--epochs', type=int, default=None, help='train.epochs')
    g.add_argument('--batch-size', type=int, default=None, help='train.batch_size (per process)')
    g.add_argument('--lr', type=float, default=None, help='train.lr')
    g.add_argument('--workers', type=int, default=None, help='data.workers (per process)')
    g.add_argument('--amp-dtype', default=None, choices=['bfloat16', 'float16', 'float32'], help='train.amp_dtype')
    g.add_argument('--seed', type=int, default=None, help='train.seed')
    return p


def _setup_logging(level: str) -> None:
    rank = int(os.environ.get('RANK', '0'))
    logging.basicConfig(
        level=getattr(logging, level) if rank == 0 else logging.WARNING,
        format=f"%(asctime)s {f'rank {rank} ' if rank else ''}%(levelname)s %(message)s",
        datefmt='%H:%M:%S', stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    resolved = []
    status = run_cli(_PROG, lambda: resolved.append(_resolve_config(parser, args)))  # answers before torch loads
    if status or args.print_config:
        return status
    cfg, output = resolved[0]
    return run_cli(_PROG, lambda: _train(cfg, output, args), _training_statuses())


def _resolve_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple:
    """The run config (overrides and shortcuts applied) and the output folder; prints it for --print-config."""
    overrides = [item for group in args.overrides for item in group]
    for dest, key in _SHORTCUTS.items():
        value = getattr(args, dest)
        if value is not None:
            overrides.append(f'{key}={value}')
    if args.config is None:
        if not (args.resume and args.output):
            parser.error('--config is required (it may be left out only with --resume and --output)')
        args.config = str(Path(args.output) / RUN_CONFIG_FILE)
        if not Path(args.config).is_file():
            raise ConfigError(f"there is no run to resume in {args.output}: it holds no {RUN_CONFIG_FILE} (the config a "
                              f"run saves there); start a run with --config, or pass the output folder of the run "
                              f"to resume")
    cfg = apply_overrides(load_config(args.config), overrides)
    if args.print_config:
        sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return cfg, Path(args.output) if args.output else Path('output') / 'finetune' / cfg.name


def _training_statuses() -> list:
    from timm_asap.hub.errors import HubDownloadError
    from timm_asap_lab.data import DataError
    from timm_asap_lab.train import RunExistsError, TrainingError
    return [(RunExistsError, STATUS_BAD_INPUT), (DataError, STATUS_FAILED), (HubDownloadError, STATUS_UNREACHABLE),
            (TrainingError, STATUS_FAILED)]


def _train(cfg, output: Path, args: argparse.Namespace) -> int:
    from timm_asap_lab.train import TrainingInterrupted, finetune
    log = logging.getLogger('timm_asap_lab.cli.finetune')
    try:
        metrics = finetune(cfg, output, resume=args.resume, device=args.device, progress=not args.no_progress)
    except TrainingInterrupted:
        log.warning(f"continue with: timm-asap-finetune --output {output} --resume")
        raise
    best = metrics.get('best_metric')
    log.info(f"done: {output} (best {metrics.get('best_metric_name')} "
             f"{best:.2f} at epoch {metrics.get('best_epoch')})" if best is not None else f"done: {output}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
