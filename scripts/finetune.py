from timm_asap_lab.cli.finetune import main

raise SystemExit(main())
