"""Schemathesis against the query service's own OpenAPI schema: generated requests, valid and
invalid, and stateful sequences (create a team, then use its id): zero server errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import Org

EXAMPLES = os.environ.get("METERLINE_FUZZ_EXAMPLES", "30")


def test_query_api_has_no_server_errors(org: Org, tmp_path: Path) -> None:
    st = Path(sys.executable).parent / "st"
    result = subprocess.run(
        [str(st), "run", f"{org.stack.query_url}/schema/openapi.json", "-H", f"Authorization: Bearer {org.admin_key}",
         "--checks", "not_a_server_error", "--max-examples", EXAMPLES, "--seed", "20261122"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    summary = result.stdout[-3000:]
    print(summary)
    assert result.returncode == 0, summary
    assert " passed" in summary and "Tested: " in summary
