"""``timm-asap``: one entry point for every tool, ``timm-asap <command> [options]``."""
from __future__ import annotations

import importlib
import sys

# command -> (module under timm_asap_lab.cli, one-line description)
COMMANDS = {
    'study': ('study', 'the Fashion-MNIST robustness study: train, evaluate, publish (dry run), reload'),
    'finetune': ('finetune', 'fine-tune an ASAP/FLC model from a hub_configs YAML'),
    'evaluate': ('evaluate', 'clean, corruption, adversarial and shift-consistency evaluation'),
    'compare': ('compare', 'the zero-shot cost of converting a model: base vs converted top-1, agreement, repair'),
    'repair': ('repair', "re-estimate a converted model's BatchNorm statistics from unlabeled images and save it"),
    'publish': ('publish', 'write a Hub folder (model card, config.json, safetensors) and upload it'),
    'list-models': ('list_models', 'list the registered ASAP/FLC architectures (and CIFAR-size baselines) with their weight tags'),
    'coverage': ('coverage', 'convert one model of every timm CNN family and report what matches'),
    'benchmark-layers': ('benchmark_layers', 'time the pooling layers against their baselines'),
    'benchmark-models': ('benchmark_models', 'time whole networks (resnet50 vs its ASAP/FLC/BlurPool variants)'),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ['usage: timm-asap <command> [options]', '', 'commands:']
    lines += [f'  {name:<{width}}  {desc}' for name, (_, desc) in COMMANDS.items()]
    lines += ['', "run 'timm-asap <command> --help' for a command's options"]
    return '\n'.join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"timm-asap: unknown command {command!r}; choose from: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f'timm_asap_lab.cli.{COMMANDS[command][0]}')
    return module.main(rest)


if __name__ == '__main__':
    raise SystemExit(main())
