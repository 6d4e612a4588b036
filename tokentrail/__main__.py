from tokentrail.cli import main

raise SystemExit(main())
