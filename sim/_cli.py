"""``messenger sim``: run one seed, explore many, list the mutants.

* ``messenger sim run --seed N [--users U] [--devices D] [--steps S] [--mutant NAME] [--trace]``
  runs one seed; exit 0 when every invariant holds, 1 with the report and the end of the trace
  when one fails. The trace hash is always printed.
* ``messenger sim explore --seeds N [--start S] [--mutant NAME] ...`` runs seeds S..S+N-1 with
  a progress line; on the first failure it prints the report and the exact ``messenger sim
  run`` command that replays it, and exits 1.
* ``messenger sim mutants`` lists the mutants with what each one breaks.
* ``messenger sim score [--seeds N] [--jobs J]`` runs every mutant until a seed catches it
  and prints a table (mutant, caught, first seed, categories) and the mutation score.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from ._determinism import derive_rng
from ._faults import CLUSTER_FAULTS, FAULT_KINDS, FaultPlan
from ._mutants import MUTANTS
from ._runner import run_many
from ._workload import Workload
from ._world import RunConfig, RunResult, simulate

DEFAULT_USERS = 4
DEFAULT_DEVICES = 2
DEFAULT_STEPS = 120
#: Lines of trace printed with a failure (the whole trace with ``--trace``).
TRACE_TAIL = 60


def build_config(
    seed: int,
    *,
    users: int,
    devices: int,
    steps: int,
    mutant: str | None,
    keep_going: bool = False,
    without: frozenset[str] = frozenset(),
    nodes: int = 1,
) -> RunConfig:
    """The run of ``seed``: a swarm-chosen traffic mix and fault plan (both from the seed).

    ``without`` removes fault kinds from the plan after the swarm drew it, so the rest of
    the run (workload, rates of the other kinds) is the same as without the option. With
    one node the cluster fault kinds are left out the same way.
    """
    workload = Workload.swarm(
        derive_rng(seed, "workload-mix"), users=users, devices=devices, steps=steps
    )
    plan = FaultPlan.swarm(derive_rng(seed, "fault-plan"))
    if nodes == 1:
        without = without | CLUSTER_FAULTS
    if without:
        plan = FaultPlan(rates=tuple((k, r) for k, r in plan.rates if k not in without))
    mutants = frozenset({mutant}) if mutant else frozenset()
    return RunConfig(
        seed=seed,
        workload=workload,
        plan=plan,
        mutants=mutants,
        nodes=nodes,
        stop_on_failure=not keep_going,
    )


def replay_command(config: RunConfig, args: argparse.Namespace) -> str:
    """The exact command that replays ``config``."""
    parts = ["messenger sim run", f"--seed {config.seed}"]
    if args.users != DEFAULT_USERS:
        parts.append(f"--users {args.users}")
    if args.devices != DEFAULT_DEVICES:
        parts.append(f"--devices {args.devices}")
    if args.steps != DEFAULT_STEPS:
        parts.append(f"--steps {args.steps}")
    if config.nodes != 1:
        parts.append(f"--nodes {config.nodes}")
    if args.mutant:
        parts.append(f"--mutant {args.mutant}")
    if args.keep_going:
        parts.append("--keep-going")
    if args.without:
        parts.append(f"--without {','.join(sorted(args.without))}")
    return " ".join(parts) + " --trace"


def _add_shape(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help="simulated users")
    parser.add_argument("--devices", type=int, default=DEFAULT_DEVICES, help="devices per user")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="chaos-phase steps")
    _add_nodes(parser)
    parser.add_argument(
        "--mutant", choices=sorted(MUTANTS), default=None, help="switch on one broken variant"
    )
    parser.add_argument(
        "--without",
        type=_fault_kinds,
        default=frozenset(),
        metavar="KIND,...",
        help="leave these fault kinds out of every plan (e.g. to isolate a known bug)",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="do not stop a run at its first violated step (report every finding)",
    )


def _add_nodes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nodes",
        type=int,
        choices=(1, 2, 3),
        default=1,
        help="chat nodes sharing the Store (several: clients reconnect to any node, and the "
        "cluster faults are on)",
    )


def _fault_kinds(text: str) -> frozenset[str]:
    kinds = frozenset(k.strip() for k in text.split(",") if k.strip())
    unknown = kinds - set(FAULT_KINDS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown fault kinds {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}"
        )
    return kinds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="messenger sim",
        description="Deterministic simulation of the chat node under faults, checking G1-G9.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one seed and check every invariant")
    run.add_argument("--seed", type=int, required=True)
    _add_shape(run)
    run.add_argument("--trace", action="store_true", help="print the whole trace")
    explore = sub.add_parser("explore", help="run many seeds; stop at the first failure")
    explore.add_argument("--seeds", type=int, required=True, help="how many seeds")
    explore.add_argument("--start", type=int, default=0, help="first seed")
    explore.add_argument(
        "--jobs", type=int, default=1, help="worker processes (results stay in seed order)"
    )
    _add_shape(explore)
    sub.add_parser("mutants", help="list the mutants")
    score = sub.add_parser(
        "score", help="run every mutant over seeds until caught; print the mutation score"
    )
    score.add_argument("--seeds", type=int, default=200, help="seeds each mutant may take")
    score.add_argument("--start", type=int, default=0, help="first seed")
    score.add_argument("--jobs", type=int, default=1, help="worker processes")
    score.add_argument("--users", type=int, default=DEFAULT_USERS, help="simulated users")
    score.add_argument("--devices", type=int, default=DEFAULT_DEVICES, help="devices per user")
    score.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="chaos-phase steps")
    _add_nodes(score)
    return parser


def _summary(result: RunResult) -> str:
    return (
        f"{result.sessions} sessions, {result.steps_done} steps, "
        f"{result.virtual_s:.1f} virtual s in {result.wall_s:.2f} CPU s"
    )


def _run(args: argparse.Namespace) -> int:
    config = build_config(
        args.seed,
        users=args.users,
        devices=args.devices,
        steps=args.steps,
        mutant=args.mutant,
        keep_going=args.keep_going,
        without=args.without,
        nodes=args.nodes,
    )
    print(config.describe())
    result = simulate(config)
    if args.trace:
        print(result.trace.render())
    elif not result.ok:
        print(f"--- last {TRACE_TAIL} trace lines (--trace for all) ---")
        print(result.trace.render(last=TRACE_TAIL))
    print(result.report.render())
    print(_summary(result))
    print(f"trace hash: {result.trace_hash}")
    return 0 if result.ok else 1


def _explore(args: argparse.Namespace) -> int:
    started = time.monotonic()
    faults: Counter[str] = Counter()
    sessions = 0
    virtual = 0.0
    cpu = 0.0
    every = max(1, args.seeds // 20)
    configs = (
        build_config(
            seed,
            users=args.users,
            devices=args.devices,
            steps=args.steps,
            mutant=args.mutant,
            keep_going=args.keep_going,
            without=args.without,
            nodes=args.nodes,
        )
        for seed in range(args.start, args.start + args.seeds)
    )
    outcomes = run_many(configs, args.jobs)
    for index, outcome in enumerate(outcomes, start=1):
        faults.update(outcome.fault_counts())
        sessions += outcome.sessions
        virtual += outcome.virtual_s
        cpu += outcome.cpu_s
        if not outcome.ok:
            outcomes.close()
            config = build_config(
                outcome.seed,
                users=args.users,
                devices=args.devices,
                steps=args.steps,
                mutant=args.mutant,
                keep_going=args.keep_going,
                without=args.without,
                nodes=args.nodes,
            )
            print(f"\nseed {outcome.seed} FAILED ({index}/{args.seeds} seeds run)")
            print(config.describe())
            print(outcome.report)
            print(f"trace hash: {outcome.trace_hash}")
            print(f"replay: {replay_command(config, args)}")
            return 1
        if index % every == 0 or index == args.seeds:
            done = index / args.seeds
            bar = "#" * int(done * 30)
            print(
                f"[{bar:<30}] {index}/{args.seeds} seeds ok, {sessions} sessions, "
                f"{time.monotonic() - started:.0f} s",
                flush=True,
            )
    print(f"all {args.seeds} seeds passed (seeds {args.start}..{args.start + args.seeds - 1})")
    print(
        f"{sessions} client sessions in {cpu:.1f} CPU s ({args.jobs} jobs, "
        f"{time.monotonic() - started:.0f} s wall) = "
        f"{sessions / max(cpu, 1e-9) * 60:.0f} sessions per CPU-minute; "
        f"{virtual:.0f} virtual s = {virtual / max(cpu, 1e-9):.0f} virtual s per CPU s"
    )
    fired = ", ".join(f"{k}={v}" for k, v in sorted(faults.items())) or "none"
    print(f"faults fired: {fired}")
    return 0


def _score(args: argparse.Namespace) -> int:
    """Each mutant over seeds ``start..start+seeds-1`` until one catches it."""
    started = time.monotonic()
    rows: list[tuple[str, str, str, str]] = []
    caught = 0
    for name, mutant in MUTANTS.items():
        nodes = max(args.nodes, mutant.nodes)
        configs = (
            build_config(
                seed,
                users=args.users,
                devices=args.devices,
                steps=args.steps,
                mutant=name,
                nodes=nodes,
            )
            for seed in range(args.start, args.start + args.seeds)
        )
        outcomes = run_many(configs, args.jobs)
        found = next((o for o in outcomes if not o.ok), None)
        outcomes.close()
        if found is None:
            rows.append((name, "NO", "-", "-"))
        else:
            caught += 1
            expected = set(found.categories) & mutant.caught_as
            shown = ",".join(found.categories) + ("" if expected else " (unexpected category)")
            rows.append((name, "yes", str(found.seed), shown))
        print(f"  {name}: {rows[-1][1]} ({time.monotonic() - started:.0f} s)", flush=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'mutant':<{width}}  caught  first seed  category")
    for name, yes, seed, category in rows:
        print(f"{name:<{width}}  {yes:<6}  {seed:<10}  {category}")
    total = len(rows)
    print(
        f"\nmutation score: {caught}/{total} = {caught / total:.0%} "
        f"(seeds {args.start}..{args.start + args.seeds - 1}, {time.monotonic() - started:.0f} s)"
    )
    return 0 if caught == total else 1


def _mutants() -> int:
    width = max(len(name) for name in MUTANTS)
    for name, mutant in MUTANTS.items():
        print(f"{name:<{width}}  {mutant.switch:<6}  {mutant.breaks}")
    return 0


def main(argv: list[str]) -> int:
    """Entry point of ``messenger sim``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "explore":
        return _explore(args)
    if args.command == "score":
        return _score(args)
    return _mutants()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
