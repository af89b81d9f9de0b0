"""checkov over what we ship: the chart as rendered with every values file, the Terraform,
the Dockerfile and the GitHub workflows. Skips come only from ops/checkov/skips.yaml, where
each carries its reason; a skip without a reason, or one that no longer matches any finding,
fails the check. Findings name the file: for the chart, the template (and the values file it
was rendered with)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from common import CHART, OPS, OUT, ROOT, TERRAFORM, Report

SKIPS = OPS / "checkov" / "skips.yaml"
TARGETS = {
    # Relative to OUT: checkov ignores directories under a dot-directory given by absolute path.
    "kubernetes": ["-d", "rendered"],
    "terraform": ["-d", str(TERRAFORM)],
    "dockerfile": ["-f", str(ROOT / "Dockerfile")],
    "github_actions": ["-d", str(ROOT / ".github")],
}


def _source(framework: str, file_path: str) -> str:
    """The file to fix for a finding (rendered chart files map back to their template)."""
    if framework == "kubernetes":
        parts = Path(file_path.lstrip("/")).parts
        # .out/rendered/<values>/templates/<file>
        if "rendered" in parts:
            i = parts.index("rendered")
            values = parts[i + 1] + ".yaml"
            return f"{CHART.relative_to(ROOT)}/{'/'.join(parts[i + 2:])} (with {values})"
    if framework == "terraform":
        return str((TERRAFORM / file_path.lstrip("/")).relative_to(ROOT))
    if framework == "github_actions":
        return ".github/" + file_path.lstrip("/")
    return os.path.relpath(file_path, ROOT) if os.path.isabs(file_path) else file_path


def run(report: Report) -> None:
    try:
        skips = yaml.safe_load(SKIPS.read_text()) or {}
    except yaml.YAMLError as e:
        report.fail("checkov", SKIPS, f"not valid YAML: {e}")
        return
    for framework, entries in skips.items():
        if framework not in TARGETS:
            report.fail("checkov", SKIPS, f"unknown framework {framework!r}")
        for check_id, reason in (entries or {}).items():
            if not isinstance(reason, str) or len(reason.split()) < 4:
                report.fail("checkov", SKIPS, f"{framework} {check_id}: a skipped check needs its reason")
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE", CHECKOV_RUN_SCA_PACKAGE_SCAN_V2="false", LOG_LEVEL="ERROR")
    # One checkov per framework, all at once (checkov spends most of its time starting up).
    # Run without --skip-check: the full findings show which skips still match something.
    procs = {}
    for framework, target in TARGETS.items():
        cmd = [sys.executable, "-m", "checkov.main", "--skip-download", "--quiet", "--compact",
               "-o", "json", "--framework", framework, *target]
        cwd = OUT if framework == "kubernetes" else ROOT
        procs[framework] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    for framework, target in TARGETS.items():
        skip_ids = sorted((skips.get(framework) or {}).keys())
        stdout, stderr = procs[framework].communicate()
        proc = subprocess.CompletedProcess(procs[framework].args, procs[framework].returncode, stdout, stderr)
        try:
            data = json.loads(proc.stdout) if proc.stdout.strip() else []
        except json.JSONDecodeError:
            report.fail("checkov", target[-1], f"checkov ({framework}) did not produce a report: {proc.stderr.strip()[-500:]}")
            continue
        results = data if isinstance(data, list) else [data]
        findings = [f for r in results if isinstance(r, dict) and "results" in r for f in r["results"]["failed_checks"]]
        parse_errors = [p for r in results if isinstance(r, dict) and "results" in r for p in r["results"].get("parsing_errors", [])]
        for p in parse_errors:
            report.fail("checkov", _source(framework, p), f"checkov ({framework}) could not parse it")
        fired = {f["check_id"] for f in findings}
        for stale in sorted(set(skip_ids) - fired):
            report.fail("checkov", SKIPS, f"{framework} {stale} is skipped but no longer fires: remove it")
        real = [f for f in findings if f["check_id"] not in skip_ids]
        for f in sorted(real, key=lambda f: (f["file_path"], f["check_id"])):
            report.fail("checkov", _source(framework, f["file_path"]), f"{f['check_id']} {f['check_name']} ({f.get('resource')})")
        passed = sum(r["summary"]["passed"] for r in results if isinstance(r, dict) and "summary" in r)
        if not real and not parse_errors:
            report.ok("checkov", f"{framework}: {passed} passed, {len(findings)} findings all in skips.yaml ({len(skip_ids)} justified skips)")
