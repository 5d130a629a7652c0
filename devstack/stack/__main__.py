from devstack.stack.cli import main

raise SystemExit(main())
