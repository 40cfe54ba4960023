"""Evaluate models side by side: clean, corruptions, attacks, shift consistency (see ``--help``)."""
from timm_asap_lab.cli.evaluate import main

raise SystemExit(main())
