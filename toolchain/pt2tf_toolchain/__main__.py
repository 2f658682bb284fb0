"""Command line for make, nox and the Dockerfiles: `python -m pt2tf_toolchain COMMAND` (see --help)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from . import envs
from .lock import Lock, LockError, load_lock, resolve_env, staleness, write_lock
from .matrix import MatrixError, load_matrix

LANE_FIELDS = ("exporter", "opset", "converter", "serving_image")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pt2tf_toolchain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("lock", help="resolve every env of toolchain.toml and write toolchain.lock")
    sub.add_parser("check", help="fail when toolchain.lock is stale against toolchain.toml")
    env = sub.add_parser("env", help="build an env from the lock (cached) and print its path")
    env.add_argument("name")
    install = sub.add_parser("install", help="install an env from the lock into a new directory (container images)")
    install.add_argument("name")
    install.add_argument("dir", type=Path)
    lane = sub.add_parser("lane", help="print one field of a lane (the container pipeline reads them)")
    lane.add_argument("name")
    lane.add_argument("field", choices=LANE_FIELDS)
    path = sub.add_parser("path", help="print where an env lives, without building it")
    path.add_argument("name")
    sub.add_parser("prune", help="remove cached envs the current lock no longer uses")
    args = parser.parse_args(argv)

    try:
        matrix = load_matrix()
        if args.command == "lock":
            beside = Path(sys.executable).parent / "uv"  # the tools env's own uv
            uv = str(beside) if beside.exists() else shutil.which("uv") or "uv"
            locked = {}
            for name, spec in matrix.envs.items():
                print(
                    f"[pt2tf] resolving env '{name}' ({len(spec.packages) + len(spec.no_deps)} pins)", file=sys.stderr
                )
                locked[name] = resolve_env(spec, matrix, uv)
            write_lock(Lock(matrix.python, matrix.platform, locked), matrix)
            print(
                f"[pt2tf] wrote toolchain.lock: {sum(len(e.packages) for e in locked.values())} packages",
                file=sys.stderr,
            )
            return 0
        if args.command == "lane":
            print(getattr(matrix.lane(args.name), args.field))
            return 0
        lock = load_lock()
        if args.command == "check":
            problems = staleness(matrix, lock)
            for problem in problems:
                print(f"stale lock: {problem}", file=sys.stderr)
            return 1 if problems else 0
        if args.command == "env":
            print(envs.ensure_env(lock, args.name))
        elif args.command == "install":
            if args.dir.exists() and any(args.dir.iterdir()):
                raise LockError(f"{args.dir} exists and is not empty: give a new directory for env '{args.name}'")
            envs.install_env(lock.env(args.name), args.dir)
            print(args.dir)
        elif args.command == "path":
            print(envs.env_path(lock.env(args.name)))
        elif args.command == "prune":
            for removed in envs.prune_envs(lock):
                print(f"removed {removed}")
        return 0
    except (MatrixError, LockError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
