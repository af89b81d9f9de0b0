"""What the first real deployment meets, across the chart, the Terraform and the workflows:
rules no single file's check can see. Each has its own name in the FAIL line, and a case in
ops/check-selftest that breaks it on purpose.

- signalr-gated:      Azure SignalR exists exactly where the chart's manager uses it.
- image-registry:     every image the chart deploys comes from a registry the cluster can pull
                      from: the Terraform-made ACR (with AcrPull for the cluster's kubelet) or a
                      public registry; build-and-push pushes to that same ACR.
- schedulable:        every workload (the chart's, the shared release's, the platform charts')
                      fits some node pool of every cluster it runs on (tolerations vs taints).
- tls-issuer:         every Ingress that requests a certificate names a ClusterIssuer the
                      cluster's shared release makes; hosts under cloudapp.azure.com have their
                      DNS label set on ingress-nginx; a dynamic environment never requests a
                      certificate for dev's host.
- dashboard-uid:      Grafana dashboard uids are unique, in the chart and on each cluster.
- plan-apply-split:   the terraform workflow plans in one job and applies that plan file in
                      another, behind a GitHub environment (approval for prod).
- pr-environments:    a workflow creates a dynamic environment when a pull request opens and
                      destroys it when it closes.
- log-pipeline:       a log pipeline (Loki and a shipper) is installed with the platform charts.
- docker-cache:       the Dockerfile compiles the dependencies in a layer of their own (cargo-chef)
                      that a code-only change does not invalidate.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from common import CHART, OUT, ROOT, TERRAFORM, VALUES_FILES, Report

WORKFLOWS = ROOT / ".github" / "workflows"
HELM_DEPLOY = WORKFLOWS / "helm-deploy.yaml"
TF_WORKFLOW = WORKFLOWS / "terraform.yaml"
PR_WORKFLOW = WORKFLOWS / "pr-environment.yaml"
BUILD_WORKFLOW = WORKFLOWS / "build-and-push.yaml"
DOCKERFILE = ROOT / "Dockerfile"

# Which tfvars file makes the cluster each values file is installed on, and the tfvars file
# of the environment itself (for per-environment resources).
CLUSTER_OF = {
    "values.yaml": "terraform.tfvars.dev",
    "values.dev.yaml": "terraform.tfvars.dev",
    "values.template.yaml": "terraform.tfvars.dev",
    "values.prod.yaml": "terraform.tfvars.prod",
}
ENV_TFVARS = {
    "values.dev.yaml": "terraform.tfvars.dev",
    "values.prod.yaml": "terraform.tfvars.prod",
    "values.template.yaml": "terraform.tfvars.template",
}
# The shared release (values.redis.yaml) is installed on every cluster an environment owns.
OWNER_CLUSTERS = ["terraform.tfvars.dev", "terraform.tfvars.prod"]
# Registries anyone can pull from without credentials.
PUBLIC_REGISTRIES = {"docker.io", "mcr.microsoft.com", "registry.k8s.io", "quay.io", "ghcr.io"}


def _facts(report: Report) -> dict | None:
    path = OUT / "terraform-facts.json"
    if not path.exists():
        report.fail("terraform", TERRAFORM, "ops/checks/tf_checks.py wrote no facts (did it crash?)")
        return None
    return json.loads(path.read_text())


def _pods(objects):
    for tpath, obj in objects:
        spec = obj.get("spec", {})
        if obj["kind"] == "CronJob":
            pod = spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
        elif obj["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            pod = spec.get("template", {}).get("spec")
        else:
            pod = None
        if pod:
            yield tpath, obj, pod


def _workflow(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _steps_text(job: dict) -> str:
    return "\n".join(str(s.get("run", "")) + " " + str(s.get("uses", "")) + " " + json.dumps(s.get("with", {})) for s in job.get("steps", []))


# ----------------------------------------------------------------------------- rules


def check_signalr_gated(report: Report, merged: dict, facts: dict) -> None:
    for vf, tfvars in ENV_TFVARS.items():
        env = facts["environments"].get(tfvars)
        if env is None:
            continue
        uses = bool(merged[vf].get("azureSignalR", {}).get("enabled"))
        made = len(env["signalr"])
        if uses and not made:
            report.fail("signalr-gated", TERRAFORM / tfvars, f"{vf} runs the manager with Azure SignalR, but {tfvars} creates none (enable_azure_signalr)")
        if made and not uses:
            report.fail("signalr-gated", TERRAFORM / tfvars, f"creates Azure SignalR, but {vf} runs the manager's own hub (azureSignalR.enabled false): "
                        "an unused service (gate it with enable_azure_signalr)")


def _image_host(image: str) -> str:
    first = image.split("/", 1)[0]
    if "/" not in image or ("." not in first and ":" not in first and first != "localhost"):
        return "docker.io"
    return first


def check_image_registry(report: Report, rendered: dict, facts: dict) -> None:
    build = BUILD_WORKFLOW.read_text() if BUILD_WORKFLOW.exists() else ""
    pushed = set(re.findall(r"REGISTRY:\s*([\w.-]+)", build))
    for vf, objects in rendered.items():
        clusters = OWNER_CLUSTERS if vf == "values.redis.yaml" else [CLUSTER_OF[vf]]
        for tpath, obj, pod in _pods(objects):
            for c in pod.get("containers", []) + pod.get("initContainers", []):
                image = c.get("image", "")
                host = _image_host(image)
                if host in PUBLIC_REGISTRIES:
                    continue
                for cl in clusters:
                    env = facts["environments"].get(cl, {})
                    if host != env.get("registry"):
                        report.fail("image-registry", CHART / "values.yaml" if "teachin" in image else tpath,
                                    f"(with {vf}) {obj['kind']}/{obj['metadata']['name']}: image {image} is from {host}, "
                                    f"which is neither the registry Terraform makes for the cluster of {cl} ({env.get('registry')}) nor a public one")
                    elif not env.get("acr_pull"):
                        report.fail("image-registry", TERRAFORM / "main.tf",
                                    f"the cluster of {cl} pulls {image} from {host} without an AcrPull role assignment for its kubelet identity")
                if "teachin" in image and pushed and host not in pushed:
                    report.fail("image-registry", BUILD_WORKFLOW, f"pushes to {sorted(pushed)}, but the chart deploys {image}")


def _tolerates(tolerations: list, taint: str) -> bool:
    m = re.match(r"^([^=:]+)(?:=([^:]*))?:(\w+)$", taint)
    if not m:
        return False
    key, value, effect = m.group(1), m.group(2) or "", m.group(3)
    if effect == "PreferNoSchedule":
        return True
    for t in tolerations or []:
        if t.get("effect") not in (None, "", effect):
            continue
        if t.get("operator") == "Exists" and (not t.get("key") or t.get("key") == key):
            return True
        if t.get("key") == key and t.get("operator", "Equal") == "Equal" and str(t.get("value", "")) == value:
            return True
    return False


def _fits(tolerations: list, pools: list) -> bool:
    return any(all(_tolerates(tolerations, taint) for taint in p["taints"]) for p in pools)


def check_schedulable(report: Report, rendered: dict, facts: dict) -> None:
    deploy = HELM_DEPLOY.read_text() if HELM_DEPLOY.exists() else ""
    platform_tolerates = "tolerations" in deploy
    for cl in OWNER_CLUSTERS:
        env = facts["environments"].get(cl)
        if not env or not env["pools"]:
            continue
        pools = env["pools"]
        if any(p.get("unknown") for p in pools):
            report.fail("schedulable", TERRAFORM / cl, "a node pool's taints cannot be evaluated from the variables")
            continue
        desc = ", ".join(f"{p['name']} {p['taints'] or 'untainted'}" for p in pools)
        if not platform_tolerates and not _fits([], pools):
            report.fail("schedulable", TERRAFORM / cl, f"every node pool of this cluster is tainted ({desc}): the platform charts "
                        f"helm-deploy installs (ingress-nginx, cert-manager, External Secrets, KEDA, monitoring, logs) tolerate nothing and stay Pending")
        for vf, objects in rendered.items():
            if vf == "values.redis.yaml" or CLUSTER_OF.get(vf) == cl:
                for tpath, obj, pod in _pods(objects):
                    if not _fits(pod.get("tolerations", []), pools):
                        report.fail("schedulable", CHART / vf, f"{obj['kind']}/{obj['metadata']['name']} fits no node pool of the cluster of {cl} "
                                    f"({desc}): add a matching toleration, or an untainted pool")


def check_tls_issuer(report: Report, rendered: dict) -> None:
    shared = rendered.get("values.redis.yaml", [])
    issuers = {o["metadata"]["name"] for _, o in shared if o["kind"] == "ClusterIssuer"}
    deploy = HELM_DEPLOY.read_text() if HELM_DEPLOY.exists() else ""
    labels = set(re.findall(r"DNS_LABEL=([a-z0-9-]+)", deploy))
    hosts: dict[str, set[str]] = {}
    for vf, objects in rendered.items():
        for tpath, obj in objects:
            if vf != "values.redis.yaml" and obj["kind"] == "ClusterIssuer":
                report.fail("tls-issuer", tpath, f"(with {vf}) an environment's release must not own the cluster's ClusterIssuer")
            if obj["kind"] != "Ingress":
                continue
            ann = obj["metadata"].get("annotations", {})
            tls_hosts = {h for t in obj["spec"].get("tls", []) for h in t.get("hosts", [])}
            rule_hosts = {r.get("host") for r in obj["spec"].get("rules", [])}
            hosts.setdefault(vf, set()).update(tls_hosts)
            issuer = ann.get("cert-manager.io/cluster-issuer")
            if issuer and issuer not in issuers:
                report.fail("tls-issuer", CHART / "values.redis.yaml",
                            f"the cluster's shared release makes ClusterIssuer(s) {sorted(issuers) or 'none'}, but Ingress/{obj['metadata']['name']} "
                            f"(with {vf}) asks {issuer!r} for its certificate (clusterIssuer.create, clusterIssuer.name)")
            if tls_hosts and not issuer and not any(o["kind"] == "Ingress" and "cert-manager.io/cluster-issuer" in o["metadata"].get("annotations", {})
                                                    and tls_hosts & {h for t in o["spec"].get("tls", []) for h in t.get("hosts", [])} for _, o in objects):
                report.fail("tls-issuer", CHART / "templates/ingress.yaml", f"(with {vf}) TLS for {sorted(tls_hosts)} with no issuer on any Ingress of the release")
            if vf in ("values.dev.yaml", "values.prod.yaml"):
                for h in rule_hosts:
                    m = re.match(r"^([a-z0-9-]+)\.[a-z0-9]+\.cloudapp\.azure\.com$", h or "")
                    if m and m.group(1) not in labels:
                        report.fail("tls-issuer", HELM_DEPLOY, f"{vf}'s host {h} needs the DNS label {m.group(1)!r} on ingress-nginx's public IP "
                                    "(DNS_LABEL=... and the azure-dns-label-name annotation), or the name never resolves and no certificate is issued")
    if "azure-dns-label-name" not in deploy:
        report.fail("tls-issuer", HELM_DEPLOY, "ingress-nginx is installed without the service.beta.kubernetes.io/azure-dns-label-name annotation")
    shared_hosts = hosts.get("values.template.yaml", set()) & hosts.get("values.dev.yaml", set())
    if shared_hosts:
        report.fail("tls-issuer", CHART / "values.template.yaml", f"a dynamic environment requests a certificate for dev's host {sorted(shared_hosts)} "
                    "(ingress.tls.ownCertificate must be false: dev's Ingress owns it)")


def check_dashboard_uids(report: Report, rendered: dict) -> None:
    seen: dict[str, Path] = {}
    for f in sorted((CHART / "dashboards").glob("*.json")):
        try:
            uid = json.loads(f.read_text()).get("uid")
        except json.JSONDecodeError:
            continue
        if uid in seen:
            report.fail("dashboard-uid", f, f"uid {uid!r} is also {seen[uid].name}'s: Grafana keeps one of them")
        seen.setdefault(uid, f)
    per_cluster: dict[str, dict[str, str]] = {}
    for vf, objects in rendered.items():
        cl = CLUSTER_OF.get(vf)
        if cl is None or vf == "values.yaml":
            continue
        for tpath, obj in objects:
            if obj["kind"] != "ConfigMap":
                continue
            for key, text in (obj.get("data") or {}).items():
                if not key.endswith(".json"):
                    continue
                try:
                    uid = json.loads(text).get("uid")
                except json.JSONDecodeError:
                    continue
                owner = per_cluster.setdefault(cl, {}).get(uid)
                if owner is not None:
                    report.fail("dashboard-uid", tpath, f"(with {vf}) dashboard uid {uid!r} is also rendered by {owner} on the same cluster "
                                "(one Grafana): the environments' dashboards would replace each other")
                else:
                    per_cluster[cl][uid] = f"{vf} {key}"


def check_plan_apply(report: Report) -> None:
    wf = _workflow(TF_WORKFLOW)
    jobs = wf.get("jobs") or {}
    appliers = {n: j for n, j in jobs.items() if re.search(r"terraform\s+apply", _steps_text(j))}
    if not appliers:
        report.fail("plan-apply-split", TF_WORKFLOW, "no job runs terraform apply")
    for name, job in appliers.items():
        text = _steps_text(job)
        if re.search(r"terraform\s+plan", text):
            report.fail("plan-apply-split", TF_WORKFLOW, f"job {name} plans and applies: nobody sees the plan before it is applied; "
                        "plan in one job (uploading the plan file), apply that file in another behind an environment approval")
        if not job.get("environment"):
            report.fail("plan-apply-split", TF_WORKFLOW, f"job {name} applies without a GitHub environment (no approval gate)")
        needs = job.get("needs") or []
        needs = [needs] if isinstance(needs, str) else needs
        planners = [n for n in needs if re.search(r"terraform\s+plan", _steps_text(jobs.get(n, {}))) and "upload-artifact" in _steps_text(jobs.get(n, {}))]
        if not planners:
            report.fail("plan-apply-split", TF_WORKFLOW, f"job {name} does not need a job that plans and uploads the plan file")
        if "download-artifact" not in text or not re.search(r"terraform\s+apply[^\n]*\btfplan\b", text):
            report.fail("plan-apply-split", TF_WORKFLOW, f"job {name} must download the reviewed plan and apply exactly it (terraform apply ... tfplan)")


def check_pr_environments(report: Report) -> None:
    if not PR_WORKFLOW.exists():
        report.fail("pr-environments", PR_WORKFLOW, "is missing: nothing creates a dynamic environment when a pull request opens, or destroys it on close")
        return
    wf = _workflow(PR_WORKFLOW)
    on = wf.get("on", wf.get(True)) or {}
    types = set((on.get("pull_request") or {}).get("types", [])) if isinstance(on, dict) else set()
    for t in ("opened", "closed"):
        if t not in types:
            report.fail("pr-environments", PR_WORKFLOW, f"does not run on pull_request {t}")
    jobs = wf.get("jobs") or {}
    text = {n: json.dumps(j) for n, j in jobs.items()}
    creates = [n for n, t in text.items() if "terraform.yaml" in t or re.search(r"terraform\s+apply", t)]
    deploys = [n for n, t in text.items() if "helm-deploy.yaml" in t]
    destroys = [n for n, t in text.items() if re.search(r"terraform\s+(destroy|apply[^\"]*-destroy)|plan[^\"]*-destroy", t) or "destroy" in json.dumps((jobs[n].get("with") or {}))]
    if not creates or not deploys:
        report.fail("pr-environments", PR_WORKFLOW, "must apply the environment's Terraform and deploy the chart when the pull request opens")
    if not destroys:
        report.fail("pr-environments", PR_WORKFLOW, "must destroy the environment when the pull request closes")
    for n in destroys:
        if "closed" not in json.dumps(jobs[n].get("if", "")):
            report.fail("pr-environments", PR_WORKFLOW, f"job {n} destroys without being limited to the closed event")


def check_log_pipeline(report: Report) -> None:
    deploy = HELM_DEPLOY.read_text() if HELM_DEPLOY.exists() else ""
    installs = re.findall(r"helm upgrade --install\s+(\S+)\s+(\S+)([^\n]*)", deploy)
    loki = [i for i in installs if "loki" in i[1]]
    shipper = [i for i in installs if re.search(r"promtail|alloy|fluent-bit|loki-stack", i[1])]
    if not loki or not shipper:
        report.fail("log-pipeline", HELM_DEPLOY, "installs no log pipeline: Loki and a shipper (promtail, alloy, fluent-bit) "
                    "with the platform charts, so pod logs outlive their pods")
    for name, chart, rest in loki + shipper:
        if "--version" not in rest:
            report.fail("log-pipeline", HELM_DEPLOY, f"{chart} is installed without a pinned --version")


def check_docker_cache(report: Report) -> None:
    if not DOCKERFILE.exists():
        return
    lines = [l.strip() for l in DOCKERFILE.read_text().splitlines() if l.strip() and not l.strip().startswith("#")]
    cook = next((i for i, l in enumerate(lines) if "cargo chef cook" in l or (l.startswith("RUN") and "cargo chef cook" in l)), None)
    if cook is None:
        report.fail("docker-cache", DOCKERFILE, "dependencies are not built in a layer of their own (cargo chef cook): every code change "
                    "recompiles every crate (cache mounts do not survive between GitHub runners; layers do, through the gha cache)")
        return
    before = lines[:cook]
    stage = max((i for i, l in enumerate(before) if l.upper().startswith("FROM ")), default=0)
    copies = [l for l in before[stage:] if l.upper().startswith("COPY ")]
    for c in copies:
        if re.match(r"(?i)^COPY\s+(--\S+\s+)*\.\s", c) and "--from" not in c:
            report.fail("docker-cache", DOCKERFILE, f"`{c}` before `cargo chef cook`: the dependency layer would depend on every source file")
    if not any("recipe.json" in c for c in copies):
        report.fail("docker-cache", DOCKERFILE, "the cook stage must start from the recipe (COPY --from=planner ... recipe.json)")


def run(report: Report, rendered: dict, merged: dict) -> None:
    facts = _facts(report)
    if facts is None:
        return
    before = len(report.failures)
    missing = [vf for vf in VALUES_FILES if vf not in rendered]
    if missing:
        # The chart did not render with these (reported above): rules across environments
        # would only echo that failure.
        print(f"     deploy: chart rules skipped, the chart did not render with {', '.join(missing)}", flush=True)
    else:
        check_signalr_gated(report, merged, facts)
        check_image_registry(report, rendered, facts)
        check_schedulable(report, rendered, facts)
        check_tls_issuer(report, rendered)
        check_dashboard_uids(report, rendered)
    check_plan_apply(report)
    check_pr_environments(report)
    check_log_pipeline(report)
    check_docker_cache(report)
    if len(report.failures) == before:
        report.ok("deploy", "SignalR where used, pullable images, schedulable pods, issuers and DNS labels, dashboard uids, "
                  "plan/apply split, PR environments, log pipeline, dependency layer")
