"""``timm-asap benchmark-layers``: time ASAP against its FFT formulation, avg_pool2d and BlurPool."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from ..benchmark import RESNET50_SHAPES, benchmark_layers, format_table

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16, 'float64': torch.float64}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='timm-asap benchmark-layers',
        description='Interleaved timing of asap_pool2d vs the FFT formulation, avg_pool2d(2) and timm BlurPool2d '
                    'at ResNet-50 shapes (batch 32 by default). CPU float32 always; CUDA float32 and bfloat16 '
                    'when a GPU is present.')
    p.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto',
                   help='auto: CPU, plus CUDA when available (default)')
    p.add_argument('--cuda-dtypes', nargs='+', choices=sorted(DTYPES), default=['float32', 'bfloat16'])
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--repeats', type=int, default=5, help='timed interleaved rounds (median reported)')
    p.add_argument('--channels-last', action='store_true', help='channels_last inputs')
    p.add_argument('--shapes', nargs='+', default=None, metavar='CxS',
                   help='e.g. 64x112 256x56 (default: the ResNet-50 shapes)')
    p.add_argument('--output', type=Path, default=Path('benchmark_layers.json'), help='JSON file for the rows')
    return p


def _parse_shapes(items):
    if items is None:
        return RESNET50_SHAPES
    shapes = []
    for item in items:
        try:
            c, s = (int(v) for v in item.lower().split('x'))
        except ValueError:
            raise SystemExit(f"--shapes: expected CxS such as 64x112, got {item!r}") from None
        shapes.append((c, s))
    return tuple(shapes)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1:
        raise SystemExit(f"--batch-size and --repeats must be >= 1, got {args.batch_size} and {args.repeats}")
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: no CUDA device is available')
    shapes = _parse_shapes(args.shapes)
    runs = []
    if args.device in ('auto', 'cpu'):
        runs.append(('cpu', torch.float32))
    if args.device == 'cuda' or (args.device == 'auto' and torch.cuda.is_available()):
        runs += [('cuda', DTYPES[d]) for d in args.cuda_dtypes]
    rows = []
    for device, dtype in runs:
        rows += benchmark_layers(device, dtype, args.batch_size, shapes, args.repeats, channels_last=args.channels_last)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU threads available, "
          f"{torch.get_num_threads()} used; GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    print(format_table(rows))
    asap = [r for r in rows if r['method'] == 'asap']
    summary = {
        'min_speedup_vs_fft': min(r['speedup_vs_fft'] for r in asap),
        'max_speedup_vs_fft': max(r['speedup_vs_fft'] for r in asap),
        'max_ratio_vs_avg_pool2d': max(r['ratio_vs_avg_pool2d'] for r in asap),
    }
    print(f"asap vs FFT formulation: {summary['min_speedup_vs_fft']:.2f}x to "
          f"{summary['max_speedup_vs_fft']:.2f}x the speed (> 1: asap faster); "
          f"asap / avg_pool2d time: at most {summary['max_ratio_vs_avg_pool2d']:.2f}x")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(f'.{args.output.name}.tmp')
    tmp.write_text(json.dumps({'torch': torch.__version__, 'summary': summary, 'rows': rows}, indent=2))
    tmp.replace(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
