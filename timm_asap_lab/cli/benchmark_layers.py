"""``timm-asap benchmark-layers``: time ASAP against its FFT formulation, avg_pool2d and BlurPool; or
(``--backends``) the pooling backends against each other, writing the winners table backend 'auto' reads."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from timm_asap._files import atomic_write_text
from timm_asap.layers import BACKENDS
from timm_asap_lab.tools.benchmark_layers import (DEFAULT_REPEATS, NETWORK_SHAPES, RESNET50_SHAPES, benchmark_backends,
                                                  benchmark_layers, format_backend_table, format_table, target_checks,
                                                  winners_table)

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16, 'float64': torch.float64}
LAYOUTS = ('contiguous', 'channels_last')
# --tiny: a CPU check of the whole path in seconds (CI), not a measurement
TINY_SHAPES = ((3, 16), (16, 8))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='timm-asap benchmark-layers',
        description='Interleaved timing of asap_pool2d vs the FFT formulation, avg_pool2d(2) and timm BlurPool2d '
                    'at ResNet-50 shapes (batch 32 by default). CPU float32 always; CUDA float32 and bfloat16 '
                    'when a GPU is present. With --backends: forward+backward of each pooling backend against '
                    'avg_pool2d at the ResNet-50 (batch 32) and resnet18_cifar (batch 128) shapes, and the '
                    "winners table backend 'auto' reads (--json).")
    p.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto',
                   help='auto: CPU, plus CUDA when available (with --backends: CUDA when available, else CPU)')
    p.add_argument('--cuda-dtypes', nargs='+', choices=sorted(DTYPES), default=None,
                   help='CUDA dtypes (default: float32 bfloat16; with --backends: bfloat16)')
    p.add_argument('--batch-size', type=int, default=None,
                   help='images per call (default 32; with --backends: 32 for resnet50, 128 for resnet18_cifar)')
    p.add_argument('--repeats', type=int, default=None,
                   help=f'timed interleaved rounds, median reported; ratios are the median of the per-round '
                        f'ratios with their lowest and highest, and a target verdict says unreliable when the '
                        f'rounds disagree (default {DEFAULT_REPEATS}; with --backends: 20)')
    p.add_argument('--channels-last', action='store_true', help='channels_last inputs')
    p.add_argument('--shapes', nargs='+', default=None, metavar='CxS',
                   help='e.g. 64x112 256x56 (default: the ResNet-50 shapes; with --backends: the --networks shapes)')
    p.add_argument('--output', type=Path, default=Path('benchmark_layers.json'), help='JSON file for the rows')
    p.add_argument('--backends', default=None, metavar='A,B,...',
                   help=f"compare pooling backends, comma-separated from {[b for b in BACKENDS if b != 'auto']}")
    p.add_argument('--networks', nargs='+', choices=sorted(NETWORK_SHAPES), default=sorted(NETWORK_SHAPES),
                   help='with --backends: whose downsampling shapes to time (default: both)')
    p.add_argument('--layouts', nargs='+', choices=LAYOUTS, default=None,
                   help='with --backends: input layouts (default: channels_last with --channels-last, else contiguous)')
    p.add_argument('--json', type=Path, default=None, dest='table',
                   help="with --backends: write the winners table here (commit it as "
                        "timm_asap/layers/backend_table.json for backend 'auto')")
    p.add_argument('--markdown', type=Path, default=None, help='with --backends: write the Markdown table here')
    p.add_argument('--tiny', action='store_true',
                   help='with --backends: two tiny shapes, batch 2, one round (a check of the path, not a measurement)')
    return p


def _parse_shapes(items, default=RESNET50_SHAPES):
    if items is None:
        return default
    shapes = []
    for item in items:
        try:
            c, s = (int(v) for v in item.lower().split('x'))
        except ValueError:
            raise SystemExit(f"--shapes: expected CxS such as 64x112, got {item!r}") from None
        if c < 1 or s < 1:
            raise SystemExit(f"--shapes: channels and size must be >= 1, got {item!r}")
        shapes.append((c, s))
    return tuple(shapes)


def _write_atomic(path: Path, text: str) -> None:
    atomic_write_text(path, text)
    print(f"wrote {path}")


def _environment(args) -> dict:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {'torch': torch.__version__, 'gpu': gpu, 'cpu_threads': torch.get_num_threads(), 'tiny': args.tiny,
            'command': 'timm-asap benchmark-layers ' + ' '.join(args.argv)}


def _parse_backends(text: str) -> tuple[str, ...]:
    allowed = [b for b in BACKENDS if b != 'auto']
    names = tuple(n.strip() for n in text.split(',') if n.strip())
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise SystemExit(f"--backends: unknown {bad or [text]}; allowed (comma-separated): {allowed}")
    return names


def _backend_runs(args):
    """(device, dtype, layout, shapes, batch) for each measurement of the --backends mode."""
    if args.device == 'cuda' or (args.device == 'auto' and torch.cuda.is_available()):
        device, dtypes = 'cuda', [DTYPES[d] for d in (args.cuda_dtypes or ['bfloat16'])]
    else:
        device, dtypes = 'cpu', [torch.float32]
    layouts = args.layouts or (['channels_last'] if args.channels_last else ['contiguous'])
    if args.tiny:
        sets = [(TINY_SHAPES, args.batch_size or 2)]
    elif args.shapes is not None:
        sets = [(_parse_shapes(args.shapes), args.batch_size or 32)]
    else:
        sets = [(NETWORK_SHAPES[n][0], args.batch_size or NETWORK_SHAPES[n][1]) for n in args.networks]
    return [(device, dtype, layout, shapes, batch) for dtype in dtypes for layout in layouts for shapes, batch in sets]


def run_backends(args) -> int:
    names = _parse_backends(args.backends)
    repeats, warmup = (1, 1) if args.tiny else (args.repeats or 20, 3)
    rows = []
    for device, dtype, layout, shapes, batch in _backend_runs(args):
        rows += benchmark_backends(device, dtype, shapes, batch, names, layout, repeats, warmup)
    print(format_backend_table(rows))
    for r in rows:
        if r.get('skipped'):
            print(f"skipped {r['method']} at {r['channels']}x{r['height']}x{r['width']}: {r['skipped']}")
    env = _environment(args)
    _write_atomic(args.output, json.dumps({**env, 'rows': rows}, indent=2))
    if args.table is not None:
        _write_atomic(args.table, json.dumps(winners_table(rows, env), indent=2) + '\n')
    if args.markdown is not None:
        _write_atomic(args.markdown, format_backend_table(rows) + '\n')
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if (args.batch_size is not None and args.batch_size < 1) or (args.repeats is not None and args.repeats < 1):
        raise SystemExit(f"--batch-size and --repeats must be >= 1, got {args.batch_size} and {args.repeats}")
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: no CUDA device is available')
    if args.backends is not None:
        return run_backends(args)
    backend_only = [flag for flag, given in (('--json', args.table), ('--markdown', args.markdown),
                                             ('--tiny', args.tiny), ('--layouts', args.layouts)) if given]
    if backend_only:
        raise SystemExit(f"{', '.join(backend_only)} need --backends")
    shapes = _parse_shapes(args.shapes)
    runs = []
    if args.device in ('auto', 'cpu'):
        runs.append(('cpu', torch.float32))
    if args.device == 'cuda' or (args.device == 'auto' and torch.cuda.is_available()):
        runs += [('cuda', DTYPES[d]) for d in (args.cuda_dtypes or ['float32', 'bfloat16'])]
    rows = []
    for device, dtype in runs:
        rows += benchmark_layers(device, dtype, args.batch_size or 32, shapes, args.repeats or DEFAULT_REPEATS,
                                 channels_last=args.channels_last)
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
          f"asap / avg_pool2d time: at most {summary['max_ratio_vs_avg_pool2d']:.2f}x (medians of the per-round ratios)")
    checks = target_checks(rows)
    print('\n'.join(checks))
    _write_atomic(args.output, json.dumps({'torch': torch.__version__, 'summary': summary, 'targets': checks,
                                           'rows': rows}, indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
