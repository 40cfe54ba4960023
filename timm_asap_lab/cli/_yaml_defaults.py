"""YAML files of defaults for argparse CLIs (``--config opts.yaml``; the command line wins)."""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml


def read_yaml_defaults(parser: argparse.ArgumentParser, path: str | Path) -> dict:
    """Read a mapping of option names (long names with ``_``) to values and check every key is an option.

    Values given as strings are converted with the option's ``type`` (e.g. ``Path``), as on the command line.

    Raises:
        ValueError: the file is not a mapping, or names an unknown option (the allowed ones are listed).
    """
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values")
    actions = {a.dest: a for a in parser._actions if a.dest != 'help'}
    unknown = sorted(set(data) - set(actions))
    if unknown:
        raise ValueError(f"{path}: unknown option {unknown[0]!r}; allowed: {sorted(set(actions) - {'config'})}")
    for key, value in data.items():
        kind = actions[key].type
        if isinstance(value, str) and callable(kind):
            data[key] = kind(value)
    return data


def parse_args_with_yaml_defaults(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` where the YAML file named by ``--config`` supplies the defaults."""
    pre, _ = parser.parse_known_args(argv)
    if pre.config is not None:
        try:
            parser.set_defaults(**read_yaml_defaults(parser, pre.config))
        except ValueError as e:
            raise SystemExit(str(e)) from None
    return parser.parse_args(argv)
