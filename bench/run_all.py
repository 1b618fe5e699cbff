"""Run every benchmark and add its outputs to bench/results.md, the one dated record: a section with
the machine, date and command, then each script's output (earlier sections are kept).

    python bench/run_all.py            # what `make bench` runs
    python bench/run_all.py --quick    # smaller sizes, for a smoke check

Each script prints its own side-by-side figures and ratios; this only runs them in one place and
records where and when.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from stores.files import write_text_atomic  # noqa: E402

# (script, full-size args, quick args)
BENCHES = [
    ("store_read.py", [], ["--samples", "3000"]),
    ("search_step.py", ["--steps", "10"], ["--steps", "3"]),
    ("extract.py", ["--samples", "256"], ["--samples", "96", "--rounds", "1", "--ntu-samples", "16", "--ntu-chunk", "4"]),
    ("search_cache.py", [], ["--quick"]),
    ("search_memory.py", ["--steps", "50"], ["--samples", "3000", "--steps", "10"]),
    ("search_planted.py", [], ["--seeds", "0,1", "--kinds", "joint"]),
    ("score_noise.py", [], ["--runs", "3"]),
    ("demo_spread.py", ["--seeds", "0-4"], ["--seeds", "0-1"]),
    ("demo_spread.py", ["--dataset", "mmimdb-like", "--seeds", "0-4"], ["--dataset", "mmimdb-like", "--seeds", "0-1"]),
    ("search_suite.py", ["--stores", "digits,japanesevowels", "--splits", "2"], ["--stores", "digits", "--quick"]),
]


def _machine() -> str:
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.node()} · {platform.machine()} · {os.cpu_count()} cores · {mem:.0f} GiB RAM · "
            f"Python {platform.python_version()} · torch {torch.__version__} · "
            f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*", help="script names to run (default: all)")
    ap.add_argument("--out", default=str(HERE / "results.md"))
    args = ap.parse_args()
    parts = [f"\n## run_all.py ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC})\n\n"
             f"- machine: {_machine()}\n- command: `python bench/run_all.py{' --quick' if args.quick else ''}`\n"]
    for script, full, quick in BENCHES:
        if args.only and script not in args.only:
            continue
        if not (HERE / script).exists():
            parts.append(f"\n### {script}\n\nnot present in this checkout.\n")
            continue
        cmd = [sys.executable, str(HERE / script)] + (quick if args.quick else full)
        print(f"== {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        secs = time.perf_counter() - t0
        print(proc.stdout[-4000:], proc.stderr[-2000:] if proc.returncode else "", flush=True)
        status = "" if proc.returncode == 0 else f" — FAILED (exit {proc.returncode})"
        body = proc.stdout.strip() + ("\n" + proc.stderr.strip()[-3000:] if proc.returncode else "")
        parts.append(f"\n### {script}{status}\n\n`python bench/{script} {' '.join(cmd[2:])}` · {secs:.0f} s\n\n"
                     f"```\n{body}\n```\n")
    out = Path(args.out)
    before = out.read_text() if out.is_file() else "# Benchmark results\n"
    write_text_atomic(out, before.rstrip("\n") + "\n" + "".join(parts))
    print(f"added to {args.out}")


if __name__ == "__main__":
    main()
