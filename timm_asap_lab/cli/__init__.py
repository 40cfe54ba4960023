"""The command-line tools (``timm-asap`` and its subcommands).

Importing this package checks the lab's dependencies first: without them every command stops with one
line naming what is missing and the extra that installs it (exit status 2), before any import fails.
"""
import sys

from timm_asap_lab import missing_lab_dependencies

_missing = missing_lab_dependencies()
if _missing:
    sys.stderr.write(f"timm-asap: the command-line tools need the lab's dependencies, missing: "
                     f"{', '.join(_missing)}; install the [lab] extra (from a checkout: pip install -e '.[lab]', "
                     f"or '.[eval]' for evaluation and the study)\n")
    raise SystemExit(2)
