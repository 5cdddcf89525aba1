from hapair.cli import main

raise SystemExit(main())
