"""The CustomResourceDefinitions in ``../shared/schemas/crds`` as JSON Schema validators.

Each served version's ``openAPIV3Schema`` is made strict the way the API server prunes: an object
schema that lists its properties accepts no others (a misspelt key would otherwise be dropped in
silence), unless it says ``x-kubernetes-preserve-unknown-fields``. The chart tests validate rendered
manifests with it, the fake Kubernetes API server (``fake_kube_api``) every object it stores.
"""

from __future__ import annotations

import copy
import os
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
# The team's shared folder sits beside the checkout (here and in CI); SHARED_DIR overrides that for
# a checkout made elsewhere.
CRDS = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared")) / "schemas" / "crds"


def strict(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object that lists its properties
    and neither sets ``additionalProperties`` nor preserves unknown fields."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@cache
def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """``(apiVersion, kind) -> validator`` for every version every CRD serves."""
    validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
    for path in sorted(CRDS.glob("*.y*ml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            # apiVersion, kind and metadata belong to every object; the API server checks metadata
            schema["properties"].update(apiVersion={"type": "string"}, kind={"type": "string"},
                                        metadata={"type": "object"})
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


def crd_errors(doc: dict[str, Any], limit: int = 5) -> list[str]:
    """Where ``doc`` breaks its CRD's schema (``path: message``, at most ``limit``); empty when it
    validates. A kind no CRD serves is an error too."""
    validator = crd_validators().get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if validator is None:
        return [f"no CRD in {CRDS} serves {doc.get('apiVersion')} {doc.get('kind')}"]
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:limit]]
