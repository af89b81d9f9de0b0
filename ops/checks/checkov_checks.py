"""checkov over what we ship: the chart as rendered with every values file, the Terraform,
the Dockerfile and the GitHub workflows. Skips come only from ops/checkov/skips.yaml, where
each carries its reason; a skip without a reason, or one that no longer matches any finding,
fails the check. Findings name the file: for the chart, the template (and the values file it
was rendered with)."""

from __future__ import annotations

import hashlib
import json
import os
import re
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


# checkov's reports by the exact bytes it scanned (and its arguments, and the pinned tools):
# the self-test's copies scan mostly unchanged files, and checkov is the slowest check.
CACHE = OPS / ".venv" / "checkov-cache"
RANDOM_VALUES = re.compile(rb"(redis-password|checksum/password): \"[^\"]*\"")


def _cache_key(framework: str, target: list[str], cmd: list[str], cwd: Path) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([framework, cmd[cmd.index("--framework"):] if "--framework" in cmd else cmd]).encode())
    h.update((OPS / "requirements.txt").read_bytes())
    base = Path(target[-1]) if Path(target[-1]).is_absolute() else cwd / target[-1]
    files = [base] if base.is_file() else sorted(f for f in base.rglob("*") if f.is_file() and ".terraform" not in f.parts)
    for f in files:
        # Generated once per render (the Redis password and its checksum): same findings, any value.
        data = RANDOM_VALUES.sub(rb"\1: <random>", f.read_bytes())
        h.update(str(f.relative_to(base) if f != base else f.name).encode() + b"\0" + data + b"\0")
    return h.hexdigest()


def run(report: Report, chart_rendered: bool = True) -> None:
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
    targets = dict(TARGETS)
    if not chart_rendered:
        # What did not render is reported by helm-lint/helm-render; scanning a partial render
        # would only report that again.
        print("     checkov: kubernetes skipped, the chart did not render with every values file", flush=True)
        del targets["kubernetes"]
    for framework, target in targets.items():
        cmd = [sys.executable, "-m", "checkov.main", "--skip-download", "--quiet", "--compact",
               "-o", "json", "--framework", framework, *target]
        # Extra arguments for every run: the self-test makes checkov crash with one.
        cmd += os.environ.get("OPS_CHECK_CHECKOV_ARGS", "").split()
        cwd = OUT if framework == "kubernetes" else ROOT
        key = _cache_key(framework, target, cmd, cwd)
        cached = CACHE / f"{key}.json"
        if cached.exists():
            procs[framework] = json.loads(cached.read_text())
            continue
        procs[framework] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd), cached)
    for framework, target in targets.items():
        skip_ids = sorted((skips.get(framework) or {}).keys())
        if isinstance(procs[framework], dict):
            hit = procs[framework]
            proc = subprocess.CompletedProcess([], hit["returncode"], hit["stdout"], hit["stderr"])
        else:
            popen, cached = procs[framework]
            stdout, stderr = popen.communicate()
            proc = subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr)
            if proc.returncode in (0, 1) and proc.stdout.strip().startswith(("[", "{")):
                CACHE.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"returncode": proc.returncode, "stdout": proc.stdout, "stderr": ""}))
                tmp.replace(cached)
                for old in sorted(CACHE.glob("*.json"), key=lambda f: f.stat().st_mtime)[:-400]:
                    old.unlink(missing_ok=True)
        # checkov exits 0 with nothing to report, 1 with findings (we never pass --soft-fail),
        # anything else when it crashed. An empty or unreadable report is never a pass.
        if proc.returncode not in (0, 1):
            report.fail("checkov", target[-1], f"checkov ({framework}) exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-500:]}")
            continue
        try:
            data = json.loads(proc.stdout)
        except json.JSONDecodeError:
            report.fail("checkov", target[-1], f"checkov ({framework}) exited {proc.returncode} without a JSON report: {proc.stderr.strip()[-500:]}")
            continue
        results = data if isinstance(data, list) else [data]
        findings = [f for r in results if isinstance(r, dict) and "results" in r for f in r["results"]["failed_checks"]]
        parse_errors = [p for r in results if isinstance(r, dict) and "results" in r for p in r["results"].get("parsing_errors", [])]
        for p in parse_errors:
            report.fail("checkov", _source(framework, p), f"checkov ({framework}) could not parse it")
        passed_total = sum(r["summary"]["passed"] for r in results if isinstance(r, dict) and "summary" in r)
        if proc.returncode == 1 and not findings and not parse_errors:
            report.fail("checkov", target[-1], f"checkov ({framework}) exited 1 but reported no finding: {proc.stderr.strip()[-500:]}")
            continue
        if proc.returncode == 0 and findings:
            report.fail("checkov", target[-1], f"checkov ({framework}) exited 0 despite {len(findings)} findings (soft-fail?)")
            continue
        if not passed_total and not findings:
            report.fail("checkov", target[-1], f"checkov ({framework}) scanned nothing (no check passed or failed)")
            continue
        fired = {f["check_id"] for f in findings}
        for stale in sorted(set(skip_ids) - fired):
            report.fail("checkov", SKIPS, f"{framework} {stale} is skipped but no longer fires: remove it")
        real = [f for f in findings if f["check_id"] not in skip_ids]
        for f in sorted(real, key=lambda f: (f["file_path"], f["check_id"])):
            report.fail("checkov", _source(framework, f["file_path"]), f"{f['check_id']} {f['check_name']} ({f.get('resource')})")
        passed = sum(r["summary"]["passed"] for r in results if isinstance(r, dict) and "summary" in r)
        if not real and not parse_errors:
            report.ok("checkov", f"{framework}: {passed} passed, {len(findings)} findings all in skips.yaml ({len(skip_ids)} justified skips)")
