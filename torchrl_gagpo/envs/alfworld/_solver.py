"""Planner worker of the ALFWorld game generator: ``python -m torchrl_gagpo.envs.alfworld._solver``.

Reads one job per line on stdin (JSON ``[task_type, split, seed, index, floorplans]``), draws and
solves the game with the Fast Downward planner, and answers one JSON line per job on stdout: the
game's spec and walkthrough, or ``null`` when no draw was solvable. It exits at the end of stdin,
and when its parent is gone (end of stdin, or a broken pipe on its answer). Started by
:func:`~torchrl_gagpo.envs.alfworld.generate.generate_games` with ``subprocess``, so it never
imports the caller's ``__main__``. Not imported by the package (``python -m`` runs it cleanly).
"""

from __future__ import annotations

import os
import sys

from .generate import solve_jobs


def main() -> None:
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the engine prints goes to stderr, never into the answers

    def answer(line: str) -> None:
        answers.write(line + "\n")
        answers.flush()

    try:
        solve_jobs(sys.stdin, answer)
    except BrokenPipeError:  # the parent is gone
        os._exit(1)


if __name__ == "__main__":
    main()
