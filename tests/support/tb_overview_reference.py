"""The TensorBoard profiler plugin's own Overview figures for a trace: how the golden numbers in
tests/unit/test_overview.py were produced. Not run by the tests (the plugin is not a dependency).

torch-tb-profiler 0.4.3 was the plugin's last release; run it in a virtual environment of its own:

    python -m venv /tmp/tbvenv && /tmp/tbvenv/bin/pip install torch-tb-profiler==0.4.3
    /tmp/tbvenv/bin/python tests/support/tb_overview_reference.py TRACE.json.gz [...]

It prints, per trace, what the plugin's Overview page shows ("Step Time Breakdown"): percent of the average
step per role, the average step in microseconds, and how many steps it averaged.
"""

from __future__ import annotations

import json
import sys
import tempfile

ROLES = ("kernel", "memcpy", "memset", "communication", "runtime", "dataloader", "cpu_exec", "other")


def main(paths: list[str]) -> None:
    from torch_tb_profiler.profiler.data import RunProfileData
    from torch_tb_profiler.profiler.event_parser import ProfileRole

    roles = (
        ProfileRole.Kernel,
        ProfileRole.Memcpy,
        ProfileRole.Memset,
        ProfileRole.Communication,
        ProfileRole.Runtime,
        ProfileRole.DataLoader,
        ProfileRole.CpuOp,
        ProfileRole.Other,
    )
    for path in paths:
        profile = RunProfileData.parse("worker", "span", path, tempfile.mkdtemp())
        costs = profile.avg_costs.costs
        total = costs[ProfileRole.Total]
        doc = {name: round(100 * costs[role] / total, 2) for name, role in zip(ROLES, roles)}
        doc["avg_step_us"] = total
        doc["steps"] = len(profile.steps_costs)
        print(path, json.dumps(doc))


if __name__ == "__main__":
    main(sys.argv[1:])
