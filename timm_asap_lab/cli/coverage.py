"""``timm-asap coverage``: convert one model of every timm family and report what matches the base."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import timm
import torch
import yaml

from timm_asap._files import atomic_write_text
from timm_asap_lab.cli._yaml_defaults import parse_args_with_yaml_defaults
from timm_asap_lab.tools.coverage import coverage_rows, rows_to_dicts, rows_to_markdown


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='timm-asap coverage',
        description='Run asapify over one small model of every timm family (pretrained=False, default input '
                    'size) and print, per family, whether output shapes, features_only/feature_info and '
                    'state-dict keys match the unconverted model, and what downsampling is left unconverted.')
    p.add_argument('--config', type=Path, default=None,
                   help='YAML file of defaults for these options (keys as the long option names, with _)')
    p.add_argument('--families', nargs='+', default=None, metavar='FAMILY[:MODEL]',
                   help="timm module names (default: all); 'family:model' picks the representative")
    p.add_argument('--pool', choices=['asap', 'flc'], default='asap')
    p.add_argument('--device', choices=['meta', 'cpu'], default='meta',
                   help='meta: shapes without memory or compute, CPU where a model cannot run on meta (default)')
    p.add_argument('--output-dir', type=Path, default=Path('coverage'),
                   help='writes coverage.md, coverage.json and the resolved config.yaml here')
    p.add_argument('--no-progress', action='store_true')
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse ``argv``; values from ``--config`` YAML become the defaults that the command line overrides."""
    return parse_args_with_yaml_defaults(build_parser(), argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = coverage_rows(args.families, pool=args.pool, device=args.device, progress=not args.no_progress)
    table = rows_to_markdown(rows)
    header = f"asapify coverage, pool={args.pool}: timm {timm.__version__}, torch {torch.__version__}"
    print(header)
    print(table)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output_dir / 'coverage.md', f"{header}\n\n{table}\n")
    atomic_write_text(args.output_dir / 'coverage.json', json.dumps(
        dict(timm=timm.__version__, torch=torch.__version__, pool=args.pool, rows=rows_to_dicts(rows)), indent=1))
    resolved = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != 'config'}
    atomic_write_text(args.output_dir / 'config.yaml', yaml.safe_dump(resolved, sort_keys=False))
    print(f"wrote {args.output_dir / 'coverage.md'}, coverage.json and config.yaml")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
