"""ops/check's checks, cheapest first, so a broken file is reported within seconds.

Usage (through ops/check): run.py [--fail-fast]
Exit status 1 when anything failed; every failure line starts with FAIL and names the file.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import checkov_checks  # noqa: E402
import deploy_checks  # noqa: E402
import helm_checks  # noqa: E402
import misc_checks  # noqa: E402
from common import OPS, VALUES_FILES, Report, StopCheck  # noqa: E402

HCL_PYTHON = OPS / ".venv" / "hcl" / "bin" / "python"


def terraform_structure(report: Report) -> None:
    """tf_checks.py runs under the python-hcl2 venv; its FAIL lines are ours."""
    args = [str(HCL_PYTHON), str(Path(__file__).with_name("tf_checks.py"))]
    if report.fail_fast:
        args.append("--fail-fast")
    proc = subprocess.run(args, capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    report.failures.extend(l for l in proc.stdout.splitlines() if l.startswith("FAIL"))
    if proc.returncode != 0 and not any(l.startswith("FAIL") for l in proc.stdout.splitlines()):
        report.fail("terraform", OPS / "checks" / "tf_checks.py", f"crashed: {proc.stderr.strip()[-600:]}")
    if proc.stderr.strip() and proc.returncode == 0:
        sys.stdout.write(proc.stderr)
    if report.fail_fast and report.failures:
        raise StopCheck()


def main() -> int:
    report = Report(fail_fast="--fail-fast" in sys.argv)
    start = time.monotonic()
    try:
        misc_checks.check_yaml(report)
        rendered = helm_checks.run(report)
        misc_checks.check_secret_contract(report, helm_checks.remote_keys(rendered))
        terraform_structure(report)
        merged = {vf: helm_checks._merged_values(helm_checks.load_values(vf)) for vf in rendered}
        deploy_checks.run(report, rendered, merged)
        misc_checks.check_terraform_tools(report)
        misc_checks.check_dockerfile(report)
        misc_checks.check_workflows(report)
        checkov_checks.run(report, chart_rendered=set(rendered) == set(VALUES_FILES))
    except StopCheck:
        pass
    except Exception:  # a crashed check must fail loudly, never look like a pass or a narrower failure
        import traceback
        trace = traceback.format_exc().strip().splitlines()
        report.failures.append("crash")
        print(f"FAIL [ops-check] ops/checks: crashed: {' | '.join(trace[-4:])}", flush=True)
    took = time.monotonic() - start
    if report.failures:
        print(f"\nops/check: {len(report.failures)} failure(s) in {took:.0f}s", flush=True)
        return 1
    if report.skipped:
        print(f"\nops/check: all checks that ran passed in {took:.0f}s; SKIPPED: {'; '.join(report.skipped)}", flush=True)
        return 0
    print(f"\nops/check: all checks passed in {took:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
