"""``--param KEY=VALUE`` arguments, checked and typed against the pipeline's own declared inputs.

The pipeline function is the one list of parameters: names, types and defaults come from its KFP component
spec, so a new pipeline parameter needs no change here, and a typo fails before anything is uploaded or run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cifarflow.errors import InputError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def declared(pipeline: Any) -> dict[str, tuple[str, Any]]:
    """``{name: (kfp type, default)}`` of a compiled-able pipeline function."""
    return {name: (spec.type, spec.default) for name, spec in pipeline.component_spec.inputs.items()}


def parse(pairs: Iterable[str], pipeline: Any) -> dict[str, Any]:
    """Turn ``["epochs=3", "source=gs://b/x.tar.gz"]`` into typed arguments for ``pipeline``."""
    inputs = declared(pipeline)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"--param {pair!r} is not KEY=VALUE", "write it like --param epochs=5")
        if key not in inputs:
            raise InputError(
                f"unknown pipeline parameter {key!r}", f"use one of: {', '.join(sorted(inputs))}"
            )
        if key in out:
            raise InputError(f"--param {key} is given twice", "keep one of them")
        out[key] = coerce(key, raw, inputs[key][0])
    return out


def coerce(key: str, raw: str, kfp_type: str) -> Any:
    """One value as the KFP type the pipeline declares (``String``, ``Integer``, ``Float``, ``Boolean``)."""
    try:
        if kfp_type == "Integer":
            return int(raw)
        if kfp_type == "Float":
            return float(raw)
    except ValueError:
        kind = "an integer" if kfp_type == "Integer" else "a number"
        raise InputError(f"--param {key}={raw!r} is not {kind}", f"give {key} {kind}") from None
    if kfp_type == "Boolean":
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise InputError(f"--param {key}={raw!r} is not a boolean", f"give {key}=true or {key}=false")
    return raw
