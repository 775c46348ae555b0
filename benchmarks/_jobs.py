"""Run many federated jobs inside one MPI launch, for the paper and overhead benchmarks;
and what every benchmark driver shares: its path arguments and how it publishes its tables.

A benchmark is dozens of short ``fedhpc run`` jobs. Starting each as its own
``mpiexec`` costs several seconds of interpreter and PyTorch start-up per rank
on a small machine, more than many of the jobs themselves, so the driver
writes a *plan* (a JSON list of jobs, each an output directory and the
``--set`` overrides of one ``fedhpc run``) and launches one MPI job that runs
them one after the other through :func:`fedhpc.runtime.job.run_job`, the same
function ``fedhpc run`` calls. Each job writes its usual ``OUT/`` (metrics.jsonl,
config.toml, run.log ...) plus ``OUT/bench.json`` with its wall time on rank 0.

    mpiexec -n 3 python -m mpi4py benchmarks/_jobs.py PLAN.json

A job whose ``OUT/bench.json`` exists and whose ``OUT/config.toml`` equals the
planned config is skipped when the plan says ``"reuse": true``, so an
interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# what every launch gets: one OpenMP/torch thread per rank (fedhpc sets torch's
# own count from local.threads), and only warnings on the console: the
# per-round lines still go to OUT/run.log
LAUNCH_ENV = {"OMP_NUM_THREADS": "1", "FEDHPC_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}


def mpiexec() -> str:
    """The ``mpiexec`` next to this interpreter (the venv's MPICH), else the one on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else "mpiexec"


def launch(script: Path, args: list[str], ranks: int, timeout: float | None = None) -> None:
    """``mpiexec -n RANKS python -m mpi4py SCRIPT ARGS``; raise with the output's tail if it fails.

    The benchmarks' directory is on every rank's ``PYTHONPATH``, so a job can
    name a model factory of these scripts (``model.name = "paper:small_char_lstm"``).
    """
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py", str(script), *args]
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, **LAUNCH_ENV, PYTHONPATH=path)
    proc = subprocess.run(cmd, env=env, timeout=timeout, stdout=None, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stderr[-4000:]}")


def run_plan(jobs: list[dict], plan_path: Path, ranks: int, reuse: bool) -> None:
    """Write the plan and run every job of it in one MPI launch."""
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_text(json.dumps({"reuse": reuse, "jobs": jobs}, indent=1))
    launch(Path(__file__), [str(plan_path)], ranks)


def read_run(out: Path) -> tuple[list[dict], dict]:
    """(metrics per round, bench.json) of a finished job."""
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return metrics, json.loads((out / "bench.json").read_text())


def time_to(metrics: list[dict], target: float) -> float | None:
    """Simulated seconds of a run until its accuracy first reaches ``target`` (None: never)."""
    t = 0.0
    for m in metrics:
        t += m["sim_seconds"]
        if m["accuracy"] is not None and m["accuracy"] >= target:
            return t
    return None


def seconds_or_never(v: float | None) -> str:
    """A :func:`time_to` in a table cell."""
    return "never" if v is None else f"{v:.2f}"


def optional_path(text: str) -> Path | None:
    """A path argument where '' means none (to switch off a default)."""
    return Path(text) if text else None


def add_output_arguments(p, tag: str) -> None:
    """``--out``, ``--json`` and ``--readme`` of a benchmark that publishes ``results/TAG.json``
    and the ``TAG`` section of the benchmarks' README."""
    p.add_argument("--out", type=Path, default=Path(f"runs/bench-{tag}"), help="where the runs go")
    p.add_argument("--json", metavar="FILE", type=optional_path, default=HERE / "results" / f"{tag}.json")
    p.add_argument("--readme", metavar="FILE", type=optional_path, default=HERE / "README.md",
                   help=f"the README whose {tag} section is rewritten ('' = none)")


def add_run_arguments(p, sizes, size_help: str, tag: str, shakespeare: bool = False) -> None:
    """``--size`` (of ``sizes``), ``--reuse``, optionally ``--shakespeare``, and the output arguments
    (:func:`add_output_arguments`) of a benchmark made of jobs."""
    p.add_argument("--size", choices=sorted(sizes), default="full", help=size_help)
    p.add_argument("--reuse", action="store_true", help="keep what an interrupted run finished")
    if shakespeare:
        p.add_argument("--shakespeare", type=Path, default=None,
                       help="a LEAF Shakespeare directory (default: the offline build, built if missing)")
    add_output_arguments(p, tag)


def script(doc: str, add_arguments, main) -> None:
    """Run a benchmark script: parse its arguments (``add_arguments``; ``doc`` is the help's
    description) and exit with ``main``'s status."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))


def replace_section(path: Path, tag: str, text: str) -> None:
    """Replace what lies between ``<!-- TAG:begin -->`` and ``<!-- TAG:end -->`` in ``path``."""
    begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    doc = path.read_text()
    if begin not in doc or end not in doc:
        raise ValueError(f"{path} has no {begin} ... {end} markers")
    head, rest = doc.split(begin, 1)
    path.write_text(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}")


def publish(text: str, results: dict, json_path: Path | None, readme: Path | None, tag: str) -> None:
    """Print a benchmark's markdown ``text``; write ``results`` as JSON to ``json_path``
    and ``text`` into the ``tag`` section of ``readme``, where given."""
    print()
    print(text)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=1))
        print(f"\nwrote {json_path}")
    if readme:
        replace_section(readme, tag, text)
        print(f"updated {readme}")


def _worker(plan_path: Path) -> int:
    from mpi4py import MPI

    from fedhpc.config import load_config
    from fedhpc.runtime.job import main_guarded, run_job

    comm = MPI.COMM_WORLD
    plan = json.loads(plan_path.read_text())
    for i, job in enumerate(plan["jobs"]):
        out = Path(job["out"])

        def go(job=job, out=out):
            cfg = load_config(None, job["sets"])
            done = None
            if comm.rank == 0:
                done = (plan["reuse"] and (out / "bench.json").exists() and (out / "config.toml").exists()
                        and load_config(out / "config.toml").to_dict() == cfg.to_dict())
            if comm.bcast(done, root=0):
                return 0
            t0 = time.perf_counter()
            status = run_job(cfg, out, comm=comm)
            if comm.rank == 0 and status == 0:
                (out / "bench.json").write_text(json.dumps({"wall_s": time.perf_counter() - t0, "ranks": comm.size}))
            return status

        t0 = time.perf_counter()
        status = main_guarded(go)
        if status != 0:
            return status
        if comm.rank == 0:
            print(f"  [{i + 1}/{len(plan['jobs'])}] {job.get('name', out.name)}: {time.perf_counter() - t0:.1f}s",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker(Path(sys.argv[1])))
