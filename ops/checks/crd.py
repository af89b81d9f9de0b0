"""Validation of custom resources (KEDA, External Secrets, Prometheus operator) against the
CRD schemas kept in ops/schemas/crds.

A CRD's openAPIV3Schema is structural: the API server *prunes* unknown fields, or, with
`kubectl apply --validate=strict` (server-side field validation "Strict"), rejects them. We
reproduce the strict behaviour: every object node that lists its properties gets
`additionalProperties: false`, unless the CRD marks it `x-kubernetes-preserve-unknown-fields`
or gives it an `additionalProperties` schema (a map). So `pollingIntervall` fails here as it
would fail at apply time, instead of being silently dropped.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

import jsonschema

from common import CRD_SCHEMAS, OPS

# ObjectMeta as the API server validates it, for the fields a chart may set.
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
METADATA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": _DNS_SUBDOMAIN},
        "namespace": {"type": "string", "maxLength": 63, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63, "pattern": _LABEL_VALUE}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def strictify(node):
    """Return a copy of an OpenAPI v3 (structural) schema with unknown fields rejected."""
    node = copy.deepcopy(node)

    def walk(n):
        if isinstance(n, dict):
            if (
                n.get("type") == "object"
                and "properties" in n
                and not n.get("x-kubernetes-preserve-unknown-fields")
                and "additionalProperties" not in n
            ):
                n["additionalProperties"] = False
            for v in n.values():
                walk(v)
        elif isinstance(n, list):
            for v in n:
                walk(v)

    walk(node)
    return node


@lru_cache(maxsize=None)
def schemas() -> dict[tuple[str, str], tuple[dict, Path]]:
    """(apiVersion, kind) -> (strict JSON schema, file it came from)."""
    out = {}
    for path in sorted(CRD_SCHEMAS.glob("*.json")):
        doc = json.loads(path.read_text())
        schema = strictify(doc["openAPIV3Schema"])
        schema["properties"]["metadata"] = METADATA
        schema["properties"]["apiVersion"] = {"const": f"{doc['group']}/{doc['version']}"}
        schema["properties"]["kind"] = {"const": doc["kind"]}
        schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
        schema["additionalProperties"] = False
        jsonschema.Draft202012Validator.check_schema(schema)
        out[(f"{doc['group']}/{doc['version']}", doc["kind"])] = (schema, path)
    return out


def errors(obj: dict) -> list[str] | None:
    """Schema errors of one custom resource, or None when its kind has no CRD schema here."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key not in schemas():
        return None
    schema, _ = schemas()[key]
    validator = jsonschema.Draft202012Validator(schema)
    found = []
    for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        found.append(f"{where}: {e.message}")
    return found


@lru_cache(maxsize=None)
def scaler_rules() -> dict:
    return json.loads((OPS / "schemas" / "keda-scalers.json").read_text())


def scaler_errors(obj: dict) -> list[str]:
    """KEDA trigger metadata keys: a map of strings to the CRD, a contract to each scaler."""
    found = []
    if obj.get("kind") != "ScaledObject":
        return found
    for n, trigger in enumerate(obj.get("spec", {}).get("triggers", [])):
        kind = trigger.get("type")
        rules = scaler_rules().get(kind)
        if rules is None:
            found.append(f"spec/triggers/{n}: scaler type {kind!r} is not one Teachin uses ({', '.join(k for k in scaler_rules() if not k.startswith('$'))})")
            continue
        meta = trigger.get("metadata", {})
        for key in meta:
            if key not in rules["allowed"]:
                found.append(f"spec/triggers/{n}/metadata: {key!r} is not a {kind} scaler parameter")
        if not any(all(k in meta for k in option) for option in rules["requiredOneOf"]):
            found.append(f"spec/triggers/{n}/metadata: needs one of {rules['requiredOneOf']}")
    return found
