"""Run every benchmark and print one table: ``python bench/run.py [--quick] [--only TEXT]``.

Each ``bench/bench_*.py`` module has ``benchmarks() -> list[Bench]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import Result, run_bench  # noqa: E402


def _modules() -> list[object]:
    modules = []
    for path in sorted(HERE.glob("bench_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules.append(module)
    return modules


def _fmt_rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:,.0f}"


def _target(result: Result) -> str:
    b = result.bench
    parts = []
    if b.target_rate is not None:
        parts.append(f">= {b.target_rate:,.0f}/s")
    if b.target_ratio is not None:
        parts.append(f"ratio >= {b.target_ratio:g}")
    return ", ".join(parts) or "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of the events, 3 repeats")
    parser.add_argument("--only", default="", help="run rows whose name contains this text")
    parser.add_argument("--web", action="store_true",
                        help="then the web view's latency on a 1,000,000-event store (slow)")
    args = parser.parse_args()
    results: list[Result] = []
    for module in _modules():
        for bench in module.benchmarks():  # type: ignore[attr-defined]
            if args.only and args.only not in bench.name:
                continue
            if args.quick:
                bench.repeats = 3
            print(f"running {bench.name} ...", file=sys.stderr, flush=True)
            results.append(run_bench(bench, 0.1 if args.quick else 1.0))
    header = (
        "benchmark", "events/s (median)", "raw baseline/s", "ratio", "target", "ok", "baseline"
    )
    rows = [
        (
            r.bench.name,
            _fmt_rate(r.rate),
            _fmt_rate(r.baseline_rate),
            "-" if r.ratio is None else f"{r.ratio:.2f}",
            _target(r),
            "yes" if r.ok else "NO",
            r.bench.baseline_name or "-",
        )
        for r in results
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))
    if args.web:
        import bench_web

        bench_web.latency()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
