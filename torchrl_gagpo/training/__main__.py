"""``python -m torchrl_gagpo.training --env toy|alfworld [--field value ...]``: train with any config."""

from __future__ import annotations

import json
import sys

from .config import TrainConfig, parse_config
from .envs import make_env
from .trainer import train


def main(argv=None) -> int:
    cfg = parse_config(TrainConfig, argv)
    summary = train(cfg, make_env)
    keys = ("success_before", "success_after", "iterations", "env_steps", "wall_time_s")
    print(json.dumps({k: summary[k] for k in keys}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
