"""Lets ``python -m zsfs`` run the zsfs command."""

from zsfs.cli import main

raise SystemExit(main())
