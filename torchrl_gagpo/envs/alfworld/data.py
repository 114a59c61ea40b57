"""Where ALFWorld games come from: the embedded default set, or a directory of games.

* No ``data_path`` and no ``ALFWORLD_DATA``: a default set is generated with
  :func:`~torchrl_gagpo.envs.alfworld.generate.generate_games` into the cache
  directory on first use (once), checked against its
  manifest of blake2b digests on every later use, and rebuilt (with a logged
  warning) when files are missing, altered or unlisted, or the manifest is
  unreadable. Generation writes into a temporary folder that is renamed when
  complete; a generation that fails is cleaned up, and one whose process was
  killed leaves a folder that the next use removes.
* ``data_path`` (or ``ALFWORLD_DATA``): a directory in the official layout, either
  the root of the official download (``<root>/json_2.1.1/<split>``) or a directory
  holding the split folders (``<root>/<split>``), such as the generator's output.

Games are discovered the way alfworld's ``AlfredTWEnv`` does: every folder with a
``traj_data.json`` and a ``game.tw-pddl`` whose ``solvable`` is true, skipping
``movable`` and ``Sliced`` tasks, filtered by task type, in sorted order.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .generate import SPLITS, TASK_TYPES, generate_games, require_alfworld

__all__ = ["GameRecord", "default_data_path", "find_games", "resolve_data_path"]

logger = logging.getLogger(__name__)

#: Bump when the generator's output changes, so caches are rebuilt.
GENERATOR_VERSION = 1
DEFAULT_GAMES = {"per_type": 4, "valid_per_type": 2, "seed": 0, "floorplans": False}
HOW_TO_GET_GAMES = (
    "Generate games with `python -m torchrl_gagpo.envs.alfworld.generate --out DIR` and pass data_path=DIR, "
    "download the official set with `alfworld-download` and point data_path (or ALFWORLD_DATA) at it, "
    "or leave both unset to use the embedded default set."
)


@dataclass(frozen=True)
class GameRecord:
    """One playable game: its ``game.tw-pddl`` path, task type and split."""

    gamefile: str
    task_type: str
    split: str


def cache_root() -> Path:
    """``$TORCHRL_GAGPO_CACHE`` or ``~/.cache/torchrl_gagpo``."""
    return Path(os.environ.get("TORCHRL_GAGPO_CACHE", Path.home() / ".cache" / "torchrl_gagpo"))


def _digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def _manifest_problem(root: Path) -> str | None:
    """Why the cached set at ``root`` cannot be used, or ``None`` when it is intact."""
    manifest = root / "manifest.json"
    if not manifest.is_file():
        return "no manifest"
    try:
        content = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        return f"unreadable manifest ({type(err).__name__}: {err})"
    files = content.get("files") if isinstance(content, dict) else None
    if not (isinstance(files, dict) and files and all(isinstance(d, str) for d in files.values())):
        return "malformed manifest (expected {\"files\": {path: digest, ...}})"
    for rel, digest in files.items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            return f"malformed manifest (path {rel!r} outside the set)"
        path = root / rel
        if not path.is_file():
            return f"missing {rel}"
        if _digest(path) != digest:
            return f"altered {rel}"
    listed = set(files) | {"manifest.json"}
    for path in sorted(root.rglob("*")):
        if path.is_file() and str(path.relative_to(root)) not in listed:
            return f"unlisted {path.relative_to(root)}"
    return None


def _alfworld_version() -> str:
    """The installed alfworld's version; a missing extra says which extra to install."""
    module = require_alfworld("alfworld")
    try:
        return version("alfworld")
    except PackageNotFoundError:  # importable without package metadata (e.g. a source tree)
        return str(getattr(module, "__version__", "unknown"))


def default_data_path() -> Path:
    """The embedded default game set, generated on first use and verified afterwards."""
    key = f"default-g{GENERATOR_VERSION}-alfworld{_alfworld_version()}-s{DEFAULT_GAMES['seed']}"
    base = cache_root() / "alfworld"
    root = base / key
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent first uses wait for one generation
        for stale in base.glob(f"{key}.*"):
            if stale.is_dir():  # the scratch folder of a generation that was killed
                logger.warning("removing %s, left by an interrupted generation", stale)
                shutil.rmtree(stale, ignore_errors=True)
        problem = _manifest_problem(root)
        if problem is None:
            return root
        if root.exists():
            logger.warning("the default ALFWorld games in %s are unusable (%s); rebuilding them",
                           root, problem)
            shutil.rmtree(root)
        logger.warning("generating the default ALFWorld game set into %s (once; about a minute)", root)
        scratch = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=base))
        try:
            trials = generate_games(scratch, **DEFAULT_GAMES)
            files = {
                str(p.relative_to(scratch)): _digest(p)
                for trial in trials
                for p in sorted(trial.iterdir())
            }
            manifest = {"params": DEFAULT_GAMES, "files": files}
            (scratch / "manifest.json").write_text(json.dumps(manifest, indent=1))
            os.replace(scratch, root)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return root


#: Where alfworld puts its data by default; importing ``alfworld.info`` sets ALFWORLD_DATA to it.
ALFWORLD_DEFAULT_DIR = Path("~/.cache/alfworld").expanduser()


def _split_root(root: Path) -> Path | None:
    for candidate in (root / "json_2.1.1", root):
        if any((candidate / split).is_dir() for split in SPLITS):
            return candidate
    return None


def _configured_root() -> str | None:
    """``ALFWORLD_DATA``, unless it is empty or alfworld's own default folder holding no games."""
    value = os.environ.get("ALFWORLD_DATA")
    if not value:
        return None
    root = Path(value).expanduser()
    if root.resolve() == ALFWORLD_DEFAULT_DIR.resolve() and _split_root(root) is None:
        return None  # set by `import alfworld`, not by the user
    return value


def resolve_data_path(data_path: str | os.PathLike | None = None) -> Path:
    """The directory holding the split folders, from ``data_path``, ``ALFWORLD_DATA`` or the default."""
    source = "data_path"
    if data_path is None and _configured_root() is not None:
        data_path, source = _configured_root(), "ALFWORLD_DATA"
    if data_path is None:
        return default_data_path()
    root = Path(os.path.expandvars(os.fspath(data_path))).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"ALFWorld data not found: {source}={root} is not a directory. {HOW_TO_GET_GAMES}")
    found = _split_root(root)
    if found is not None:
        return found
    raise FileNotFoundError(
        f"no ALFWorld games under {source}={root}: expected {root}/json_2.1.1/<split> or {root}/<split> "
        f"with <split> in {SPLITS}. {HOW_TO_GET_GAMES}"
    )


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"malformed ALFWorld {what} {path}: {type(err).__name__}: {err}") from err
    except RecursionError:
        raise ValueError(f"malformed ALFWorld {what} {path}: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError(f"malformed ALFWorld {what} {path}: expected a JSON object")
    return data


def find_games(root: Path, split: str, task_types: Iterable[str] = TASK_TYPES) -> list[GameRecord]:
    """The playable games of ``split`` under ``root``, sorted by path."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}.")
    task_types = set(task_types)
    unknown = task_types - set(TASK_TYPES)
    if unknown or not task_types:
        raise ValueError(f"unknown or no task types {sorted(unknown) or []}; choose from {TASK_TYPES}.")
    split_dir = root / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"no split folder {split_dir}. {HOW_TO_GET_GAMES}")
    games = []
    for traj_file in sorted(split_dir.rglob("traj_data.json")):
        folder = traj_file.parent
        if "movable" in str(folder) or "Sliced" in str(folder):
            continue
        gamefile = folder / "game.tw-pddl"
        if not gamefile.is_file():
            continue
        task_type = _read_json(traj_file, "trajectory file").get("task_type")
        if task_type not in task_types:
            continue
        game = _read_json(gamefile, "game file")
        missing = [k for k in ("pddl_domain", "grammar", "pddl_problem") if k not in game]
        if missing:
            raise ValueError(f"malformed ALFWorld game file {gamefile}: missing {missing}")
        if game.get("solvable"):
            games.append(GameRecord(str(gamefile), task_type, split))
    if not games:
        raise FileNotFoundError(
            f"no solvable ALFWorld games of types {sorted(task_types)} in {split_dir}. {HOW_TO_GET_GAMES}"
        )
    return games
