"""docs/claim-sql.md shows the claim's reads as the code builds them today."""

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


NAMED = {"now", "job_pks", "ns", "serials", "job_pk_0", "n_0", "serial_0", "keys"}


def test_every_statement_is_rendered_with_named_parameters() -> None:
    text = (ROOT / "docs" / "claim-sql.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 12  # five statements on both databases, the heads on each
    for sql in blocks:
        assert set(re.findall(r":(\w+)", sql)) <= NAMED
        assert "?" not in sql
        assert "%(" not in sql
    assert "LATERAL" in text
