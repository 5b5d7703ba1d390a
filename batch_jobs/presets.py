"""Presets: normalised request options -> each stage's parameters (the stage registry,
`functions.stages`, holds the values; this is the data plane's name for its `resolve`)."""

from __future__ import annotations

from functions.stages import resolve

__all__ = ["resolve"]
