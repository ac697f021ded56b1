"""``python -m ltlib``: the same command line as ``ltlib``."""

from ltlib.cli import main

raise SystemExit(main())
