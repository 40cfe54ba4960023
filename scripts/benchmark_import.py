"""``import timm_asap`` against ``import timm``: wall time and modules loaded, as ratios from one run.

Each import runs in a fresh interpreter (``--repeat`` times, alternating, median reported), so both
pay the same cold start and share the machine's state. ``import timm_asap`` includes ``import timm``:
the ratio is what the plugin adds on top of the library it extends. It is the median of the per-pair
ratios (one pair per repeat), shown with their lowest and highest (:mod:`timm_asap_lab.tools.timing`).

Example:
    python scripts/benchmark_import.py --repeat 7
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

_PROBE = ("import sys, time; t = time.perf_counter(); import {module}; "
          "print(__import__('json').dumps([time.perf_counter() - t, len(sys.modules)]))")


def measure(module: str) -> tuple[float, int]:
    """Seconds and ``len(sys.modules)`` of ``import <module>`` in a fresh interpreter."""
    out = subprocess.run([sys.executable, '-c', _PROBE.format(module=module)], capture_output=True, text=True,
                         check=True).stdout
    seconds, modules = json.loads(out)
    return seconds, modules


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--repeat', type=int, default=5, help='fresh interpreters per module (default 5)')
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    runs = {'timm': [], 'timm_asap': []}
    for _ in range(args.repeat):
        for module in runs:
            runs[module].append(measure(module))
    rows = {m: (statistics.median(s for s, _ in r), statistics.median(n for _, n in r)) for m, r in runs.items()}
    for module, (seconds, modules) in rows.items():
        print(f"import {module:<10} {seconds:7.3f} s  {modules:5.0f} modules  (median of {args.repeat})")
    from timm_asap_lab.tools.timing import paired_ratio
    seconds = paired_ratio([s for s, _ in runs['timm_asap']], [s for s, _ in runs['timm']])
    modules = paired_ratio([n for _, n in runs['timm_asap']], [n for _, n in runs['timm']])
    print(f"ratio timm_asap / timm: time {seconds.describe()}, modules {modules.median:.3f}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
