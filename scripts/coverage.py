"""Convert one model of every timm family with asapify and report what matches (see ``--help``)."""
from timm_asap_lab.cli.coverage import main

raise SystemExit(main())
