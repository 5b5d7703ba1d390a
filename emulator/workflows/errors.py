"""Errors of the local Workflows engine.

Two kinds: a `DefinitionError` is what deploying a bad definition answers (the YAML never
runs); a `WorkflowError` carries a value raised while an execution runs — by `raise`, by a
failed call, by the standard library — exactly what an `except: as: e` block receives. Values
raised by the runtime are maps `{message, tags: [...]}` (plus `code`, `body`, `headers` for an
HttpError, `operation` for an OperationError), as on Google Cloud.
"""

from __future__ import annotations

from typing import Any


class DefinitionError(ValueError):
    """The workflow definition is invalid (the deploy is refused); `where` names the place."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where


class WorkflowError(Exception):
    """A raised value travelling up through the running workflow."""

    def __init__(self, value: Any) -> None:
        super().__init__(_describe(value))
        self.value = value

    @property
    def tags(self) -> list[str]:
        if isinstance(self.value, dict) and isinstance(self.value.get("tags"), list):
            return [str(t) for t in self.value["tags"]]
        return []


class ExecutionCancelled(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The execution was cancelled; nothing in the workflow can catch this."""


def tagged(tag: str, message: str, **extra: Any) -> WorkflowError:
    """A runtime error value: `{message, tags: [tag], ...extra}`."""
    return WorkflowError({"message": message, "tags": [tag], **extra})


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return f"{value.get('tags', '')} {value.get('message', value)}".strip()
    return str(value)
