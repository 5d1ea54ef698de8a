"""`make bench`: every quick benchmark in turn, each printing its own figures (no assertions).

The tuner benchmark is long (it starts many vLLM servers) and has its own target, `make bench-tune`.
A benchmark that is missing or fails is reported and the others still run; the exit code says whether
all of them ran.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent

# (script, arguments): short settings here; each script's docstring says how to run it at full length.
QUICK = (
    ("bench_parse.py", []),
    ("bench_loadgen.py", []),
    ("bench_sidecar.py", ["--minutes", "1"]),
)


def main() -> int:
    failed = []
    for script, args in QUICK:
        path = BENCH / script
        print(f"\n== {script} {' '.join(args)}".rstrip(), flush=True)
        if not path.exists():
            print(f"   missing: {path}")
            failed.append(script)
            continue
        if subprocess.run([sys.executable, str(path), *args], check=False).returncode != 0:
            failed.append(script)
    if failed:
        print(f"\nbenchmarks that did not run to the end: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
