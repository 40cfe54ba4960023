"""``timm-asap study``: the Fashion-MNIST robustness study (baseline vs FLC vs ASAP), end to end."""
from __future__ import annotations

import argparse
import logging

from timm_asap_lab.cli._errors import STATUS_BAD_INPUT, STATUS_FAILED, run_cli
from timm_asap_lab.runtime import AMP_CHOICES
from timm_asap_lab.study import FAMILIES, PRESETS, preset_options, run_study
from timm_asap_lab.train.errors import RunExistsError, TrainingError, TrainingInterrupted

#: a run of another configuration in --output is bad input (nothing was written); a run that failed (its loss
#: diverged, a checkpoint cannot be read) is failed work; the rest as every CLI (docs/study.md, "Exit status")
STATUSES = ((RunExistsError, STATUS_BAD_INPUT), (TrainingError, STATUS_FAILED))


def build_parser() -> argparse.ArgumentParser:
    presets = '; '.join(f"{name}: {what}" for name, (what, _) in PRESETS.items())
    p = argparse.ArgumentParser(
        prog='timm-asap study',
        description='Train a CIFAR-size network, its FLC and its ASAP variant on Fashion-MNIST with the same recipe '
                    'and seed, evaluate them side by side (clean, 15 corruptions x 5 severities, FGSM/PGD, shift '
                    'consistency, each with its standard error), publish each into a local Hub folder (dry run), '
                    'reload each by name and compare logits, then print the table and write the plots. It prints '
                    'what it runs and its expected time first. Re-running resumes. Presets: ' + presets)
    p.add_argument('--preset', default=None, metavar='NAME',
                   help=f"one of {', '.join(PRESETS)} (default: default)")
    p.add_argument('--output', default='study_output', help='folder for every artefact (default: study_output)')
    p.add_argument('--full', action='store_true', help='the same as --preset full')
    p.add_argument('--families', nargs='+', metavar='FAMILY',
                   help=f"families to run, of {', '.join(FAMILIES)} (default: the preset's)")
    p.add_argument('--seeds', nargs='+', type=int, help="training seeds (default: the preset's)")
    p.add_argument('--epochs', type=int, help="training epochs (default: the preset's)")
    p.add_argument('--train-subset', type=int, help='training images (default: all 60000)')
    p.add_argument('--val-subset', type=int, help='test images validated on after each epoch (default: all 10000)')
    p.add_argument('--batch-size', type=int, help="training batch size; the learning rate scales with it")
    p.add_argument('--eval-count', type=int, help='test images for clean accuracy (default: all 10000)')
    p.add_argument('--corruption-count', type=int, help="test images corrupted (default: the preset's)")
    p.add_argument('--attack-count', type=int, help="test images attacked (default: the preset's)")
    p.add_argument('--shift-count', type=int, help="test images of the shift-consistency pass")
    p.add_argument('--severities', nargs='+', type=int, help='corruption severities (default: 1 2 3 4 5)')
    p.add_argument('--max-seconds', type=float,
                   help='time available: when the expected time is longer, fewer seeds run (said in the output)')
    conv = p.add_argument_group('conversion arm', "each seed's trained baseline converted to ASAP/FLC and evaluated "
                                "zero-shot, after the BatchNorm repair and after fine-tuning (docs/conversion.md)")
    conv.add_argument('--convert-pools', nargs='+', metavar='POOL', help="asap and/or flc (default: the preset's)")
    conv.add_argument('--no-conversion', action='store_true', help='leave the conversion arm out')
    conv.add_argument('--convert-positions', nargs='+', metavar='POSITION',
                      help="before (the paper's placement) and/or after (default: the preset's)")
    conv.add_argument('--convert-epochs', nargs='+', type=int, metavar='N',
                      help="fine-tuning lengths, one run each (default: the preset's)")
    conv.add_argument('--convert-distill', nargs='+', choices=('off', 'on'),
                      help="fine-tune without (off) and/or with (on) distillation from the baseline")
    conv.add_argument('--convert-lr', type=float, help="the arm's fine-tuning learning rate (default: the preset's)")
    conv.add_argument('--repair-images', type=int, help='unlabeled training images of the BatchNorm repair')
    p.add_argument('--data-dir', help="Fashion-MNIST IDX folder (default: Debian's package, else a download)")
    p.add_argument('--device', default='auto', help='auto, cpu or cuda')
    p.add_argument('--amp', choices=AMP_CHOICES,
                   help='precision of the clean/corruption/shift passes (default: auto, which follows the hardware: '
                        'bf16 on CUDA and on CPUs with native bf16, float32 elsewhere); attacks run in float32')
    p.add_argument('--workers', type=int, help="DataLoader workers (default: the preset's)")
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    return p


def main(argv=None) -> int:
    """Run the command line; returns the exit status (docs/study.md, "Exit status")."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    return run_cli('timm-asap study', lambda: _run(args), STATUSES)


def _run(args: argparse.Namespace) -> int:
    preset = args.preset or ('full' if args.full else 'default')
    if args.full and preset != 'full':
        raise ValueError(f"--full is --preset full; it cannot be combined with --preset {preset}")
    overrides = dict(output_dir=args.output, device=args.device, progress=not args.no_progress,
                     data_dir=args.data_dir)
    for key in ('families', 'seeds', 'epochs', 'train_subset', 'val_subset', 'batch_size', 'eval_count',
                'corruption_count', 'attack_count', 'shift_count', 'severities', 'max_seconds', 'workers', 'amp'):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    for key in ('convert_pools', 'convert_positions', 'convert_epochs', 'convert_lr', 'repair_images'):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.convert_distill is not None:
        overrides['convert_distill'] = [value == 'on' for value in args.convert_distill]
    if args.no_conversion:
        overrides['convert_pools'] = []
    opts = preset_options(preset, **overrides)
    try:
        run_study(opts)
    except TrainingInterrupted as e:  # a stop signal: the checkpoint is written, re-running resumes
        e.args = (f"{e}; run the same command again to resume",)
        raise
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
