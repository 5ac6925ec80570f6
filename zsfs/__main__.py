"""Lets ``python -m zsfs`` run the zsfs command."""

from .cli import main

raise SystemExit(main())
