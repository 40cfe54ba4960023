"""Training throughput of the in-memory path against the DataLoader path: same model, same run, a ratio.

Both paths run the real fine-tuning loop (``timm_asap_lab.train.finetune``) on Fashion-MNIST at 32 px with
the shipped ``resnet18_cifar.fmnist`` recipe, one after the other and repeated (alternating), and the
images/s of the last epoch of each run are compared (the first epoch also warms up the allocator and,
with workers, starts them). Validation is off, so only training steps are timed. The ratio is the median
of the per-repeat ratios (each repeat runs both paths in turn), with their lowest and highest
(:mod:`timm_asap_lab.tools.timing`).

Examples::

    python scripts/benchmark_train_loader.py                      # resnet18_cifar and the narrow variant
    python scripts/benchmark_train_loader.py --images 2048 --repeats 3 --workers 0
    python scripts/benchmark_train_loader.py --device cuda --batch-size 512 --images 60000

Prints the cost of the batches alone (no model) on both paths, one line per training run, and a table of
median img/s with the ratio memory / dataloader.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

MODELS = {
    'resnet18_cifar': {},
    'resnet18_cifar (channels 16-128)': {'channels': [16, 32, 64, 128]},  # the CIFAR stem stays 64 wide
}


def _config(arch_args: dict, loader: str, args: argparse.Namespace, images: int):
    from timm_asap_lab.config import apply_overrides, load_config
    cfg = apply_overrides(load_config('resnet18_cifar.fmnist'), [
        f'data.loader={loader}', f'data.workers={args.workers}', "data.val_split=''", f'data.train_subset={images}',
        f'train.epochs={args.epochs}', f'train.batch_size={args.batch_size}', 'train.tensorboard=false',
        'train.warmup_epochs=0', 'train.export=last', f'train.compile={str(args.compile).lower()}'])
    if args.data_dir:
        cfg.data.data_dir = args.data_dir
    cfg.model.model_args = dict(arch_args)
    return cfg


def _run(cfg, device: str) -> float:
    from timm_asap_lab.train import finetune
    with tempfile.TemporaryDirectory() as out:
        metrics = finetune(cfg, Path(out) / 'run', device=device, progress=False, handle_signals=False)
    return metrics['history'][-1]['train_images_per_sec']


def _data_rate(loader: str, args: argparse.Namespace, images: int) -> float:
    """Images/s of one epoch of training batches alone (no model): what each path costs per image."""
    import time

    import timm
    from timm_asap_lab.data import create_run_data
    cfg = _config({}, loader, args, images)
    data = create_run_data(cfg, timm.create_model('resnet18_cifar', num_classes=10, in_chans=1),
                           device=args.device)
    start, n = time.perf_counter(), 0
    for batch in data.train_batches.epoch(0):
        n += batch[0].shape[0]
    return n / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--images', type=int, default=None,
                   help='training images per epoch (default: 384 for resnet18_cifar, 1536 for the narrow one)')
    p.add_argument('--epochs', type=int, default=2, help='epochs per run; the last one is timed')
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--workers', type=int, default=2, help="DataLoader workers (the recipe's 2)")
    p.add_argument('--repeats', type=int, default=2, help='runs per path, alternating')
    p.add_argument('--device', default='cpu')
    p.add_argument('--compile', action='store_true', help='train.compile for both paths')
    p.add_argument('--data-dir', default=None, help='Fashion-MNIST IDX folder (default: the Debian package)')
    p.add_argument('--models', nargs='*', default=list(MODELS), choices=list(MODELS))
    args = p.parse_args(argv)
    import torch

    from timm_asap_lab.tools.timing import paired_ratio
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, batch "
          f"{args.batch_size}, {args.workers} DataLoader workers, timing the last of {args.epochs} epochs")
    data_rates = {loader: _data_rate(loader, args, 2048) for loader in ('dataloader', 'memory')}
    print(f"batches alone (no model, 2048 images): DataLoader {data_rates['dataloader']:.0f} img/s, in-memory "
          f"{data_rates['memory']:.0f} img/s, ratio {data_rates['memory'] / data_rates['dataloader']:.2f}")
    rows = []
    for name in args.models:
        images = args.images or (384 if not MODELS[name] else 1536)
        rates: dict[str, list[float]] = {'dataloader': [], 'memory': []}
        for _ in range(args.repeats):
            for loader in ('dataloader', 'memory'):
                rate = _run(_config(MODELS[name], loader, args, images), args.device)
                rates[loader].append(rate)
                print(f"  {name:34s} {loader:10s} {rate:9.1f} img/s", flush=True)
        dl, mem = statistics.median(rates['dataloader']), statistics.median(rates['memory'])
        rows.append((name, images, dl, mem, paired_ratio(rates['memory'], rates['dataloader'])))
    print("\n| model | images/epoch | DataLoader img/s | in-memory img/s | ratio memory/DataLoader (min-max) |")
    print("|---|---|---|---|---|")
    for name, images, dl, mem, ratio in rows:
        print(f"| {name} | {images} | {dl:.1f} | {mem:.1f} | {ratio.short()} |")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
