"""Throughput of resnet50 vs resnet50_asap/_flc, resnetaa50 and FFT-ASAP (see ``--help``)."""
from timm_asap_lab.cli.benchmark_models import main

raise SystemExit(main())
