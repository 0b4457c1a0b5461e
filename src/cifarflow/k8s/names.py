"""Deterministic object names and the labels every cifarflow object carries.

A job's name is a pure function of (step, run id): a retried pipeline step computes the same name and finds
the job its first attempt submitted instead of starting a second one.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from cifarflow.errors import InputError

PART_OF = "cifarflow"
LABEL_STEP = "cifarflow.io/step"
LABEL_RUN = "cifarflow.io/run-id"
ANNOTATION_SPEC_HASH = "cifarflow.io/spec-hash"
ANNOTATION_RUN_ID = "cifarflow.io/run-id"

# Spark derives pod and service names from the application name (`<name>-driver`, `<name>-<16 hex>-driver-svc`),
# all capped at 63 characters; 40 leaves room for every suffix Spark and the operator add.
MAX_NAME = 40


def slug(text: str, limit: int) -> str:
    """Lowercase DNS-1123 label characters only, no leading/trailing dash."""
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return out[:limit].rstrip("-")


def job_name(step: str, run_id: str) -> str:
    """``cifarflow-<step>-<readable part of the run id>-<8 hex of its sha256>``, at most 40 characters."""
    if not run_id.strip():
        raise InputError("empty run id", "pass --run-id or let cifarflow derive one from the inputs")
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    head = f"cifarflow-{slug(step, 10)}"
    room = MAX_NAME - len(head) - len(digest) - 2
    readable = slug(run_id, room)
    return f"{head}-{readable}-{digest}" if readable else f"{head}-{digest}"


def label_value(text: str) -> str:
    """A Kubernetes label value (<= 63 chars, alphanumeric at both ends)."""
    return slug(text, 63) or "none"


def labels(step: str, run_id: str | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": f"cifarflow-{step}",
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": "cifarflow",
        LABEL_STEP: step,
    }
    if run_id is not None:
        out[LABEL_RUN] = label_value(run_id)
    out.update(extra or {})
    return out


def spec_hash(spec: dict[str, Any]) -> str:
    """Fingerprint of a job's spec: the same run id with different inputs is a conflict, not a re-attach."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def derive_run_id(step: str, args: list[str]) -> str:
    """A run id for a CLI invocation: the same command re-attaches to (or reuses) its earlier job."""
    return f"{step}-" + hashlib.sha256(json.dumps([step, *args]).encode()).hexdigest()[:12]
