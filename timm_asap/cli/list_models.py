"""``timm-asap list-models``: the registered ASAP/FLC architectures and their weight tags."""
from __future__ import annotations

import argparse

import timm

import timm_asap  # noqa: F401  (registers the architectures)


def model_rows(pattern: str = '*') -> list[dict]:
    """One row per registered ASAP/FLC architecture matching ``pattern``: name, pool, weight tags."""
    names = timm.list_models([f'{pattern}_asap', f'{pattern}_flc'])
    rows = []
    for name in names:
        tags = [p.split('.', 1)[1] for p in timm.list_pretrained(f'{name}.*')]
        rows.append(dict(architecture=name, pool=name.rsplit('_', 1)[1], tags=tags))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='timm-asap list-models', description=__doc__.split(':', 1)[1].strip())
    parser.add_argument('pattern', nargs='?', default='*', help="base-architecture wildcard, e.g. 'resnet*'")
    args = parser.parse_args(argv)
    rows = model_rows(args.pattern)
    if not rows:
        raise SystemExit(f"no registered ASAP/FLC architecture matches {args.pattern!r}; "
                         f"try 'timm-asap list-models' without a pattern")
    width = max(len(r['architecture']) for r in rows)
    for r in rows:
        print(f"{r['architecture']:<{width}}  {', '.join(r['tags']) or '(no weight tags)'}")
    return 0
