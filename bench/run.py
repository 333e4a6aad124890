"""Run every benchmark and print one table: ``python bench/run.py [--quick] [--only TEXT]``.

Each ``bench/bench_*.py`` module has ``benchmarks() -> list[Bench]``; a module may also
have ``growth(sizes) -> list[Growth]``, printed with ``--large`` as a second table with
one column per stored-history size (100k and 1M; ``--scale`` adds 5M).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import Growth, Result, run_bench  # noqa: E402
from _markdown import write_markdown  # noqa: E402


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
    parser.add_argument("--markdown", nargs="?", const=HERE / "RESULTS.md", type=Path,
                        metavar="PATH", help="also write the table as Markdown, with the "
                        "machine and the date (default PATH: bench/RESULTS.md)")
    parser.add_argument("--large", action="store_true",
                        help="also the history-growth reports (100k and 1M events)")
    parser.add_argument("--scale", action="store_true",
                        help="--large, and the SQLite growth rows at 5M events too")
    args = parser.parse_args()
    results: list[Result] = []
    growth: list[Growth] = []
    args.large = args.large or args.scale
    sizes = [100_000, 1_000_000] + ([5_000_000] if args.scale else [])
    if args.quick:
        sizes = [n // 10 for n in sizes]
    for module in _modules():
        if args.large and hasattr(module, "growth") and args.only in f"growth {module.__name__}":
            print(f"running growth rows of {module.__name__} ...", file=sys.stderr, flush=True)
            growth.extend(module.growth(sizes))
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
    if args.markdown is not None:
        write_markdown(args.markdown, header, rows, sys.argv[1:])
    if growth:
        _print_growth(growth, sizes)
    return 0


def _size(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


def _print_growth(growth: list[Growth], sizes: list[int]) -> None:
    header = ("growth (stored history)", "unit", *(_size(n) for n in sizes), "target", "ok")
    rows = [
        (g.name, g.unit, *(f"{g.values[n]:,.2f}" if n in g.values else "-" for n in sizes),
         g.target, "-" if g.ok is None else ("yes" if g.ok else "NO"))
        for g in growth
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    print()
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    raise SystemExit(main())
