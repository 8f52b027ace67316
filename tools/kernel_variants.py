"""The tests marked ``kernels`` (outputs compared across batch sizes, thread counts, processes
or code paths) rerun under CPU kernel variants other than the host's own, so that a host kind
the suite has not met cannot turn `make test` red.

    python -m tools.kernel_variants [--variants ci|all|NAME ...] [-- PYTEST_ARGS]

A variant caps the instruction set of PyTorch's own kernels (ATEN_CPU_CAPABILITY) and of oneDNN's
convolutions and matrix products (ONEDNN_MAX_CPU_ISA), and may set the thread count
(OMP_NUM_THREADS); a cap above what the CPU has leaves it as it is. Each variant is one
`pytest -m kernels` run; its result and time are printed, and the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "native-1thread": {"OMP_NUM_THREADS": "1"},
    "avx512-no-bf16": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "scalar-1thread": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                       "OMP_NUM_THREADS": "1"},
}
CI = ("avx2", "scalar-1thread")  # `make test`: the AVX2-only host kind and the farthest one


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_variant(name: str, pytest_args: list[str]) -> tuple[int, float, float, str]:
    """(exit code, wall seconds, CPU seconds, pytest's last line) of ``pytest -m kernels`` under
    variant ``name`` (CPU seconds: what the run costs whatever else the host is doing)."""
    env = {**os.environ, **VARIANTS[name]}
    t0, cpu0 = time.time(), _cpu_seconds()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "kernels", "-p",
                           "no:cacheprovider", *pytest_args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    if proc.returncode != 0:
        print("\n".join(lines[-60:]), file=sys.stderr)
    return proc.returncode, time.time() - t0, _cpu_seconds() - cpu0, lines[-1] if lines else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["ci"],
                        help=f"ci ({', '.join(CI)}), all, or names from: {', '.join(VARIANTS)}")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args(argv)
    names = []
    for name in args.variants:
        picked = CI if name == "ci" else tuple(VARIANTS) if name == "all" else (name,)
        unknown = [n for n in picked if n not in VARIANTS]
        if unknown:
            parser.exit(2, f"--variants {unknown[0]}: use ci, all or one of "
                           f"{', '.join(VARIANTS)}\n")
        names += [n for n in picked if n not in names]
    failed = []
    for name in names:
        setting = " ".join(f"{k}={v}" for k, v in VARIANTS[name].items())
        code, seconds, cpu, last = run_variant(name, args.pytest_args or ["tests"])
        print(f"kernel variant {name} ({setting}): {last} [{seconds:.0f} s, {cpu:.0f} CPU s]",
              flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed under: {', '.join(failed)} (rerun one with "
              f"`python -m tools.kernel_variants --variants {failed[0]}`)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
