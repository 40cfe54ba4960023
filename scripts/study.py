"""The Fashion-MNIST robustness study (see ``--help``)."""
from timm_asap.cli.study import main

raise SystemExit(main())
