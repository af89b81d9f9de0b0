"""Everything that is neither the chart's objects nor Terraform's structure: YAML and JSON
syntax and style, the Grafana dashboards, the Dockerfile's shape, the workflows' shape, the
ClusterSecretStore manifest Terraform applies, Terraform formatting and its offline tests,
and the one contract between chart and Terraform: every Key Vault secret the chart reads is
one Terraform writes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml
from yamllint import config as ylconfig
from yamllint import linter

import crd
from common import CHART, OPS, ROOT, TERRAFORM, TERRAFORM_VERSION, Report, rel

WORKFLOWS = ROOT / ".github" / "workflows"


def yaml_files() -> list[Path]:
    files = sorted(CHART.glob("*.yaml")) + [OPS / "checkov" / "skips.yaml", OPS / ".yamllint.yaml"]
    files += sorted(WORKFLOWS.glob("*.y*ml")) + sorted((OPS / "platform").glob("*.yaml"))
    return [f for f in files if f.exists()]


def check_yaml(report: Report) -> None:
    conf = ylconfig.YamlLintConfig(file=str(OPS / ".yamllint.yaml"))
    bad = 0
    for f in yaml_files():
        for problem in linter.run(f.read_text(), conf, str(f)):
            if problem.level == "error":
                bad += 1
                report.fail("yamllint", f, f"line {problem.line}: {problem.desc} ({problem.rule})")
    json_files = [CHART / "values.schema.json", OPS / "schemas" / "keda-scalers.json"]
    json_files += sorted((OPS / "schemas" / "crds").glob("*.json")) + sorted((CHART / "dashboards").glob("*.json"))
    for f in json_files:
        try:
            json.loads(f.read_text())
        except json.JSONDecodeError as e:
            bad += 1
            report.fail("json", f, f"not valid JSON: {e}")
    for f in sorted((CHART / "dashboards").glob("*.json")):
        try:
            d = json.loads(f.read_text())
        except json.JSONDecodeError:
            continue
        if not d.get("uid") or not d.get("title") or not d.get("panels"):
            bad += 1
            report.fail("dashboards", f, "a dashboard needs uid, title and panels")
        for p in d.get("panels", []):
            if not p.get("targets") or not all(t.get("expr") for t in p["targets"]):
                bad += 1
                report.fail("dashboards", f, f"panel {p.get('title')!r} has no PromQL target")
    if not bad:
        report.ok("yaml", f"{len(yaml_files())} YAML files lint clean, {len(json_files)} JSON files parse")


def check_dockerfile(report: Report) -> None:
    path = ROOT / "Dockerfile"
    if not path.exists():
        report.fail("dockerfile", path, "is missing")
        return
    text = path.read_text()
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    before = len(report.failures)
    if len(froms) < 2:
        report.fail("dockerfile", path, "must be multi-stage (build, then a runtime stage)")
    final = lines[lines.index(froms[-1]):] if froms else []
    users = [l.split(None, 1)[1] for l in final if l.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        report.fail("dockerfile", path, "the runtime stage must switch to a non-root USER")
    if any(re.search(r"\b(apt-get|apk|yum)\b", l) for l in final):
        report.fail("dockerfile", path, "the runtime stage must not install packages (keep it minimal)")
    cargo = (ROOT / "Cargo.toml").read_text()
    bins = re.findall(r'\[\[bin\]\]\s*name\s*=\s*"([^"]+)"', cargo)
    entry = [l for l in final if l.upper().startswith("ENTRYPOINT")]
    if bins and (not entry or f"/{bins[0]}" not in entry[-1]):
        report.fail("dockerfile", path, f"ENTRYPOINT must run the `{bins[0]}` binary")
    # Unset, TEACHIN_ENV means local mode and its published secrets: the image names a cloud
    # environment, so it refuses to start without secrets of its own (src/config.rs).
    envs = [re.match(r"ENV\s+TEACHIN_ENV[=\s]+\"?([^\"\s]+)", l) for l in final]
    envs = [e[1] for e in envs if e]
    if not envs or envs[-1].lower() == "local":
        report.fail("dockerfile", path, "the runtime stage must set TEACHIN_ENV to a cloud environment "
                    "(e.g. ENV TEACHIN_ENV=production), or the image runs in local mode on the published secrets")
    m = re.search(r'rust-version\s*=\s*"(\d+)\.(\d+)', cargo)
    arg = re.search(r"ARG RUST_VERSION=(\d+)\.(\d+)", text)
    if m and arg and (int(arg[1]), int(arg[2])) < (int(m[1]), int(m[2])):
        report.fail("dockerfile", path, f"RUST_VERSION {arg[1]}.{arg[2]} is older than the workspace's rust-version {m[1]}.{m[2]}")
    ignore = ROOT / ".dockerignore"
    if not ignore.exists() or "target" not in ignore.read_text().split():
        report.fail("dockerfile", ignore, "must exclude target/ from the build context")
    if len(report.failures) == before:
        report.ok("dockerfile", "multi-stage, non-root runtime, runs the teachin binary, TEACHIN_ENV set")


def check_workflows(report: Report) -> None:
    before = len(report.failures)
    files = sorted(WORKFLOWS.glob("*.y*ml"))
    names = {f.stem for f in files}
    for needed in ("build-and-push", "terraform", "helm-deploy", "aks-schedule", "tests"):
        if needed not in names:
            report.fail("workflows", WORKFLOWS / f"{needed}.yaml", "is missing")
    for f in files:
        try:
            wf = yaml.safe_load(f.read_text())
        except yaml.YAMLError as e:
            report.fail("workflows", f, f"not valid YAML: {e}")
            continue
        on = wf.get("on", wf.get(True))
        if not wf.get("name") or not on or not wf.get("jobs"):
            report.fail("workflows", f, "needs name, on and jobs")
            continue
        if "permissions" not in wf:
            report.fail("workflows", f, "must declare top-level permissions (least privilege for GITHUB_TOKEN)")
        for job_name, job in wf["jobs"].items():
            if "uses" in job:
                continue
            for key in ("runs-on", "timeout-minutes", "steps"):
                if key not in job:
                    report.fail("workflows", f, f"job {job_name}: missing {key}")
            for step in job.get("steps", []):
                uses = step.get("uses")
                if uses and not re.search(r"@(v\d+(\.\d+)*|[0-9a-f]{40}|\d+\.\d+\.\d+)$", uses):
                    report.fail("workflows", f, f"job {job_name}: action {uses!r} is not pinned to a version")
        text = f.read_text()
        # Not \b: a word boundary before `.ci` needs a word character in front of the dot, so
        # `bash .ci/run` never matched. Any path start that is not inside a longer path counts.
        for path in sorted(set(re.findall(r"(?<![\w./-])((?:ops|\.ci)/[A-Za-z0-9_./-]*[A-Za-z0-9_])", text))):
            if "$" in path or not (ROOT / path).exists():
                # Paths built from variables are checked through the values files they name.
                if "$" not in path:
                    report.fail("workflows", f, f"refers to {path}, which does not exist")
        for vf in re.findall(r"values\.(\w+)\.yaml", text):
            if not (CHART / f"values.{vf}.yaml").exists():
                report.fail("workflows", f, f"refers to values.{vf}.yaml, which the chart does not have")
    if len(report.failures) == before:
        report.ok("workflows", f"{len(files)} workflows: triggers, permissions, pinned actions, paths")


def terraform_secret_names() -> set[str]:
    text = (TERRAFORM / "secrets.tf").read_text()
    return set(re.findall(r'^\s*"([0-9A-Za-z-]+)"\s*=', text, re.M))


def check_secret_contract(report: Report, remote_keys: dict[str, Path]) -> None:
    written = terraform_secret_names()
    before = len(report.failures)
    for key, template in sorted(remote_keys.items()):
        if key not in written:
            report.fail("secrets-contract", CHART / "values.yaml", f"ExternalSecret reads Key Vault secret {key!r}, which ops/terraform/secrets.tf never writes")
    if len(report.failures) == before:
        report.ok("secrets-contract", f"all {len(remote_keys)} Key Vault secrets the chart reads are written by Terraform")


def terraform_binary() -> str | None:
    """The terraform binary: OPS_CHECK_TERRAFORM when set (the self-test points it at nothing),
    else the one on PATH."""
    forced = os.environ.get("OPS_CHECK_TERRAFORM")
    if forced is not None:
        return forced if Path(forced).is_file() and os.access(forced, os.X_OK) else None
    return shutil.which("terraform")


def check_terraform_tools(report: Report) -> None:
    tf = terraform_binary()
    pin = TERRAFORM_VERSION
    for wf in sorted(WORKFLOWS.glob("*.y*ml")):
        for v in re.findall(r"terraform_version:\s*\"?([0-9.]+)", wf.read_text()):
            if v != pin:
                report.fail("terraform-tools", wf, f"installs terraform {v}, but the pinned version is {pin} (ops/checks/common.py TERRAFORM_VERSION)")
    if tf is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            report.fail("terraform-tools", TERRAFORM, f"terraform {pin} is not installed, so `terraform fmt -check` and `terraform test` "
                        "cannot run; CI must have it (the machine image has it at /usr/local/bin/terraform; GitHub's "
                        "workflow installs it with hashicorp/setup-terraform)")
            return
        banner = "!" * 78
        print(f"     {banner}\n     SKIPPED: terraform is not installed: `terraform fmt -check` and `terraform test` DID NOT RUN.\n"
              f"     Install terraform {pin} to run them (CI fails without it). The HCL checks above still ran.\n     {banner}", flush=True)
        report.skipped.append("terraform fmt -check and terraform test (no terraform)")
        return
    ver = subprocess.run([tf, "version", "-json"], capture_output=True, text=True)
    try:
        have = json.loads(ver.stdout).get("terraform_version")
    except json.JSONDecodeError:
        have = None
    if have != pin:
        report.fail("terraform-tools", TERRAFORM, f"terraform at {tf} is {have or 'unknown'}, the pinned version is {pin} (ops/checks/common.py TERRAFORM_VERSION)")
        return
    proc = subprocess.run([tf, "fmt", "-check", "-recursive", "-list=true", str(TERRAFORM)], capture_output=True, text=True, cwd=ROOT)
    unformatted = [l for l in proc.stdout.splitlines() if l.strip()]
    for f in unformatted:
        path = Path(f) if Path(f).is_absolute() else ROOT / f
        report.fail("terraform-fmt", path, "not formatted (run `terraform fmt -recursive ops/terraform`)")
    for tfvars in sorted(TERRAFORM.glob("terraform.tfvars.*")):
        # fmt checks .tfvars only by extension; check each environment file through a copy.
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "env.tfvars"
            copy.write_text(tfvars.read_text())
            p = subprocess.run([tf, "fmt", "-check", str(copy)], capture_output=True, text=True)
            if p.returncode != 0:
                report.fail("terraform-fmt", tfvars, "not formatted (terraform fmt)")
    if proc.returncode not in (0, 3) and not unformatted:
        report.fail("terraform-fmt", TERRAFORM, proc.stderr.strip()[-400:])
    if not unformatted and proc.returncode == 0:
        report.ok("terraform-fmt", "terraform fmt -check clean")
    # terraform test on provider-free logic: the naming module (no provider to download).
    naming = TERRAFORM / "modules" / "naming"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "naming"
        shutil.copytree(naming, work)
        env = {"TF_IN_AUTOMATION": "1", "PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": tmp, "TF_CLI_CONFIG_FILE": "/dev/null"}
        init = subprocess.run([tf, "init", "-backend=false", "-input=false", "-no-color"], cwd=work, capture_output=True, text=True, env=env)
        if init.returncode != 0:
            report.fail("terraform-test", naming, f"terraform init failed: {init.stderr.strip()[-400:]}")
            return
        test = subprocess.run([tf, "test", "-no-color"], cwd=work, capture_output=True, text=True, env=env)
        if test.returncode != 0:
            failed = [l.strip() for l in test.stdout.splitlines() + test.stderr.splitlines() if "fail" in l.lower() or "Error" in l]
            report.fail("terraform-test", naming / "tests" / "naming.tftest.hcl", "; ".join(failed[:6]) or test.stderr[-400:])
        else:
            report.ok("terraform-test", f"modules/naming: {test.stdout.strip().splitlines()[-1]}")
