"""``timm-asap-publish``: write a model's Hub folder and upload it to the Hugging Face Hub.

Examples::

    # write the folder only (no network), e.g. to inspect the model card
    timm-asap-publish resnet18_cifar_asap.ft_fmnist --checkpoint output/train/r18 \\
        --eval-dir output/eval/r18 --dry-run

    # write and upload (token from HF_TOKEN or `hf auth login`)
    timm-asap-publish hub_configs/resnet50_asap.ft_in1k.yaml --checkpoint output/train/r50/model.safetensors \\
        --eval-dir output/eval/r50

The config (a ``hub_configs/*.yaml`` path or shipped name) gives the repository id, licence, datasets and
tags; the checkpoint folder's ``config.yaml`` (written by fine-tuning) gives the recipe actually used.
``--set section.key=value`` overrides config values. The resolved config is written into the folder as
``run_config.yaml``. Publishing refuses to go ahead without evaluation results unless ``--allow-no-eval``.

``--output`` is replaced as a whole only when it is new, empty or a Hub folder written by publishing, and
never when it holds the checkpoint or another input; anything else is refused with one line naming what is
there. The folder is locked while it is written: a second publish into it is refused.

Exit status: 0 written (and uploaded unless ``--dry-run``); 2 bad input (config, checkpoint, a refused
``--output``); 1 refused (no evaluation results) or failed upload; 3 the Hub could not be reached (one line
names the endpoint; nothing was uploaded, the folder is kept).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from timm_asap_lab.cli._errors import BAD_INPUT, STATUS_BAD_INPUT, STATUS_FAILED, STATUS_UNREACHABLE, run_cli
from timm_asap_lab.config import ConfigError, apply_overrides, load_config

__all__ = ['build_parser', 'main']


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='timm-asap-publish',
        description='Write a Hub folder (model.safetensors, config.json, README.md model card, recipe, results, '
                    'plots) for a trained model and upload it with huggingface_hub.',
        epilog='Exit status: 0 done, 2 bad input, 1 refused or failed upload, 3 the Hub could not be reached '
               '(nothing uploaded).')
    p.add_argument('config', help="hub_configs YAML file or shipped config name (e.g. 'resnet50_asap.ft_in1k')")
    p.add_argument('--checkpoint', required=True,
                   help='model.safetensors (or a timm .pth.tar), or the fine-tuning output folder holding it')
    p.add_argument('--eval-dir', default=None,
                   help='evaluation output folder with results.json, table and plots (default: <checkpoint '
                        'folder>/eval or the checkpoint folder, whichever holds results.json)')
    p.add_argument('--eval-model', default=None,
                   help="this model's name in the evaluation results when it cannot be found by name")
    p.add_argument('--output', default=None,
                   help='Hub folder to write (default: <checkpoint folder>/hub/<repo name>); replaced as a whole, '
                        'only when it is new, empty or a Hub folder that publishing wrote')
    p.add_argument('--repo-id', default=None, help='Hub repository <org>/<name> (default: hub.repo_id of the config)')
    p.add_argument('--dry-run', action='store_true', help='write the folder only; no network access')
    p.add_argument('--private', action='store_true', default=None,
                   help='create the repository private (default: hub.private of the config)')
    p.add_argument('--allow-no-eval', action='store_true', help='publish without evaluation results')
    p.add_argument('--commit-message', default=None, help='commit message (default: "Publish <folder>")')
    p.add_argument('--set', dest='overrides', action='append', default=[], metavar='SECTION.KEY=VALUE',
                   help='override a config value, e.g. --set hub.license=mit (repeatable)')
    p.add_argument('-v', '--verbose', action='store_true', help='log progress')
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format='%(levelname)s %(message)s')
    from timm_asap_lab.publish.errors import HubPublishError
    from timm_asap_lab.publish.upload import HubUnreachableError

    # bad input (ConfigError, IntegrityError, DataError, a refused --output: ValueErrors; missing files) -> 2
    return run_cli('timm-asap-publish', lambda: _publish(args),
                   [(HubUnreachableError, STATUS_UNREACHABLE), (HubPublishError, STATUS_FAILED),
                    (BAD_INPUT, STATUS_BAD_INPUT), (OSError, STATUS_FAILED)])


def _publish(args) -> int:
    from timm_asap_lab.publish import publish

    cfg = load_config(args.config)
    if args.overrides:
        cfg = apply_overrides(cfg, args.overrides)
    repo_id = args.repo_id or cfg.hub.repo_id
    if not repo_id:
        raise ConfigError(f"{args.config}: hub.repo_id is empty; set it in the config or pass --repo-id")
    ckpt = Path(args.checkpoint)
    ckpt_dir = ckpt if ckpt.is_dir() else ckpt.parent
    output = Path(args.output) if args.output else ckpt_dir / 'hub' / repo_id.split('/')[-1]
    folder, result = publish(ckpt, output, config=cfg, eval_dir=args.eval_dir, allow_no_eval=args.allow_no_eval,
                             repo_id=repo_id, dry_run=args.dry_run, private=args.private,
                             commit_message=args.commit_message, eval_model=args.eval_model,
                             overrides=args.overrides)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob('*') if p.is_file())
    print(f"Hub folder: {folder}")
    print(f"files: {', '.join(files)}")
    if result is None:
        print(f"dry run: nothing uploaded (repository would be {repo_id})")
    else:
        print(f"uploaded to {result.repo_url} (commit {result.commit_sha[:12]})")
        if not cfg.hub.published:
            print(f"next: set hub.published: true in the config of {cfg.name} so that "
                  f"timm.create_model('{cfg.name}', pretrained=True) loads these weights")
    return 0

if __name__ == '__main__':
    raise SystemExit(main())
