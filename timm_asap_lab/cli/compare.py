"""``timm-asap compare``: the zero-shot cost of converting a trained model to ASAP/FLC, and the repair.

Loads a base model with its weights, converts a copy (:func:`timm_asap.asapify`: the weights are unchanged,
the zero-shot conversion), and prints the top-1 of both and the agreement of their predictions on the same
images; with ``--repair-images N`` (or ``--repair-dir``) also the converted model after its BatchNorm
statistics were re-estimated on N unlabeled training images (:func:`timm_asap.recalibrate_norm`).

Examples::

    timm-asap compare --model resnet18.a1_in1k --pool asap --dataset folder --data-dir /data/imagenet \\
        --count 2000 --repair-images 1000
    timm-asap compare --model preactresnet18@study_output/runs/preactresnet18_w8/seed0/model.safetensors \\
        --pool flc --repair-images 2000 --json out/compare.json

Exit status: 0 done; 2 bad arguments, model or data; 3 the Hub could not be reached.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
from pathlib import Path

from timm_asap_lab.cli._errors import run_cli
from timm_asap_lab.runtime import AMP_CHOICES

__all__ = ['main', 'build_parser', 'compare_table']

PROG = 'timm-asap compare'
WRITTEN_BY = 'timm-asap compare'
DESCRIPTION = ("Convert a copy of a trained base model to ASAP or FLC (asapify: weights unchanged, the zero-shot "
               "conversion) and print the top-1 of both and the agreement of their predictions on the same images; "
               "with --repair-images N (or --repair-dir), also the converted model after its BatchNorm statistics "
               "were re-estimated on N unlabeled training images (timm_asap.recalibrate_norm).")


def _count(value: str) -> int | None:
    if value.lower() in ('all', 'none'):
        return None
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive count or 'all', got {value!r}")
    return n


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def add_model_arguments(p: argparse.ArgumentParser, what: str) -> None:
    """The model options ``compare`` and ``repair`` share."""
    g = p.add_argument_group('model')
    g.add_argument('--model', required=True, metavar='NAME[@CHECKPOINT]',
                   help=f"{what}: a timm name with pretrained weights (resnet50.tv_in1k), NAME@CHECKPOINT (a local "
                        "weights file; a fine-tuning run's config.yaml beside it gives classes, channels and "
                        "normalisation), hf-hub:<repo> or local-dir:<folder>")
    g.add_argument('--model-args', default=None, metavar='YAML',
                   help="further timm.create_model arguments, e.g. '{num_classes: 10, in_chans: 1, "
                        "channels: [8, 16, 32, 64], stem_chs: 8}'")
    g.add_argument('--mean', type=float, nargs='+', default=None,
                   help='normalisation mean (default: the run config beside the checkpoint, else pretrained_cfg)')
    g.add_argument('--std', type=float, nargs='+', default=None)
    g.add_argument('--pool-args', default=None, metavar='YAML',
                   help="further asapify arguments, e.g. '{mode: reference}' or '{padding: large}'")
    g.add_argument('--img-size', type=_positive, default=None, help="input size (default: the model's pretrained_cfg)")
    g.add_argument('--device', default='auto', help="'auto' (CUDA when present), 'cpu', 'cuda', ...")
    g.add_argument('--workers', type=int, default=0, help='DataLoader workers reading images')
    g.add_argument('--seed', type=int, default=0, help='seed of the random image subsets')
    g.add_argument('--progress', action='store_true', help='progress bars')


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``timm-asap compare``."""
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION,
                                epilog='Exit status: 0 done, 2 bad arguments/model/data, 3 Hub unreachable.')
    add_model_arguments(p, 'the base model')
    p.add_argument('--pool', choices=('asap', 'flc'), default=None,
                   help='the pooling a copy of the base is converted to (default: asap)')
    p.add_argument('--converted', default=None, metavar='NAME[@CHECKPOINT]',
                   help='compare this converted model (e.g. one written by timm-asap repair or fine-tuned) instead of '
                        "converting the base; it takes the base's model arguments and normalisation")
    p.add_argument('--batch-size', type=_positive, default=128, help='images per forward pass')
    p.add_argument('--amp', choices=AMP_CHOICES, default='none',
                   help="inference precision (default: none, float32)")
    g = p.add_argument_group('data')
    g.add_argument('--dataset', default='fashion_mnist',
                   help="'fashion_mnist', 'folder' (an ImageFolder tree under --data-dir) or a timm.data name")
    g.add_argument('--data-dir', default=None, help='data folder (Fashion-MNIST: default Debian\'s)')
    g.add_argument('--split', default='validation', help='split compared on')
    g.add_argument('--count', type=_count, default=1000, help="images compared ('all': every one)")
    g = p.add_argument_group('repair (BatchNorm statistics re-estimated from unlabeled images)')
    g.add_argument('--repair-images', type=_positive, default=None, metavar='N',
                   help='also compare the converted model repaired on N images of --repair-split (or --repair-dir)')
    g.add_argument('--repair-split', default='train', help='split of --dataset the repair images come from')
    g.add_argument('--repair-dir', default=None, metavar='DIR',
                   help='an image folder to repair with instead (all its images unless --repair-images)')
    g.add_argument('--repair-batch-size', type=_positive, default=64,
                   help='images per batch of the repair (its estimate averages per-batch statistics)')
    p.add_argument('--json', default=None, metavar='PATH', help='also write the numbers to this JSON file')
    return p


def _check_json_target(path: str | None) -> None:
    """Refuse to replace a file that an earlier ``timm-asap compare`` did not write."""
    if path is None or not Path(path).exists():
        return
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"--json {path} is a folder; give a file name")
    try:
        ours = json.loads(target.read_text(encoding='utf-8')).get('written_by') == WRITTEN_BY
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        ours = False
    if not ours:
        raise FileExistsError(f"--json {path} exists and was not written by {PROG}; refusing to overwrite it "
                              "(choose another path or remove it)")


def _row(label: str, result: dict, side: str) -> dict:
    row = {'model': label, 'count': result['count'], 'correct': result[f'{side}_correct'],
           'top1': result[f'{side}_top1'], 'top1_se': result[f'{side}_top1_se']}
    if side == 'converted':
        row.update(agree=result['agree'], agreement=result['agreement'], agreement_se=result['agreement_se'])
    return row


def compare_table(rows: list[dict]) -> str:
    """The rows as a Markdown table: top-1 and agreement with the base, each with its standard error."""
    lines = ['| model | top-1 % | agreement with base % |', '|---|---:|---:|']
    for r in rows:
        agree = f"{r['agreement']:.1f} ± {r['agreement_se']:.1f}" if 'agreement' in r else '—'
        lines.append(f"| {r['model']} | {r['top1']:.1f} ± {r['top1_se']:.1f} | {agree} |")
    return '\n'.join(lines)


def _run(args) -> int:
    from timm_asap._files import atomic_write_text
    from timm_asap.models import is_converted, recalibrate_norm
    from timm_asap_lab.cli._models import (base_model_args, converted_copy, float_batches, load_classifier,
                                           normalisation, read_images, yaml_dict)
    from timm_asap_lab.evaluation import compare_models
    from timm_asap_lab.evaluation._deps import library_versions
    from timm_asap_lab.runtime import resolve_amp, resolve_device

    _check_json_target(args.json)
    device = resolve_device(args.device)
    precision = resolve_amp(device, args.amp)
    pool_args = yaml_dict(args.pool_args, '--pool-args')
    base = load_classifier(args.model, yaml_dict(args.model_args, '--model-args'), args.mean, args.std)
    if args.converted is None:
        converted = converted_copy(base, args.pool or 'asap', pool_args)
        how = f"converted to {(args.pool or 'asap').upper()} ({pool_args or 'default options'})"
    else:
        if args.pool is not None or pool_args:
            raise ValueError("--pool and --pool-args convert the base; a --converted model brings its own pooling")
        converted = load_classifier(args.converted, base_model_args(base), normalisation(base.model, 'mean'),
                                    normalisation(base.model, 'std'))
        if not is_converted(converted.model.model):
            raise ValueError(f"--converted {args.converted} ({converted.architecture}) has no spectral pooling")
        how = f"against {args.converted}"
    images = read_images(base.model, args.dataset, args.data_dir, args.split, args.count, args.seed, args.workers,
                         args.progress, args.img_size)
    common = dict(batch_size=args.batch_size, device=device, amp=args.amp, progress=args.progress)
    zero = compare_models(base.model, converted.model, images, **common)
    label = f"{converted.architecture}, zero-shot" if args.converted is None else args.converted
    rows = [_row(f"base ({base.architecture})", zero, 'base'), _row(label, zero, 'converted')]
    repair = None
    if args.repair_images is not None or args.repair_dir is not None:
        if args.repair_dir is not None:
            source = ('folder', args.repair_dir, args.repair_split)
        else:
            source = (args.dataset, args.data_dir, args.repair_split)
        train = read_images(base.model, *source, args.repair_images, args.seed, args.workers, args.progress,
                            args.img_size)
        repaired = recalibrate_norm(copy.deepcopy(converted.model).to(device),
                                    float_batches(train, args.repair_batch_size), progress=args.progress)
        repair = {'images': len(train), 'source': train.name, 'seed': args.seed, 'batch_size': args.repair_batch_size}
        result = compare_models(base.model, repaired.eval(), images, **common)
        rows.append(_row(f"{label.removesuffix(', zero-shot')}, BatchNorm re-estimated on {len(train)} images of "
                         f"{train.name}", result, 'converted'))
    print(f"{args.model} {how}: "
          f"{len(images)} images of {images.name}, {str(precision).replace('torch.', '') if precision else 'float32'}")
    print(compare_table(rows))
    print("(± binomial standard error over the images; agreement: share of images where both predict the same class)")
    if args.json:
        payload = {'written_by': WRITTEN_BY, 'base': args.model, 'architecture': base.architecture,
                   'model_args': base.model_args, 'converted': args.converted or converted.architecture,
                   'pool': None if args.converted else (args.pool or 'asap'), 'pool_args': pool_args,
                   'images': {'source': images.name, 'count': len(images), 'seed': args.seed}, 'amp': args.amp,
                   'device': str(device), 'repair': repair, 'rows': rows, **library_versions()}
        atomic_write_text(args.json, json.dumps(payload, indent=2) + '\n')
        print(f"wrote {args.json}")
    return 0


def main(argv=None) -> int:
    """Run ``timm-asap compare``; returns the exit status."""
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: _run(args), hub_statuses())


def hub_statuses() -> list:
    """Exit statuses of the model loading failures beyond bad input: no Hub (3), no weights for a tag (2)."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    from timm_asap.hub.errors import HubDownloadError
    from timm_asap.models import WeightsNotAvailableError
    from timm_asap_lab.cli._errors import STATUS_BAD_INPUT, STATUS_UNREACHABLE
    return [((HubDownloadError, LocalEntryNotFoundError, OfflineModeIsEnabled), STATUS_UNREACHABLE),
            (WeightsNotAvailableError, STATUS_BAD_INPUT),
            (TypeError, STATUS_BAD_INPUT)]  # --pool-args / --model-args the pooling or the model does not take


if __name__ == '__main__':
    sys.exit(main())
