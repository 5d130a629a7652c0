from streaming_analytics.stack.cli import main

raise SystemExit(main())
