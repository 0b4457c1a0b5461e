"""What kube-apiserver does with a custom resource's structural schema before it stores it: defaulting,
pruning of unknown fields, validation with every error listed, and ``metadata.name`` rules.

Kept apart from ``fakeapi.py`` so the HTTP plumbing stays readable; the behaviour follows apiextensions-apiserver
(``structural/defaulting``, ``structural/pruning``, ``validation``) for the schema features the CRDs in
``../shared/crds`` use. CEL rules (``x-kubernetes-validations``) are not evaluated.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema

Obj = dict[str, Any]
Schema = dict[str, Any]

# The ObjectMeta fields a client may send; anything else under metadata is an unknown field too.
OBJECT_META = {
    "name",
    "generateName",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
    "selfLink",
}
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)


def apply_defaults(value: Any, schema: Schema) -> None:
    """Fill in ``default``s of absent properties of every object that is present (in place)."""
    if isinstance(value, dict):
        props: dict[str, Schema] = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        for key, item in value.items():
            if key in props:
                apply_defaults(item, props[key])
            elif isinstance(schema.get("additionalProperties"), dict):
                apply_defaults(item, schema["additionalProperties"])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(item, schema["items"])


def prune(value: Any, schema: Schema, path: str = "") -> list[str]:
    """Drop fields the schema does not declare (in place); return their paths, as the API server's warnings
    name them (``spec.x``)."""
    dropped: list[str] = []
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return dropped
        props: dict[str, Schema] = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        embedded = schema.get("x-kubernetes-embedded-resource")
        for key in list(value):
            where = f"{path}.{key}" if path else key
            if key in props:
                dropped += prune(value[key], props[key], where)
            elif isinstance(extra, dict):
                dropped += prune(value[key], extra, where)
            elif extra is True or (embedded and key in ("apiVersion", "kind", "metadata")):
                continue
            else:
                del value[key]
                dropped.append(where)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            dropped += prune(item, schema["items"], f"{path}[{i}]")
    return dropped


def prune_object(obj: Obj, schema: Schema) -> list[str]:
    """A whole custom object: the root's metadata is ObjectMeta, the rest follows the CRD's schema."""
    dropped = [f"metadata.{k}" for k in list(obj.get("metadata") or {}) if k not in OBJECT_META]
    for key in dropped:
        del obj["metadata"][key.removeprefix("metadata.")]
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    dropped += prune(body, schema)
    for key in [k for k in obj if k not in ("apiVersion", "kind", "metadata") and k not in body]:
        del obj[key]
    return dropped


def _field(error: jsonschema.ValidationError) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def causes(obj: Obj, validator: jsonschema.protocols.Validator) -> list[Obj]:
    """Every schema violation, as the ``details.causes`` of a 422 (FieldValueInvalid & co)."""
    out: list[Obj] = []
    name = (obj.get("metadata") or {}).get("name", "")
    if not isinstance(name, str) or not name:
        out.append(
            {
                "reason": "FieldValueRequired",
                "message": "Required value: name or generateName is required",
                "field": "metadata.name",
            }
        )
    elif not DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
        out.append(
            {
                "reason": "FieldValueInvalid",
                "message": f'Invalid value: "{name}": {DNS1123_MESSAGE}',
                "field": "metadata.name",
            }
        )
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        reason = "FieldValueRequired" if error.validator == "required" else "FieldValueInvalid"
        text = (
            f"Required value: {error.message}"
            if reason == "FieldValueRequired"
            else f"Invalid value: {error.message}"
        )
        out.append({"reason": reason, "message": text, "field": _field(error)})
    return out


def invalid_message(kind: str, group: str, name: str, found: list[Obj]) -> str:
    """``TFJob.kubeflow.org "x" is invalid: [a: Invalid value: ..., b: Required value: ...]``."""
    parts = [f"{c['field']}: {c['message']}" for c in found]
    listed = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return f'{kind}.{group} "{name}" is invalid: {listed}'
