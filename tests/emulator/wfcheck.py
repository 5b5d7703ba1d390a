"""Assertions on finished executions of the local Workflows engine."""

from __future__ import annotations

import json
from typing import Any

from emulator.workflows.executions import Execution


def result(ex: Execution) -> Any:
    assert ex.state == "SUCCEEDED", f"{ex.state}: {ex.error}"
    return json.loads(ex.result or "null")


def error_payload(ex: Execution) -> Any:
    assert ex.state == "FAILED", f"{ex.state}: {ex.result}"
    assert ex.error is not None
    payload = ex.error["payload"]
    try:
        return json.loads(payload)
    except ValueError:
        return payload
