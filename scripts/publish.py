"""Write a Hub folder for a trained model and upload it (see ``--help``)."""
from timm_asap_lab.cli.publish import main

raise SystemExit(main())
