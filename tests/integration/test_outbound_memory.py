"""Hostile answers are refused within the limits, with bounded memory (measured).

Runs ``bench.outbound_memory`` (each case in a fresh process, its peak RSS measured by the
kernel): a 300 MB image in ``b64_json``, a 300 MB result URL and a 300 MB source, declared or
chunked, and drip-fed answers from each under a 3 s deadline.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

MAX_GROWTH_MB = 100


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_hostile_answers_are_refused_with_bounded_memory_and_time() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.outbound_memory", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=280,
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(figures) == 7
    for figure in figures:
        assert figure["growth_mb"] < MAX_GROWTH_MB, figure
        assert not figure["outcome"].startswith("accepted"), figure
        if "drip-fed" in figure["case"]:
            assert 2.9 < figure["seconds"] < 5.0, figure
            assert "3 s" in figure["outcome"], figure  # the error says its limit
        else:
            assert "over the cap of" in figure["outcome"], figure
