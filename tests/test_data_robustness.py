"""Corrupted data and caches (regressions of issue 15.7).

* A data file that is not UTF-8, or JSON nested 100,000 deep, is refused with the file's name.
* An absurd price ("$1" and 400 zeros, infinity as a float) is refused with the file and field.
* The default ALFWorld set is rebuilt, with a warning, when its cache holds an unlisted game or
  a malformed manifest (``{"files": [...]}``, ``[]``, a path outside the set).
* A generation killed mid-way leaves no temporary folder behind once the next use ran, and its
  planner workers end with it.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import child_pids, pid_alive

from torchrl_gagpo.envs.alfworld import data as alf_data
from torchrl_gagpo.envs.alfworld import find_games
from torchrl_gagpo.envs.webshop import WebShopData, WebShopDataError
from torchrl_gagpo.envs.webshop._records import parse_pricing
from torchrl_gagpo.envs.webshop.data import default_data_path as webshop_data_path

DEEP = "[" * 100_000 + "]" * 100_000
NOT_UTF8 = b'[{"asin": "B0\xff\xfe"}]'


# -- WebShop data files ------------------------------------------------------------------------
@pytest.fixture()
def webshop_copy(tmp_path) -> Path:
    folder = tmp_path / "webshop"
    shutil.copytree(webshop_data_path(), folder)
    return folder


@pytest.mark.parametrize("content, words", [(NOT_UTF8, "not UTF-8"), (DEEP.encode(), "nested too deeply")],
                         ids=["not_utf8", "deep"])
def test_webshop_file_errors_name_the_file(webshop_copy, content, words):
    (webshop_copy / "items_shuffle.json").write_bytes(content)
    with pytest.raises(WebShopDataError, match=rf"items_shuffle\.json: .*{words}"):
        WebShopData.load(webshop_copy)


@pytest.mark.parametrize("pricing", ["$1" + "0" * 400, "$5.00 - $1" + "0" * 400, "$" + "9" * 20],
                         ids=["inf", "inf_range", "1e20"])
def test_absurd_prices_are_refused(pricing):
    with pytest.raises(WebShopDataError, match=r"items\.json: product 3: field 'pricing'"):
        parse_pricing(pricing, Path("items.json"), "product 3")


def test_absurd_price_in_a_data_file(webshop_copy):
    items = json.loads((webshop_copy / "items_shuffle.json").read_text())
    items[2]["pricing"] = "$1" + "0" * 400
    (webshop_copy / "items_shuffle.json").write_text(json.dumps(items))
    with pytest.raises(WebShopDataError, match=r"items_shuffle\.json: product 2 .*'pricing'"):
        WebShopData.load(webshop_copy)


def test_ordinary_prices_still_parse():
    assert parse_pricing("$1,299.99", Path("x"), "p") == [1299.99]
    assert parse_pricing("$5.00 - $9.50", Path("x"), "p") == [5.0, 9.5]


# -- ALFWorld game files -----------------------------------------------------------------------
@pytest.fixture()
def one_game(one_alfworld_game) -> Path:
    return one_alfworld_game


@pytest.mark.parametrize("name", ["traj_data.json", "game.tw-pddl"])
@pytest.mark.parametrize(
    "content, words", [(NOT_UTF8, "UnicodeDecodeError"), (DEEP.encode(), "nested too deeply")],
    ids=["not_utf8", "deep"],
)
def test_alfworld_file_errors_name_the_file(one_game, tmp_path, name, content, words):
    root = tmp_path / "games"
    shutil.copytree(one_game, root)
    victim = next(root.rglob(name))
    victim.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{victim.parent.name}/{name}: .*{words}"):
        find_games(root, "train")


# -- the default-set cache ---------------------------------------------------------------------
SMALL = {"per_type": 1, "seed": 0, "splits": ["train"], "task_types": ["pick_and_place_simple"]}


@pytest.fixture()
def cache(monkeypatch, tmp_path, one_game):
    """An empty cache whose default set is a copy of ``one_game`` (no planner: the cache is under test)."""
    monkeypatch.setenv("TORCHRL_GAGPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    monkeypatch.setattr(alf_data, "DEFAULT_GAMES", SMALL)
    builds = []

    def copy_games(out, **params):
        assert params == SMALL
        builds.append(out)
        shutil.copytree(one_game / "train", Path(out) / "train")
        return sorted(p.parent for p in Path(out).rglob("game.tw-pddl"))

    monkeypatch.setattr(alf_data, "generate_games", copy_games)
    root = alf_data.default_data_path()
    assert len(builds) == 1
    return root, builds


def rebuilt(root, builds, caplog, words) -> None:
    with caplog.at_level(logging.WARNING, logger="torchrl_gagpo.envs"):
        assert alf_data.default_data_path() == root
    assert len(builds) == 2, "the set was not rebuilt"
    assert "rebuilding" in caplog.text and words in caplog.text
    assert alf_data._manifest_problem(root) is None


def test_intact_cache_is_reused(cache, caplog):
    root, builds = cache
    with caplog.at_level(logging.WARNING, logger="torchrl_gagpo.envs"):
        assert alf_data.default_data_path() == root
    assert len(builds) == 1 and not caplog.text


def test_unlisted_game_folder_triggers_a_rebuild(cache, caplog):
    root, builds = cache
    game = next(root.rglob("game.tw-pddl")).parent.parent
    shutil.copytree(game, game.with_name(game.name + "-extra"))
    rebuilt(root, builds, caplog, "unlisted")
    assert not list(root.rglob("*-extra"))


@pytest.mark.parametrize(
    "manifest, words",
    [({"files": ["train/a"]}, "malformed manifest"), ([], "malformed manifest"),
     ({"files": {"../../etc/passwd": "00"}}, "outside the set"), (DEEP, "unreadable manifest")],
    ids=["files_list", "empty_list", "outside", "deep"],
)
def test_malformed_manifest_triggers_a_rebuild(cache, caplog, manifest, words):
    root, builds = cache
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (root / "manifest.json").write_text(text)
    rebuilt(root, builds, caplog, words)


def test_stale_temporary_folder_is_removed(cache, caplog):
    root, builds = cache
    stale = root.parent / f"{root.name}.abc123"
    (stale / "train").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="torchrl_gagpo.envs"):
        alf_data.default_data_path()
    assert not stale.exists() and "interrupted generation" in caplog.text
    assert (root.parent / f"{root.name}.lock").is_file()  # the lock file is not a stale folder


KILLED = """
from torchrl_gagpo.envs.alfworld import data
data.DEFAULT_GAMES = {"per_type": 1, "seed": 0, "splits": ["train"], "task_types": ["pick_and_place_simple"]}
data.default_data_path()
"""


@pytest.mark.slow
def test_killed_generation_leaves_nothing_behind(tmp_path, monkeypatch, caplog):
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("TORCHRL_GAGPO_CACHE", str(cache_dir))
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    process = subprocess.Popen([sys.executable, "-c", KILLED], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        workers = []
        while not workers and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
            workers = child_pids(process.pid, "alfworld._solver")
        assert workers, "the generation never started a planner worker"
        base = cache_dir / "alfworld"
        scratch = [p for p in base.iterdir() if p.is_dir()]
        assert len(scratch) == 1 and "." in scratch[0].name  # the temporary folder of the generation
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    deadline = time.monotonic() + 90  # the orphaned worker ends at its next answer (broken pipe)
    while any(pid_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(pid_alive(w) for w in workers), "a planner worker outlived the killed generation"
    assert scratch[0].exists()
    monkeypatch.setattr(alf_data, "DEFAULT_GAMES", SMALL)
    with caplog.at_level(logging.WARNING, logger="torchrl_gagpo.envs"):
        root = alf_data.default_data_path()  # the next use: cleans up, then generates for real
    assert not scratch[0].exists() and "interrupted generation" in caplog.text
    assert [p for p in base.iterdir() if p.is_dir()] == [root] and len(find_games(root, "train")) == 1


if __name__ == "__main__":
    pytest.main([__file__, "-v"])
