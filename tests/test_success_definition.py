"""One success definition: ``stats`` (the Summary behind it) and the recording rule
``queue:omniq_task_success:ratio_rate5m`` give the same ratio on the same events."""

from __future__ import annotations

import asyncio
import random
import shutil
from pathlib import Path
from typing import Any

import yaml
from _workloads import workload
from prometheus_client import CollectorRegistry
from test_alert_rules import RULES, run_promtool

from omniq_observe._summary import Summary
from omniq_observe.backend import MemoryBackend
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.handlers import PrometheusHandler
from omniq_observe.models.event import TaskEvent


async def _both(events: list[TaskEvent]) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    summary = Summary()
    await summary.add_all(events)
    summary.finish()
    storage = MemoryBackend()
    await storage.append(events)
    registry = CollectorRegistry()
    processor = AsyncEventProcessor(storage, "success")
    processor.register_handler(PrometheusHandler(registry=registry))
    await processor.process_events_once()
    counts = {
        (s.labels["queue"], s.labels["event_type"]): s.value
        for family in registry.collect() for s in family.samples
        if s.name == "omniq_task_events_total"
    }
    ratios = {f.queue: f.success_ratio for f in summary.queues() if f.success_ratio is not None}
    return ratios, counts


def test_stats_and_the_recording_rule_agree(tmp_path: Path) -> None:
    events = workload(random.Random(8), 120)
    ratios, counts = asyncio.run(_both(events))
    assert len(ratios) == 3 and all(0 < r < 1 for r in ratios.values())
    # Each counter grows by its final value every minute: the 5m rate ratio is the ratio
    # of the totals, which stats computes.
    series = [
        {"series": f'omniq_task_events_total{{job="omniq-observe",instance="a:9464",'
                   f'queue="{queue}",event_type="{kind}"}}',
         "values": f"0+{int(value)}x10"}
        for (queue, kind), value in counts.items() if value
    ]
    expected: list[dict[str, Any]] = [
        {"labels": f'{{job="omniq-observe",instance="a:9464",queue="{queue}"}}',
         "value": round(ratio, 4)}
        for queue, ratio in sorted(ratios.items())
    ]
    test = {
        "rule_files": ["omniq-rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [{
                "expr": "round(queue:omniq_task_success:ratio_rate5m, 0.0001)",
                "eval_time": "10m",
                "exp_samples": expected,
            }],
        }],
    }
    shutil.copy(RULES, tmp_path / "omniq-rules.yml")
    (tmp_path / "success.test.yml").write_text(yaml.safe_dump(test), "utf-8")
    result = run_promtool("test", "rules", "success.test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
