from timm_asap_lab.cli.main import main

raise SystemExit(main())
