from timm_asap.cli.finetune import main

raise SystemExit(main())
