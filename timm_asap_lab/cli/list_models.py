"""``timm-asap list-models``: the registered ASAP/FLC architectures (and the CIFAR-size baselines) and their weight tags."""
from __future__ import annotations

import argparse

import timm

from timm_asap.models import get_variant, unpublished_tags

# the module registering the CIFAR-size families, whose strided baselines are ours too
_CIFAR_MODULE = 'asap_cifar'


def model_rows(pattern: str = '*') -> list[dict]:
    """One row per architecture this package registers that matches ``pattern``: the ASAP/FLC variants
    and the CIFAR-size baselines (pool ``'none'``), with loadable and not-yet-published weight tags."""
    names = sorted(set(timm.list_models([f'{pattern}_asap', f'{pattern}_flc']))
                   | set(timm.list_models(pattern, module=_CIFAR_MODULE)))
    rows = []
    for name in names:
        pending = {t.split('.', 1)[1] for t in unpublished_tags(name)}
        tags = [p.split('.', 1)[1] for p in timm.list_pretrained(f'{name}.*')]
        rows.append(dict(architecture=name, pool=get_variant(name).pool,
                         tags=[t for t in tags if t not in pending], unpublished=sorted(pending)))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='timm-asap list-models', description=__doc__.split(':', 1)[1].strip())
    parser.add_argument('pattern', nargs='?', default='*', help="base-architecture wildcard, e.g. 'resnet*'")
    args = parser.parse_args(argv)
    rows = model_rows(args.pattern)
    if not rows:
        raise SystemExit(f"no registered ASAP/FLC architecture or CIFAR-size baseline matches {args.pattern!r}; "
                         f"try 'timm-asap list-models' without a pattern")
    width = max(len(r['architecture']) for r in rows)
    for r in rows:
        pending = f"  [not published yet: {', '.join(r['unpublished'])}]" if r['unpublished'] else ''
        print(f"{r['architecture']:<{width}}  {', '.join(r['tags']) or '(no weights)'}{pending}")
    return 0
