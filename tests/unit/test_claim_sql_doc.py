"""docs/claim-sql.md shows the claim's SQL as the code builds it today."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "render-claim-sql"


def test_the_rendered_claim_sql_is_current() -> None:
    script = runpy.run_path(str(SCRIPT))  # not as __main__: nothing is written
    doc: Path = script["DOC"]
    if not doc.exists() or doc.read_text(encoding="utf-8") != script["render"]():
        pytest.fail(f"{doc.relative_to(ROOT)} is stale: run scripts/render-claim-sql")


def test_both_dialects_are_rendered_with_named_parameters() -> None:
    text = (ROOT / "docs" / "claim-sql.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    for sql in blocks:
        assert set(re.findall(r":(\w+)", sql)) == {"now", "now_ts", "limit"}
        assert "?" not in sql
        assert "%(" not in sql
