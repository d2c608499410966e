"""DBOS per-step cost on SQLite, run by ``bench/engine_overhead.py`` with the Python of DBOS's OWN virtualenv.

    /tmp/dbos-venv/bin/python bench/dbos_steps.py DIR N ROUNDS

DBOS is never a dependency of this project: create its venv with
``python -m venv /tmp/dbos-venv && /tmp/dbos-venv/bin/pip install dbos``. A workflow of N no-op ``@DBOS.step``
calls, the system database a SQLite file in DIR (so on the same filesystem as our store); prints one JSON line:
``{"version": …, "per_step_us": [...], "cpu_step_us": [...]}`` (wall and process CPU per step, one value per round).
Imports nothing from this project.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import time


def main(directory: str, n: int, rounds: int) -> None:
    from dbos import DBOS  # the DBOS venv's own package (not a project dependency)

    DBOS(
        config={"name": "mfm-bench", "system_database_url": f"sqlite:///{directory}/dbos.sqlite", "log_level": "ERROR"}
    )

    @DBOS.step()
    def noop(i: int) -> int:
        return i

    @DBOS.workflow()
    def workflow(count: int) -> int:
        total = 0
        for i in range(count):
            total += noop(i)
        return total

    DBOS.launch()
    per_step, cpu_step = [], []
    try:
        workflow(5)  # warm-up: schema, connections
        for _ in range(rounds):
            t0, c0 = time.perf_counter(), time.process_time()
            workflow(n)
            per_step.append((time.perf_counter() - t0) / n * 1e6)
            cpu_step.append((time.process_time() - c0) / n * 1e6)
    finally:
        DBOS.destroy()
    version = importlib.metadata.version("dbos")
    print(json.dumps({"version": version, "per_step_us": per_step, "cpu_step_us": cpu_step}))


if __name__ == "__main__":
    if len(sys.argv) != 4:  # e.g. `make bench`, which runs every script: this one is run by engine_overhead.py
        print("bench/dbos_steps.py: run by bench/engine_overhead.py with DBOS's own venv (see its docstring)")
    else:
        main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
