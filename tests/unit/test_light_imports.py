"""The shipped package stands alone, and its light parts stay light.

import-linter checks the static imports (pyproject.toml); these check what actually gets loaded,
in a fresh interpreter, so an import added in some ``__init__`` cannot slip through.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from imagestudio.cli.example import seed_example
from imagestudio.jobs.intake import IntakeLimits, build_job_spec, parse_payload
from testkit.payloads import batch_payload

HEAVY = ("sqlalchemy", "openai", "PIL", "fastapi", "pydantic", "imagestudio.store", "testkit")


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", ["imagestudio.cli.client", "imagestudio.domain"])
def test_light_modules_load_nothing_heavy(module: str) -> None:
    loaded = loaded_after(f"import {module}")
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY or m.startswith(HEAVY))
    assert heavy == []


def test_the_cli_and_the_demo_do_not_need_the_test_rigs() -> None:
    loaded = loaded_after("import imagestudio.cli.main, imagestudio.cli.demo")
    assert not [m for m in loaded if m.split(".")[0] == "testkit"]


def test_the_demo_submits_the_seeds_example() -> None:
    url = "http://127.0.0.1:9"
    demo = seed_example(url, "demo-1", api_key="sk-demo")
    assert demo == batch_payload(url, "demo-1", api_key="sk-demo")
    spec = build_job_spec(parse_payload(demo), user_id="u", limits=IntakeLimits())
    assert [(i.sku, i.stem) for i in spec.images] == [
        ("SKU1", "stem1"),
        ("SKU1", "stem2"),
        ("SKU1", "stem3"),
        ("SKU2", "stem4"),
        ("SKU3", "stem5"),
    ]


def test_botocore_loads_only_for_a_bucket() -> None:
    """A worker on local storage does not pay for botocore's import (1.5-2 s of a worker's
    start on a loaded machine); one on ``s3://`` loads it when the storage is opened."""
    local = loaded_after("import imagestudio.runtime.services, imagestudio.api.app")
    assert not [m for m in local if m.split(".")[0] in ("botocore", "aiobotocore")]
    bucket = loaded_after(
        "from imagestudio.storage import open_storage; open_storage('s3://results/x')"
    )
    assert "aiobotocore.session" in bucket
