"""The repository layout: the environments are a real subpackage, and the top-level ``envs`` link points at it."""

from __future__ import annotations

from pathlib import Path

import pytest

import torchrl_gagpo
from torchrl_gagpo.envs import toy

ROOT = Path(__file__).resolve().parents[1]


def test_module_names_and_files_agree():
    package = Path(torchrl_gagpo.__file__).resolve().parent
    assert Path(toy.__file__).resolve() == package / "envs" / "toy.py"


def test_top_level_envs_is_a_link_to_the_subpackage():
    link = ROOT / "envs"
    if not link.is_symlink():  # a checkout without symlink support keeps the package, loses the shortcut
        pytest.skip("this checkout has no symbolic links (git config core.symlinks false)")
    assert link.resolve() == (ROOT / "torchrl_gagpo" / "envs").resolve()
    assert (link / "alfworld" / "_worker.py").is_file()

