"""Importing the package changes no process-wide state: tensordict's options, warnings filters, logging.

The import runs in a fresh interpreter (this one imported the package long ago). Dependencies install
warnings filters of their own when imported (scipy, torch, urllib3), so the probe records the calls
that come from this repository's files instead of comparing ``warnings.filters`` as a whole.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, logging, os, sys, warnings
import tensordict
from tensordict import list_to_stack

OURS = tuple(os.path.join(sys.argv[1], folder) + os.sep for folder in ("torchrl_gagpo",))
calls = []

def spy(owner, name):
    real = getattr(owner, name)

    def recording(*args, **kwargs):
        caller = sys._getframe(1).f_code.co_filename
        if caller.startswith(OURS):
            calls.append(f"{name} from {caller}")
        return real(*args, **kwargs)

    setattr(owner, name, recording)

for name in ("filterwarnings", "simplefilter", "resetwarnings"):
    spy(warnings, name)
spy(logging, "basicConfig")
spy(tensordict.set_list_to_stack, "set")

def state():
    root = logging.getLogger()
    return {"list_to_stack": repr(list_to_stack(allow_none=True)), "LIST_TO_STACK": os.environ.get("LIST_TO_STACK"),
            "root_handlers": len(root.handlers), "root_level": root.level,
            "package_handlers": len(logging.getLogger("torchrl_gagpo").handlers)}

before = state()
IMPORTS
print(json.dumps({"before": before, "after": state(), "calls": calls}))
"""
IMPORTS = """
import torchrl_gagpo, torchrl_gagpo.training, torchrl_gagpo.collectors, torchrl_gagpo.policies
import torchrl_gagpo.models, torchrl_gagpo.training.cli
from torchrl_gagpo.envs import ALFWorldEnv, ToyTextEnv, WebShopEnv
from torchrl_gagpo.envs import credit, webshop, alfworld
"""


def probe(imports: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.replace("IMPORTS", imports), str(ROOT)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_package_changes_no_global_state():
    result = probe(IMPORTS)
    assert result["calls"] == []
    assert result["after"] == result["before"]


def test_the_probe_sees_a_global_setting():
    """The probe catches the import-time ``set_list_to_stack(True).set()`` this package used to make."""
    result = probe("tensordict.set_list_to_stack(True).set()")
    assert result["after"]["LIST_TO_STACK"] != result["before"]["LIST_TO_STACK"]
