"""``timm-asap repair``: re-estimate a converted model's BatchNorm statistics from unlabeled images and save it.

Loads a converted model (or, with ``--pool``, a base model that it converts first: the zero-shot
conversion), re-estimates its BatchNorm running statistics on images of an image folder (``--images``)
or of a dataset split (:func:`timm_asap.recalibrate_norm`; no labels, no gradients, no weight changes),
and writes the weights as safetensors with the architecture and pooling in the header. An existing
output file is replaced only when this command wrote it, and never when it is the model's input.

Examples::

    timm-asap repair --model resnet50_asap.tv_in1k_base --images /data/imagenet/train --count 1000 \\
        --output resnet50_asap_repaired.safetensors
    timm-asap repair --model preactresnet18@study_output/runs/preactresnet18_w8/seed0/model.safetensors \\
        --pool asap --dataset fashion_mnist --split train --count 2000 --output w8_asap_repaired.safetensors

The result loads like any checkpoint: ``timm-asap evaluate --model <architecture>@<output>`` (with the
model arguments and normalisation it was built with, which the command prints), or
``timm.create_model('<architecture>', pretrained=True, pretrained_cfg_overlay=dict(file='<output>'))``.

Exit status: 0 done; 2 bad arguments, model, data or output path; 3 the Hub could not be reached.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from timm_asap_lab.cli._errors import run_cli
from timm_asap_lab.cli.compare import _count, _positive, add_model_arguments, hub_statuses

__all__ = ['main', 'build_parser', 'check_output', 'variant_kwargs', 'REPAIR_KEY']

PROG = 'timm-asap repair'
DESCRIPTION = ("Re-estimate the BatchNorm running statistics of a converted model (with --pool: of a base model "
               "converted first) from unlabeled images, and write its weights as safetensors.")
REPAIR_KEY = 'timm_asap.repair'  # safetensors header entry: what the repair used (and that this command wrote the file)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``timm-asap repair``."""
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION,
                                epilog='Exit status: 0 done, 2 bad arguments/model/data/output, 3 Hub unreachable.')
    add_model_arguments(p, 'the converted model (or, with --pool, the base model to convert)')
    p.add_argument('--pool', choices=('asap', 'flc'), default=None,
                   help='convert the model (a base) to this pooling first; its <architecture>_<pool> must be '
                        'registered')
    g = p.add_argument_group('images (unlabeled; labels are ignored)')
    g.add_argument('--images', default=None, metavar='DIR', help='an image folder (files in class subfolders or not)')
    g.add_argument('--dataset', default='fashion_mnist', help="'fashion_mnist', 'folder' or a timm.data name")
    g.add_argument('--data-dir', default=None)
    g.add_argument('--split', default='train')
    g.add_argument('--count', type=_count, default=2000,
                   help="images used (a random subset; 'all': every one)")
    p.add_argument('--batch-size', type=_positive, default=64,
                   help='images per batch (the estimate averages per-batch statistics)')
    p.add_argument('--output', required=True, metavar='FILE.safetensors', help='where the repaired weights go')
    return p


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_output(output: str, inputs: list[str]) -> None:
    """Refuse an output path that is not ``.safetensors``, is one of the model's input files, or is an existing
    file this command did not write (its safetensors header has no :data:`REPAIR_KEY` entry).

    Raises:
        ValueError: a wrong suffix, or the path of an input.
        FileExistsError: an existing file written by something else (or not safetensors at all).
        IsADirectoryError: the path is a folder.
    """
    from timm_asap.hub.errors import IntegrityError
    from timm_asap.hub.integrity import read_safetensors_header
    path = Path(output)
    if path.suffix != '.safetensors':
        raise ValueError(f"--output {output}: the repaired weights are written as safetensors; give a .safetensors "
                         "path")
    for source in inputs:
        if source and path.exists() and _same_file(path, source):
            raise ValueError(f"--output {output} is the model's input {source}; {PROG} never overwrites its input: "
                             "give another path")
    if not path.exists():
        return
    if path.is_dir():
        raise IsADirectoryError(f"--output {output} is a folder; give a .safetensors file name")
    try:
        ours = REPAIR_KEY in read_safetensors_header(path)[1]
    except IntegrityError:
        ours = False
    if not ours:
        raise FileExistsError(f"--output {output} exists and was not written by {PROG}; refusing to overwrite it "
                              "(choose another path or remove it)")


def variant_kwargs(pool: str, asapify_args: dict) -> dict:
    """The ``timm.create_model`` kwargs of a registered variant that :func:`timm_asap.asapify` with ``asapify_args``
    builds: ``mode`` -> ``pool_mode``, pooling-layer options -> ``pool_args``, the rest under their own names."""
    from timm_asap.models import pool_kwarg_names
    out, layer = {}, {}
    for key, value in asapify_args.items():
        if key == 'mode':
            out['pool_mode'] = value
        elif key in pool_kwarg_names(pool):
            layer[key] = value
        else:
            out[key] = value
    return {**out, **({'pool_args': layer} if layer else {})}


def _run(args) -> int:
    from timm_asap.hub.integrity import save_safetensors, weights_metadata
    from timm_asap.models import check_architecture, is_converted, recalibrate_norm, running_stat_layers
    from timm_asap_lab.cli._models import (converted_copy, float_batches, load_classifier, normalisation, read_images,
                                           spec_weights, yaml_dict)
    from timm_asap_lab.runtime import resolve_device

    check_output(args.output, [spec_weights(args.model)])  # before any work
    model_args = yaml_dict(args.model_args, '--model-args')
    pool_args = yaml_dict(args.pool_args, '--pool-args')
    given = load_classifier(args.model, model_args, args.mean, args.std)
    if args.pool is not None:
        loaded = converted_copy(given, args.pool, pool_args)
        check_architecture(loaded.architecture, f"--pool {args.pool} of {given.architecture}")
        loaded.model_args = {**loaded.model_args, **variant_kwargs(args.pool, pool_args)}
    elif pool_args:
        raise ValueError("--pool-args apply with --pool (converting a base model); a converted model keeps its pooling")
    else:
        loaded = given
        if not is_converted(loaded.model.model):
            raise ValueError(f"{args.model} ({loaded.architecture}) has no spectral pooling: give a converted model "
                             "(<architecture>_asap / _flc), or add --pool asap|flc to convert this base model first")
    inner = loaded.model.model
    if not running_stat_layers(inner):
        raise ValueError(f"{loaded.architecture} has no BatchNorm running statistics to re-estimate (LayerNorm and "
                         "GroupNorm normalise each sample on its own): there is nothing to repair")
    source = ('folder', args.images, args.split) if args.images is not None else (args.dataset, args.data_dir,
                                                                                   args.split)
    images = read_images(loaded.model, *source, args.count, args.seed, args.workers, args.progress, args.img_size)
    device = resolve_device(args.device)
    batch_size = args.batch_size
    recalibrate_norm(loaded.model.to(device), float_batches(images, batch_size), progress=args.progress)
    mean, std = normalisation(loaded.model, 'mean'), normalisation(loaded.model, 'std')
    record = {'model': args.model, 'pool': args.pool, 'pool_args': pool_args, 'images': len(images),
              'source': images.name, 'seed': args.seed, 'batch_size': batch_size, 'model_args': loaded.model_args,
              'mean': mean, 'std': std}
    # the header records the model arguments too, so the file loads on its own (evaluate, compare, model.base)
    metadata = {**weights_metadata(inner, loaded.architecture, loaded.model_args), REPAIR_KEY: json.dumps(record)}
    save_safetensors(inner.state_dict(), args.output, metadata)
    print(f"re-estimated {len(running_stat_layers(inner))} BatchNorm layers of {loaded.architecture} on {len(images)} "
          f"images of {images.name}; wrote {args.output}")
    print(f"load it as {loaded.architecture}@{args.output} with model arguments {loaded.model_args or '{}'} and "
          f"normalisation mean {mean}, std {std}")
    return 0


def main(argv=None) -> int:
    """Run ``timm-asap repair``; returns the exit status."""
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: _run(args), hub_statuses())


if __name__ == '__main__':
    sys.exit(main())
