"""The Fashion-MNIST robustness study (see ``--help``)."""
from timm_asap_lab.cli.study import main

raise SystemExit(main())
