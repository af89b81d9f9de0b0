"""Shared plumbing of ops/check: where things are, and how a failure is reported.

Every failure names the file a person has to open to fix it (a template, a values file, a
.tf file, the Dockerfile...), relative to the repository root, because that is the one thing
the reader of a red CI log needs first.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

OPS = Path(__file__).resolve().parent.parent
ROOT = OPS.parent
CHART = OPS / "helm" / "teachin"
TERRAFORM = OPS / "terraform"
CRD_SCHEMAS = OPS / "schemas" / "crds"
OUT = OPS / ".out"

# Every values file is rendered and checked; values.redis.yaml is the shared Redis release.
VALUES_FILES = ["values.yaml", "values.dev.yaml", "values.prod.yaml", "values.template.yaml", "values.redis.yaml"]
# The namespace each values file is installed into (cloud architecture, "Kubernetes Namespaces").
NAMESPACES = {
    "values.yaml": "dev",
    "values.dev.yaml": "dev",
    "values.prod.yaml": "prod",
    "values.template.yaml": "feature-x",
    "values.redis.yaml": "redis",
}
# What the helm-deploy workflow adds with --set at deploy time, read from Azure (not committed
# in a values file): the ClusterSecretStore's vault and the reader identity's client id.
# The render uses stand-ins of the right shape.
DEPLOY_SETS = {
    vf: {"externalSecrets": {"store": {
        "vaultUrl": f"https://{ns}-teachin-kv.vault.azure.net/",
        "identityClientId": "11111111-2222-4333-8444-555555555555",
        "tenantId": "66666666-7777-4888-9999-aaaaaaaaaaaa",
    }}}
    for vf, ns in NAMESPACES.items() if vf != "values.redis.yaml"
}
# Kinds that live outside any namespace (no metadata.namespace).
CLUSTER_SCOPED = {"ClusterSecretStore", "ClusterIssuer"}

# The Kubernetes minor the rendered objects must be valid for: the AKS version pinned in
# terraform.tfvars.* (ops/check verifies they agree).
KUBERNETES_VERSION = "1.33"
# The terraform release CI runs `terraform fmt` and `terraform test` with, and the workflows
# install (ops/check compares them).
TERRAFORM_VERSION = "1.11.4"


def rel(path: Path | str) -> str:
    """A path as the reader sees it from the repository root."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


@dataclass
class Report:
    """Collects failures; `fail_fast` stops at the first (the self-test uses it)."""

    fail_fast: bool = False
    failures: list[str] = field(default_factory=list)
    # What could not run here (said again in the last line, so nobody mistakes it for a pass).
    skipped: list[str] = field(default_factory=list)

    def fail(self, step: str, path: Path | str, message: str) -> None:
        where = rel(path) if isinstance(path, Path) or os.sep in str(path) else str(path)
        # One line per failure, so `grep FAIL` shows everything a CI log has to say.
        message = " | ".join(part.strip() for part in str(message).splitlines() if part.strip())
        line = f"FAIL [{step}] {where}: {message}"
        if line in self.failures:
            return
        self.failures.append(line)
        print(line, flush=True)
        if self.fail_fast:
            raise StopCheck()

    def ok(self, step: str, message: str) -> None:
        print(f"ok   [{step}] {message}", flush=True)


class StopCheck(Exception):
    """Raised to stop at the first failure in fail-fast mode."""


def note(message: str) -> None:
    print(f"     {message}", file=sys.stdout, flush=True)
