"""``timm-asap study``: the Fashion-MNIST robustness study (baseline vs FLC vs ASAP), end to end."""
from __future__ import annotations

import argparse
import logging

from ..study import FAMILIES, default_options, full_options, run_study


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='timm-asap study',
        description='Train the CIFAR-size ResNet-18 baseline, its FLC and its ASAP variant on Fashion-MNIST with '
                    'the same recipe and seed, evaluate them side by side (clean, 15 corruptions x 5 severities, '
                    'FGSM/PGD, shift consistency), publish each into a local Hub folder (dry run), reload each by '
                    'name and compare logits, then print the table and write the plots. The default is sized for '
                    'a 2-core CPU (a subset, two epochs); --full runs the complete recipe (GPU). Re-running resumes.')
    p.add_argument('--output', default='study_output', help='folder for every artefact (default: study_output)')
    p.add_argument('--full', action='store_true',
                   help='complete recipe: resnet18_cifar, preactresnet18 and wide_resnet28_10, all 60k training '
                        'images, the recipe epochs, 3 seeds, the whole test set')
    p.add_argument('--families', nargs='+', choices=FAMILIES, help='families to run (default: resnet18_cifar; '
                                                                   'all three with --full)')
    p.add_argument('--seeds', nargs='+', type=int, help='training seeds (default: 0; 0 1 2 with --full)')
    p.add_argument('--epochs', type=int, help='training epochs (default: 2; the recipe with --full)')
    p.add_argument('--train-subset', type=int, help='training images (default: 3000; all with --full)')
    p.add_argument('--eval-count', type=int, help='test images evaluated (default: 150; 10000 with --full)')
    p.add_argument('--attack-count', type=int, help='test images attacked (default: 50; 1000 with --full)')
    p.add_argument('--data-dir', help="Fashion-MNIST IDX folder (default: Debian's package, else a download)")
    p.add_argument('--device', default='auto', help='auto, cpu or cuda')
    p.add_argument('--amp', choices=['auto', 'bf16', 'fp16', 'none'],
                   help='autocast for clean/corruption/shift passes (default: bf16; auto, i.e. bf16 on CUDA only, '
                        'with --full); attacks run in float32')
    p.add_argument('--workers', type=int, help='DataLoader workers (default: 0; 8 with --full)')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    overrides = dict(output_dir=args.output, device=args.device, progress=not args.no_progress,
                     data_dir=args.data_dir)
    for key, value in (('families', args.families), ('seeds', args.seeds), ('epochs', args.epochs),
                       ('train_subset', args.train_subset), ('eval_count', args.eval_count),
                       ('attack_count', args.attack_count), ('workers', args.workers), ('amp', args.amp)):
        if value is not None:
            overrides[key] = value
    try:
        opts = (full_options if args.full else default_options)(**overrides)
    except ValueError as e:
        raise SystemExit(f"timm-asap study: {e}") from None
    run_study(opts)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
