"""Time ASAP pooling against its FFT formulation, avg_pool2d and BlurPool (see ``--help``)."""
from timm_asap_lab.cli.benchmark_layers import main

raise SystemExit(main())
