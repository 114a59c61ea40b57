"""Offline ALFWorld game generator over the data shipped in the ``alfworld`` wheel.

The wheel carries the PDDL domain, the text grammar, the goal templates, the
object/receptacle tables and the receptacle inventories of 120 real ALFRED floor
plans, but no games. This module writes games in the official layout::

    <out>/<split>/<task_type>-<Obj>-<Mrecep>-<Parent>-<scene>/trial_<id>/
        initial_state.pddl   traj_data.json   game.tw-pddl

which alfworld's own ``AlfredTWEnv`` (TextWorld PDDL + Fast Downward) plays
unchanged. Every game is solved by the Fast Downward planner before it is
written; its walkthrough is stored in ``game.tw-pddl`` and games the planner
cannot solve are never written. Output is byte-identical for a given seed.

The planner runs in worker processes started with ``subprocess`` as
``python -m torchrl_gagpo.envs.alfworld._solver`` (never ``multiprocessing``),
so generation works from any context: a script without a ``__main__`` guard,
``python -``, ``python -c``, a notebook, a daemon process or a Ray actor.

    python -m torchrl_gagpo.envs.alfworld.generate --out DIR --per-type 4 --seed 0 [--floorplans]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from torchrl_gagpo._utils import require, stable_digest

from ._worker import drop_empty_alfworld_data

__all__ = ["SPLITS", "TASK_TYPES", "GameSpec", "generate_games", "make_spec", "render_game", "solve_game"]

#: The six ALFWorld task types, in the order of alfworld's own ``TASK_TYPES``.
TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
SPLITS = ("train", "valid_seen", "valid_unseen")


def require_alfworld(module: str):
    """Import ``module`` of the ``alfworld`` extra (alfworld, textworld) or say how to install it."""
    drop_empty_alfworld_data()
    return require(module, "alfworld")


# Real ALFRED floor plans per room type; the last five of each are held out for valid_unseen.
SCENES = {
    "Kitchen": tuple(range(1, 31)),
    "LivingRoom": tuple(range(201, 231)),
    "Bedroom": tuple(range(301, 331)),
    "Bathroom": tuple(range(401, 431)),
}
UNSEEN_PER_ROOM = 5

# Compact receptacle inventories used without --floorplans (fewer receptacles, shorter games).
COMPACT_ROOMS = {
    "Kitchen": ("Cabinet", "Cabinet", "Cabinet", "CounterTop", "CounterTop", "Drawer", "Drawer", "Fridge",
                "Microwave", "SinkBasin", "StoveBurner", "StoveBurner", "DiningTable", "GarbageCan", "Shelf",
                "CoffeeMachine", "Toaster"),
    "LivingRoom": ("Sofa", "ArmChair", "CoffeeTable", "SideTable", "SideTable", "TVStand", "Drawer", "Drawer",
                   "Shelf", "GarbageCan", "Dresser"),
    "Bedroom": ("Bed", "Desk", "Drawer", "Drawer", "Drawer", "Shelf", "Shelf", "SideTable", "GarbageCan",
                "Dresser", "LaundryHamper", "Safe"),
    "Bathroom": ("CounterTop", "SinkBasin", "SinkBasin", "Cabinet", "Cabinet", "Toilet", "TowelHolder",
                 "HandTowelHolder", "GarbageCan", "BathtubBasin", "ToiletPaperHanger"),
}
# The appliance a transform task uses may not be its goal receptacle.
APPLIANCE = {
    "pick_heat_then_place_in_recep": "Microwave",
    "pick_cool_then_place_in_recep": "Fridge",
    "pick_clean_then_place_in_recep": "SinkBasin",
}
LAMP_STANDS = ("Desk", "SideTable", "Dresser", "Nightstand")
DISTRACTORS = 8
START = "loc_bar_0_bar_0_bar_0_bar_30"


@lru_cache(maxsize=1)
def _tables() -> dict:
    """The wheel's tables (imported lazily: the extra may be missing)."""
    constants = require_alfworld("alfworld.gen.constants")
    goals = require_alfworld("alfworld.gen.goal_library")
    info = require_alfworld("alfworld.info")
    action = constants.VAL_ACTION_OBJECTS
    holders = constants.VAL_RECEPTACLE_OBJECTS
    static = sorted(set(constants.RECEPTACLES) - set(constants.MOVABLE_RECEPTACLES))
    pickable = sorted(
        o for o in constants.OBJECTS
        if o not in constants.RECEPTACLES and not o.endswith("Sliced")
        and any(o in v for v in holders.values())
    )
    return {
        "holders": {k: set(v) for k, v in holders.items()},
        "heat": set(action["Heatable"]),
        "cool": set(action["Coolable"]),
        "clean": set(action["Cleanable"]),
        "toggle": set(action["Toggleable"]),
        "slice": set(action["Sliceable"]),
        "openable": set(constants.OPENABLE_CLASS_SET),
        "objects": list(constants.OBJECTS),
        "static": static,
        "pickable": pickable,
        "rooms_for": {t: set(r) for t, r in constants.GOALS_VALID.items()},
        "goals": goals.gdict,
        "layouts": Path(constants.__file__).parent / "layouts",
        "domain": Path(info.ALFRED_PDDL_PATH).read_text(),
        "grammar": Path(info.ALFRED_TWL2_PATH).read_text(),
    }


def _mangle(alfred_id: str) -> str:
    """ALFRED id -> PDDL name, the way alfworld's demangler expects it."""
    for old, new in (("|", "_bar_"), ("-", "_minus_"), ("+", "_plus_"), (".", "_dot_"), (",", "_comma_")):
        alfred_id = alfred_id.replace(old, new)
    return alfred_id


def _receptacle_id(rtype: str, n: int) -> str:
    # The demangler appends "basin" to a "Sink|...|SinkBasin" id: that yields "sinkbasin 1".
    if rtype == "SinkBasin":
        return _mangle(f"Sink|+0{n}.00|+00.90|-01.00|SinkBasin")
    if rtype == "BathtubBasin":
        return _mangle(f"Bathtub|+0{n}.00|+00.30|-02.00|BathtubBasin")
    return _mangle(f"{rtype}|+0{n}.00|+00.00|-0{n}.50")


@dataclass
class GameSpec:
    """Everything that defines one game: the task, the scene and where things are."""

    task_type: str
    scene: int
    room: str
    object_target: str
    parent_target: str
    toggle_target: str
    seed: int
    receptacles: list[tuple[str, str]] = field(default_factory=list)  # (type, pddl id)
    objects: list[tuple[str, str, str]] = field(default_factory=list)  # (type, pddl id, receptacle id)

    @property
    def dirname(self) -> str:
        goal = self.toggle_target if self.task_type == "look_at_obj_in_light" else self.parent_target
        return f"{self.task_type}-{self.object_target}-None-{goal}-{self.scene}"

    @property
    def trial(self) -> str:
        return f"trial_{self.seed:016x}"


def _scene_receptacles(room: str, scene: int, floorplans: bool) -> tuple[list[tuple[str, str]], list[str]]:
    """Receptacle instances and the pickable object types of a real floor plan.

    With ``floorplans`` the receptacles are the plan's own; otherwise a compact
    inventory of the room type. The object types always come from the plan.
    """
    t = _tables()
    objects = json.loads((t["layouts"] / f"FloorPlan{scene}-objects.json").read_text())
    scene_objects = sorted(set(objects) & set(t["pickable"])) or t["pickable"]
    if not floorplans:
        counts: dict[str, int] = {}
        receptacles = []
        for rtype in COMPACT_ROOMS[room]:
            counts[rtype] = counts.get(rtype, 0) + 1
            receptacles.append((rtype, _receptacle_id(rtype, counts[rtype])))
        return receptacles, scene_objects
    openable = json.loads((t["layouts"] / f"FloorPlan{scene}-openable.json").read_text())
    receptacles = []
    for alfred_id in sorted(openable):
        rtype = alfred_id.split("|")[0]
        if rtype in t["static"]:
            receptacles.append((rtype, _mangle(alfred_id)))
        elif rtype == "Sink":
            receptacles.append(("SinkBasin", _mangle(alfred_id + "|SinkBasin")))
    present = {r for r, _ in receptacles}
    for rtype in sorted(set(objects) & set(t["static"]) - present):
        receptacles.append((rtype, _receptacle_id(rtype, 1)))
    return receptacles, scene_objects


def make_spec(task_type: str, split: str, seed: int, floorplans: bool = False) -> GameSpec | None:
    """Draw a game of ``task_type`` for ``split`` (``None`` when the draw finds no valid target)."""
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}; choose from {TASK_TYPES}.")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}.")
    t = _tables()
    rng = random.Random(seed)
    room = rng.choice(sorted(r for r in SCENES if r in t["rooms_for"][task_type]))
    scenes = SCENES[room]
    pool = scenes[-UNSEEN_PER_ROOM:] if split == "valid_unseen" else scenes[:-UNSEEN_PER_ROOM]
    scene = rng.choice(pool)
    receptacles, scene_objects = _scene_receptacles(room, scene, floorplans)
    rtypes = sorted({r for r, _ in receptacles})

    def holds(rtype: str, otype: str) -> bool:
        return otype in t["holders"].get(rtype, ())

    candidates = {"pick_heat_then_place_in_recep": t["heat"], "pick_cool_then_place_in_recep": t["cool"],
                  "pick_clean_then_place_in_recep": t["clean"]}.get(task_type, set(t["pickable"]))
    objects = sorted(set(candidates) & set(scene_objects)) or sorted(set(candidates) & set(t["pickable"]))
    rng.shuffle(objects)
    if APPLIANCE.get(task_type) and APPLIANCE[task_type] not in rtypes:
        return None
    lamps = [r for r in receptacles if r[0] in LAMP_STANDS]
    for obj in objects:
        starts = [r for r in rtypes if holds(r, obj)]
        if task_type == "look_at_obj_in_light":
            if starts and lamps:
                return _populate(task_type, room, scene, obj, "", "DeskLamp", receptacles, scene_objects, rng,
                                 seed)
            continue
        goals = [r for r in starts if r != APPLIANCE.get(task_type) and any(s != r for s in starts)]
        if goals:
            parent = rng.choice(goals)
            return _populate(task_type, room, scene, obj, parent, "", receptacles, scene_objects, rng, seed)
    return None


def _populate(task_type, room, scene, obj, parent, toggle, receptacles, scene_objects, rng, seed) -> GameSpec:
    """Place the targets (never already in a goal receptacle), the lamp and distractors."""
    t = _tables()
    spec = GameSpec(task_type, scene, room, obj, parent, toggle, seed, receptacles=list(receptacles))

    def place(otype: str, avoid: str = "") -> str:
        if otype in t["toggle"]:
            options = [i for r, i in receptacles if r in LAMP_STANDS]
        else:
            options = [i for r, i in receptacles if otype in t["holders"].get(r, ()) and r != avoid]
        return rng.choice(options)

    count = 0

    def add(otype: str, avoid: str = "") -> None:
        nonlocal count
        count += 1
        alfred_id = f"{otype}|+0{count % 10}.{count:02d}|+00.90|-01.{count:02d}"
        spec.objects.append((otype, _mangle(alfred_id), place(otype, avoid)))

    for _ in range((2 if task_type == "pick_two_obj_and_place" else 1) + rng.randint(0, 1)):
        add(obj, parent)
    if toggle:
        add(toggle)
    rtypes = {r for r, _ in receptacles}
    for otype in rng.sample(scene_objects, min(DISTRACTORS, len(scene_objects))):
        holdable = any(otype in t["holders"].get(r, ()) for r in rtypes)
        if otype != obj and otype not in t["toggle"] and holdable:
            add(otype)
    return spec


def problem_pddl(spec: GameSpec) -> str:
    """The PDDL problem (``initial_state.pddl``) of a game."""
    t = _tables()
    static = set(t["static"])
    locations = {rid: f"loc_bar_{n}_bar_0_bar_0_bar_30" for n, (_, rid) in enumerate(spec.receptacles, 1)}
    lines = [f"(define (problem plan_{spec.seed:016x})", "(:domain alfred)", "(:objects", "agent1 - agent"]
    lines += [f"{o}Type - otype" for o in sorted(set(t["objects"]) - static)]
    lines += [f"{r}Type - rtype" for r in sorted(static)]
    lines += [f"{oid} - object" for _, oid, _ in spec.objects]
    lines += [f"{rid} - receptacle" for _, rid in spec.receptacles]
    lines += [f"{loc} - location" for loc in locations.values()] + [f"{START} - location", ")", "(:init"]
    lines.append(f"(atLocation agent1 {START})")
    for rtype, rid in spec.receptacles:
        lines += [f"(receptacleType {rid} {rtype}Type)", f"(receptacleAtLocation {rid} {locations[rid]})"]
        if rtype in t["openable"]:
            lines.append(f"(openable {rid})")
    for rtype in sorted({r for r, _ in spec.receptacles}):
        lines += [f"(canContain {rtype}Type {o}Type)"
                  for o in sorted(t["holders"].get(rtype, ())) if o in t["objects"]]
    for otype, oid, rid in spec.objects:
        lines += [f"(objectType {oid} {otype}Type)", f"(inReceptacle {oid} {rid})",
                  f"(objectAtLocation {oid} {locations[rid]})",
                  f"(toggleable {oid})" if otype in t["toggle"] else f"(pickupable {oid})"]
        flags = (("heatable", "heat"), ("coolable", "cool"), ("cleanable", "clean"), ("sliceable", "slice"))
        lines += [f"({p} {oid})" for p, kind in flags if otype in t[kind]]
        if otype in t["holders"]:
            lines.append(f"(isReceptacleObject {oid})")
    lines.append(")")
    goal = t["goals"][spec.task_type]["pddl"].replace("#", "-")
    goal = goal.format(obj=spec.object_target, recep=spec.parent_target, toggle=spec.toggle_target, mrecep="")
    return "\n".join(lines) + "\n" + goal.strip() + "\n"


def traj_data(spec: GameSpec) -> dict:
    """The ``traj_data.json`` record alfworld reads (task type, targets, no human annotations)."""
    return {
        "task_type": spec.task_type,
        "scene": {"floor_plan": f"FloorPlan{spec.scene}", "room": spec.room, "scene_num": spec.scene},
        "pddl_params": {
            "object_target": spec.object_target,
            "parent_target": spec.parent_target,
            "toggle_target": spec.toggle_target,
            "mrecep_target": "",
            "object_sliced": False,
        },
        "turk_annotations": {"anns": []},
        "generator": {"name": "torchrl_gagpo", "seed": spec.seed},
    }


def task_description(spec: GameSpec) -> str:
    """The templated goal text (one of the goal library's templates, chosen with the game's seed)."""
    templates = _tables()["goals"][spec.task_type]["templates"]
    template = random.Random(spec.seed).choice(templates)
    return template.format(obj=spec.object_target.lower(), recep=spec.parent_target.lower(),
                           toggle=spec.toggle_target.lower(), mrecep="")


def render_game(spec: GameSpec, walkthrough: Sequence[str] | None = None) -> dict:
    """``game.tw-pddl`` content: domain, grammar with the task, problem, ``solvable``, ``walkthrough``."""
    t = _tables()
    return {
        "pddl_domain": t["domain"],
        "grammar": t["grammar"].replace("UNKNOWN GOAL", task_description(spec)),
        "pddl_problem": problem_pddl(spec),
        "solvable": walkthrough is not None,
        "walkthrough": list(walkthrough) if walkthrough is not None else None,
    }


def solve_game(gamefile: str | os.PathLike, max_steps: int = 80) -> list[str] | None:
    """Walkthrough found by the Fast Downward planner through alfworld's engine, or ``None``.

    ``gamefile`` is a ``game.tw-pddl`` with its ``traj_data.json`` beside it (alfworld's
    expert wrapper reads it).
    """
    textworld = require_alfworld("textworld")
    from textworld.envs import PddlEnv

    tw_env = require_alfworld("alfworld.agents.environment.alfred_tw_env")
    infos = textworld.EnvInfos(won=True, admissible_commands=True, policy_commands=True, extras=["gamefile"])
    env = tw_env.AlfredExpert(
        tw_env.AlfredInfos(tw_env.AlfredDemangler(PddlEnv(infos), shuffle=False)),
        expert_type=tw_env.AlfredExpertType.PLANNER,
    )
    try:
        env.load(str(gamefile))
        state = env.reset()
        walkthrough: list[str] = []
        while not state["won"] and len(walkthrough) < max_steps and state["extra.expert_plan"]:
            walkthrough.append(state["extra.expert_plan"][0])
            state, _, _ = env.step(walkthrough[-1])
        return walkthrough if state["won"] else None
    except Exception:  # the planner or the parser rejects the problem: not a playable game
        return None
    finally:
        env.close()


def _game_seed(seed: int, split: str, task_type: str, index: int, attempt: int) -> int:
    return stable_digest(f"alfworld/{seed}/{split}/{task_type}/{index}/{attempt}")


def _draw_and_solve(job: Sequence) -> tuple[GameSpec, list[str]] | None:
    """One game: draw specs until the planner solves one (at most 20 attempts)."""
    task_type, split, seed, index, floorplans = job
    for attempt in range(20):
        spec = make_spec(task_type, split, _game_seed(seed, split, task_type, index, attempt), floorplans)
        if spec is None:
            continue
        with tempfile.TemporaryDirectory() as scratch:
            walkthrough = solve_game(write_game(scratch, split, spec) / "game.tw-pddl")
        if walkthrough:
            return spec, walkthrough
    return None


def write_game(
    root: str | os.PathLike, split: str, spec: GameSpec, walkthrough: Sequence[str] | None = None
) -> Path:
    """Write the three files of one game in the official layout; returns the trial directory."""
    trial = Path(root) / split / spec.dirname / spec.trial
    trial.mkdir(parents=True, exist_ok=True)
    (trial / "initial_state.pddl").write_text(problem_pddl(spec))
    (trial / "traj_data.json").write_text(json.dumps(traj_data(spec), indent=1, sort_keys=True) + "\n")
    (trial / "game.tw-pddl").write_text(json.dumps(render_game(spec, walkthrough)))
    return trial


def generate_games(
    out: str | os.PathLike,
    *,
    per_type: int = 4,
    seed: int = 0,
    task_types: Iterable[str] = TASK_TYPES,
    splits: Iterable[str] = SPLITS,
    valid_per_type: int | None = None,
    floorplans: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Generate solvable games under ``out`` (see the module docstring); returns the trial directories.

    Args:
        out: output root; ``<out>/<split>/...`` is written.

    Keyword Args:
        per_type (int): games per task type in ``train``. Defaults to ``4``.
        seed (int): everything is derived from it. Defaults to ``0``.
        task_types (iterable of str): subset of :data:`TASK_TYPES`.
        splits (iterable of str): subset of :data:`SPLITS`.
        valid_per_type (int, optional): games per task type in each validation split;
            defaults to ``max(1, per_type // 2)``.
        floorplans (bool): receptacles from the real ALFRED floor plans (more, longer
            games) instead of compact rooms. Defaults to ``False``.
        workers (int, optional): planner worker processes (started with ``subprocess``).
            Defaults to ``min(4, cpu_count)``.
        progress (bool): show a progress bar. Defaults to ``True``.
    """
    task_types, splits = list(task_types), list(splits)
    for name, values, allowed in (("task type", task_types, TASK_TYPES), ("split", splits, SPLITS)):
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            raise ValueError(f"unknown or no {name}: {unknown or values}; choose from {allowed}.")
    if per_type < 1:
        raise ValueError(f"per_type must be >= 1, got {per_type}.")
    valid_per_type = max(1, per_type // 2) if valid_per_type is None else valid_per_type
    jobs = [
        (task_type, split, seed, index, floorplans)
        for split in splits
        for task_type in task_types
        for index in range(per_type if split == "train" else valid_per_type)
    ]
    workers = max(1, min(workers or min(4, os.cpu_count() or 1), len(jobs)))
    if not jobs:
        return []
    _tables()  # a missing extra fails here, with the install hint, not in a worker
    tqdm = require("tqdm", "alfworld").tqdm
    with tqdm(total=len(jobs), desc="solving ALFWorld games", unit="game", disable=not progress) as bar:
        results = _solve_in_workers(jobs, workers, on_result=lambda: bar.update(1))
    trials = []
    for job, result in zip(jobs, results, strict=True):
        if result is None:
            task_type, split, seed, index, _ = job
            where = f"split {split} (index {index}, seed {seed})"
            raise RuntimeError(f"no solvable {task_type} game found for {where}.")
        trials.append(write_game(out, job[1], *result))
    return trials


def _worker_command() -> list[str]:
    return [sys.executable, "-m", "torchrl_gagpo.envs.alfworld._solver"]


def _solve_in_workers(jobs: list[tuple], workers: int, on_result) -> list[tuple[GameSpec, list[str]] | None]:
    """Solve ``jobs`` in ``workers`` planner processes, one job at a time each; results in job order.

    The workers read a JSON job per line on stdin and answer a JSON line on stdout
    (see :mod:`._solver`). Any worker failure ends the generation with its stderr;
    every worker is killed on the way out (error, interrupt or success).
    """
    env = drop_empty_alfworld_data(dict(os.environ))
    results: list = [None] * len(jobs)
    pending = iter(range(len(jobs)))
    running: dict = {}  # worker -> (job index, its stderr file)
    selector = selectors.DefaultSelector()

    def send_next(process) -> bool:
        index = next(pending, None)
        if index is None:
            process.stdin.close()  # no more jobs: the worker exits
            return False
        running[process] = (index, running[process][1])
        try:
            process.stdin.write(json.dumps(jobs[index]) + "\n")
            process.stdin.flush()
        except BrokenPipeError:
            pass  # the worker died: its end of output reports it, with its stderr
        return True

    try:
        for _ in range(workers):
            stderr = tempfile.TemporaryFile()
            process = subprocess.Popen(_worker_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=stderr, env=env, text=True)
            running[process] = (None, stderr)
            selector.register(process.stdout, selectors.EVENT_READ, process)
            send_next(process)
        busy = sum(1 for index, _ in running.values() if index is not None)
        while busy:
            for key, _ in selector.select():
                process = key.data
                index, stderr = running[process]
                line = process.stdout.readline()
                if not line:
                    process.wait()
                    stderr.seek(0)
                    tail = stderr.read().decode(errors="replace")[-3000:]
                    code = process.returncode
                    raise RuntimeError(f"an ALFWorld planner worker failed (exit code {code}):\n{tail}")
                answer = json.loads(line)
                results[index] = None if answer is None else _spec_and_walkthrough(answer)
                on_result()
                running[process] = (None, stderr)
                if not send_next(process):
                    selector.unregister(process.stdout)
                    busy -= 1
    finally:
        selector.close()
        for process, (_, stderr) in running.items():
            if process.poll() is None:
                process.kill()
            process.wait()
            for stream in (process.stdin, process.stdout, stderr):
                stream.close()
    return results


def _spec_and_walkthrough(answer: dict) -> tuple[GameSpec, list[str]]:
    spec = answer["spec"]
    spec["receptacles"] = [tuple(r) for r in spec["receptacles"]]
    spec["objects"] = [tuple(o) for o in spec["objects"]]
    return GameSpec(**spec), list(answer["walkthrough"])


def solve_jobs(jobs: Iterable[str], answer) -> None:
    """The planner worker's loop: a JSON job per item of ``jobs``, a JSON answer each through ``answer``."""
    for line in jobs:
        result = _draw_and_solve(json.loads(line))
        answer(json.dumps(None if result is None else {"spec": asdict(result[0]), "walkthrough": result[1]}))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--per-type", type=int, default=4, help="train games per task type")
    parser.add_argument(
        "--valid-per-type", type=int, default=None, help="games per task type per validation split"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task-types", nargs="+", default=list(TASK_TYPES), choices=TASK_TYPES)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument(
        "--floorplans", action="store_true", help="use the real ALFRED floor-plan receptacles"
    )
    parser.add_argument("--workers", type=int, default=None, help="planner processes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            parser.error(f"{out} exists and is not empty; pass --overwrite to replace it.")
        shutil.rmtree(out)
    try:
        trials = generate_games(
            out, per_type=args.per_type, valid_per_type=args.valid_per_type, seed=args.seed,
            task_types=args.task_types, splits=args.splits, floorplans=args.floorplans, workers=args.workers,
        )
    except ImportError as err:  # a missing extra: its install hint, not a traceback
        parser.exit(1, f"error: {err}\n")
    print(f"wrote {len(trials)} solvable games under {out}")  # noqa: T201


if __name__ == "__main__":
    main()
