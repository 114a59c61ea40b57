"""``python -m torchrl_gagpo.training --env toy|alfworld|webshop [--field value ...]``: train with any config."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
