from metadata_proxy.cli import main

raise SystemExit(main())
