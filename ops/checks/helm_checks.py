"""The Helm chart: lint, values schema, offline render with every values file, strict
validation of every rendered object (built-in kinds against Kubernetes' own schemas, CRD kinds
against ops/schemas/crds), and the cross-object rules a schema cannot express (a Secret that
is referenced must be produced, a ScaledObject must target a Deployment of the release...).

Rendered manifests are written to ops/.out/rendered/<values file>/<template> so checkov scans
the same bytes and its findings name the template they came from.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import helm_python as hp
import yaml
from kubernetes_validate import utils as kv

import crd
from common import CHART, KUBERNETES_VERSION, NAMESPACES, OUT, VALUES_FILES, Report

RELEASE = "teachin"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job", "CronJob"}
REDIS_KINDS = {"StatefulSet", "Service", "Secret", "PersistentVolumeClaim", "NetworkPolicy"}


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (PyYAML keeps the last one silently, and so
    may the API server: a duplicated label or env entry is a bug either way)."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_values(name: str) -> dict:
    """Overrides of one values file (values.yaml itself is the chart's defaults)."""
    if name == "values.yaml":
        return {}
    return yaml.load((CHART / name).read_text(), Loader=UniqueKeyLoader) or {}


def _template_path(message: str) -> Path | None:
    m = re.search(r"teachin/(templates/[^:\s)]+)", message)
    return CHART / m.group(1) if m else None


def render_all(report: Report) -> dict[str, list[tuple[Path, dict]]]:
    """values file -> [(template file, object)], after lint and schema validation."""
    rendered: dict[str, list[tuple[Path, dict]]] = {}
    out_root = OUT / "rendered"
    shutil.rmtree(out_root, ignore_errors=True)
    for vf in VALUES_FILES:
        vpath = CHART / vf
        try:
            values = load_values(vf)
        except yaml.YAMLError as e:
            report.fail("helm-values", vpath, f"not valid YAML: {e}")
            continue
        # helm lint (strict: warnings are failures), with this values file.
        lint = hp.lint(str(CHART), values, strict=True, namespace=NAMESPACES[vf], kube_version=f"v{KUBERNETES_VERSION}.0")
        lint_failed = False
        for m in lint.get("messages", []):
            if m["severity"] >= 2:
                lint_failed = True
                target = _template_path(m["error"]) or (vpath if m["path"] in ("values.yaml", "templates/") else CHART / m["path"])
                report.fail("helm-lint", target, f"(with {vf}) {m['error'].strip()}")
        with hp.Chart.load(str(CHART)) as chart:
            try:
                chart.validate_schema(chart.merge_values(values))
            except hp.HelmError as e:
                report.fail("helm-schema", vpath, f"rejected by values.schema.json: {str(e).strip()}")
                continue
            if lint_failed:
                continue
            try:
                manifests = chart.render(values, name=RELEASE, namespace=NAMESPACES[vf], is_install=True)
            except hp.HelmError as e:
                report.fail("helm-render", _template_path(str(e)) or vpath, f"(with {vf}) {str(e).strip()}")
                continue
        objects = []
        for tname, text in sorted(manifests.items()):
            if not text.strip() or not tname.startswith("teachin/templates/"):
                continue
            tpath = CHART / tname.removeprefix("teachin/")
            dest = out_root / vf.removesuffix(".yaml") / tname.removeprefix("teachin/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
            try:
                docs = [d for d in yaml.load_all(text, Loader=UniqueKeyLoader) if d is not None]
            except yaml.YAMLError as e:
                report.fail("helm-render", tpath, f"(with {vf}) renders invalid YAML: {e}")
                continue
            for d in docs:
                objects.append((tpath, d))
        rendered[vf] = objects
        report.ok("helm", f"{vf}: lint, schema and render ({len(objects)} objects)")
    return rendered


def validate_objects(report: Report, rendered: dict[str, list[tuple[Path, dict]]]) -> None:
    """Every object against its schema: Kubernetes' own (strict) or the CRD's."""
    for vf, objects in rendered.items():
        bad = 0
        for tpath, obj in objects:
            ident = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            if not isinstance(obj, dict) or "kind" not in obj or "apiVersion" not in obj:
                report.fail("k8s-schema", tpath, f"(with {vf}) a document without apiVersion/kind")
                continue
            errs = crd.errors(obj)
            if errs is not None:
                for e in errs:
                    bad += 1
                    report.fail("crd-schema", tpath, f"(with {vf}) {ident}: {e}")
                for e in crd.scaler_errors(obj):
                    bad += 1
                    report.fail("crd-schema", tpath, f"(with {vf}) {ident}: {e}")
                continue
            try:
                kv.validate(obj, KUBERNETES_VERSION, strict=True)
            except kv.SchemaNotFoundError:
                bad += 1
                report.fail("k8s-schema", tpath, f"(with {vf}) {ident}: no schema for {obj['apiVersion']} {obj['kind']} "
                            f"in Kubernetes {KUBERNETES_VERSION} nor in ops/schemas/crds")
            except kv.ValidationError as e:
                bad += 1
                where = "/".join(str(p) for p in e.absolute_path) or "(root)"
                report.fail("k8s-schema", tpath, f"(with {vf}) {ident}: {where}: {e.message}")
        if not bad:
            report.ok("k8s-schema", f"{vf}: {len(objects)} objects valid (Kubernetes {KUBERNETES_VERSION} strict, CRD schemas)")


def _pod_spec(obj: dict) -> dict | None:
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        return spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
    if obj["kind"] in WORKLOAD_KINDS:
        return spec.get("template", {}).get("spec")
    return None


def _matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_policies(report: Report, rendered: dict[str, list[tuple[Path, dict]]]) -> None:
    """Rules across objects, which no per-object schema can see."""
    for vf, objects in rendered.items():
        values = load_values(vf)
        before = len(report.failures)

        def fail(tpath, message):
            report.fail("chart-policy", tpath, f"(with {vf}) {message}")

        by_kind: dict[str, list[tuple[Path, dict]]] = {}
        seen = set()
        for tpath, obj in objects:
            by_kind.setdefault(obj["kind"], []).append((tpath, obj))
            key = (obj["kind"], obj["metadata"]["name"])
            if key in seen:
                fail(tpath, f"{key[0]}/{key[1]} is rendered twice")
            seen.add(key)
            if obj["metadata"].get("namespace") != NAMESPACES[vf]:
                fail(tpath, f"{key[0]}/{key[1]} must set metadata.namespace explicitly (the release namespace)")

        # Secrets a pod may reference: rendered Secrets, ExternalSecret targets (with their
        # keys), and the Redis password Secret the deploy workflow copies in.
        produced: dict[str, set[str] | None] = {}
        for _, s in by_kind.get("Secret", []):
            produced[s["metadata"]["name"]] = set((s.get("data") or {}) | (s.get("stringData") or {}))
        for _, es in by_kind.get("ExternalSecret", []):
            target = es["spec"].get("target", {}).get("name", es["metadata"]["name"])
            produced[target] = {d["secretKey"] for d in es["spec"].get("data", [])}
        merged = _merged_values(values)
        if merged["redis"]["source"] == "selfHosted":
            produced.setdefault(merged["redis"]["passwordSecret"]["name"], {merged["redis"]["passwordSecret"]["key"]})

        pods = {}
        for kind in WORKLOAD_KINDS:
            for tpath, obj in by_kind.get(kind, []):
                ident = f"{kind}/{obj['metadata']['name']}"
                pod = _pod_spec(obj)
                pods[ident] = (tpath, obj, pod)
                if not pod.get("securityContext", {}).get("runAsNonRoot"):
                    fail(tpath, f"{ident}: pod securityContext.runAsNonRoot must be true")
                for c in pod.get("containers", []):
                    cid = f"{ident} container {c['name']}"
                    res = c.get("resources", {})
                    for part in ("requests", "limits"):
                        for r in ("cpu", "memory"):
                            if r not in res.get(part, {}):
                                fail(tpath, f"{cid}: resources.{part}.{r} is missing")
                    sc = c.get("securityContext", {})
                    if sc.get("readOnlyRootFilesystem") is not True:
                        fail(tpath, f"{cid}: securityContext.readOnlyRootFilesystem must be true")
                    if sc.get("allowPrivilegeEscalation") is not False:
                        fail(tpath, f"{cid}: securityContext.allowPrivilegeEscalation must be false")
                    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                        fail(tpath, f"{cid}: securityContext.capabilities.drop must include ALL")
                    if kind in ("Deployment", "StatefulSet"):
                        for probe in ("livenessProbe", "readinessProbe"):
                            if probe not in c:
                                fail(tpath, f"{cid}: {probe} is missing")
                    for env in c.get("env", []):
                        ref = env.get("valueFrom", {}).get("secretKeyRef")
                        if not ref:
                            continue
                        keys = produced.get(ref["name"], "missing")
                        if keys == "missing":
                            fail(tpath, f"{cid}: env {env['name']} reads Secret {ref['name']!r}, which nothing in the release produces")
                        elif keys is not None and ref["key"] not in keys:
                            fail(tpath, f"{cid}: env {env['name']} reads key {ref['key']!r} that Secret {ref['name']!r} does not have")

        deployments = {o["metadata"]["name"]: (t, o) for t, o in by_kind.get("Deployment", [])}
        services = {o["metadata"]["name"]: (t, o) for t, o in by_kind.get("Service", [])}
        pod_labels = [o["spec"]["template"]["metadata"]["labels"] for _, o in by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])]

        for name, (tpath, svc) in services.items():
            if svc["spec"].get("type") == "ExternalName":
                continue
            if not any(_matches(svc["spec"].get("selector", {}), labels) for labels in pod_labels):
                fail(tpath, f"Service/{name}: its selector matches no pod of the release")

        for tpath, ing in by_kind.get("Ingress", []):
            for rule in ing["spec"].get("rules", []):
                for p in rule.get("http", {}).get("paths", []):
                    svc_name = p["backend"]["service"]["name"]
                    if svc_name not in services:
                        fail(tpath, f"Ingress/{ing['metadata']['name']}: backend Service {svc_name!r} is not rendered")
                        continue
                    port = p["backend"]["service"]["port"]
                    ports = services[svc_name][1]["spec"].get("ports", [])
                    if not any(pt.get("name") == port.get("name") or pt.get("port") == port.get("number") for pt in ports):
                        fail(tpath, f"Ingress/{ing['metadata']['name']}: Service {svc_name!r} has no port {port}")

        backend = merged["bus"]["backend"]
        auths = {o["metadata"]["name"] for _, o in by_kind.get("TriggerAuthentication", [])}
        for tpath, so in by_kind.get("ScaledObject", []):
            target = so["spec"]["scaleTargetRef"]["name"]
            if target not in deployments:
                fail(tpath, f"ScaledObject/{so['metadata']['name']}: scales Deployment {target!r}, which is not rendered")
            elif "replicas" in deployments[target][1]["spec"]:
                fail(deployments[target][0], f"Deployment/{target}: sets replicas although KEDA owns them (an upgrade would fight the autoscaler)")
            queue_trigger = so["spec"]["triggers"][0]["type"]
            expected = "azure-servicebus" if backend == "servicebus" else "postgresql"
            if queue_trigger != expected:
                fail(tpath, f"ScaledObject/{so['metadata']['name']}: bus backend {backend} needs a {expected} queue trigger, found {queue_trigger}")
            for trig in so["spec"]["triggers"]:
                ref = trig.get("authenticationRef", {}).get("name")
                if ref and ref not in auths:
                    fail(tpath, f"ScaledObject/{so['metadata']['name']}: TriggerAuthentication {ref!r} is not rendered")
        for tpath, ta in by_kind.get("TriggerAuthentication", []):
            for ref in ta["spec"].get("secretTargetRef", []):
                keys = produced.get(ref["name"], "missing")
                if keys == "missing" or (keys is not None and ref["key"] not in keys):
                    fail(tpath, f"TriggerAuthentication/{ta['metadata']['name']}: Secret {ref['name']!r} key {ref['key']!r} is not produced by the release")
        for kind in ("HTTPScaledObject", "HorizontalPodAutoscaler"):
            for tpath, o in by_kind.get(kind, []):
                target = o["spec"]["scaleTargetRef"]["name"]
                if target not in deployments:
                    fail(tpath, f"{kind}/{o['metadata']['name']}: targets Deployment {target!r}, which is not rendered")
                elif "replicas" in deployments[target][1]["spec"]:
                    fail(deployments[target][0], f"Deployment/{target}: sets replicas although {kind} owns them")
        for tpath, hso in by_kind.get("HTTPScaledObject", []):
            vhosts = {ing["metadata"]["annotations"].get("nginx.ingress.kubernetes.io/upstream-vhost") for _, ing in by_kind.get("Ingress", [])}
            if not set(hso["spec"].get("hosts", [])) & vhosts:
                fail(tpath, f"HTTPScaledObject/{hso['metadata']['name']}: its hosts {hso['spec'].get('hosts')} are not the ingress's upstream-vhost, so the interceptor would not route to it")

        for tpath, sm in by_kind.get("ServiceMonitor", []):
            sel = sm["spec"]["selector"].get("matchLabels", {})
            ports = {e.get("port") for e in sm["spec"]["endpoints"]}
            hit = [n for n, (_, s) in services.items() if _matches(sel, s["metadata"].get("labels", {})) and ports & {p.get("name") for p in s["spec"].get("ports", [])}]
            if not hit:
                fail(tpath, f"ServiceMonitor/{sm['metadata']['name']}: selects no Service with port {ports}")

        crons = {o["metadata"]["name"]: (t, o) for t, o in by_kind.get("CronJob", [])}
        for name, (tpath, cj) in crons.items():
            if cj["spec"].get("timeZone") != "Asia/Jerusalem":
                fail(tpath, f"CronJob/{name}: schedules run in Asia/Jerusalem time, found {cj['spec'].get('timeZone')!r}")
        stats_on = merged["cronJobs"]["stats"]["enabled"] and merged["app"]["enabled"]
        if stats_on != any(n.endswith("-stats") for n in crons):
            fail(CHART / "templates/cronjobs.yaml", f"the stats CronJob must be rendered exactly when cronJobs.stats.enabled (is {stats_on})")

        if merged["app"]["enabled"]:
            for role in ("manager", "accessor", "engine"):
                name = f"{RELEASE}-{role}"
                if name not in deployments:
                    fail(CHART / "templates/deployment.yaml", f"Deployment/{name} is missing")
                    continue
                tpath, dep = deployments[name]
                c = dep["spec"]["template"]["spec"]["containers"][0]
                env = {e["name"]: e for e in c.get("env", [])}
                for required in ("TEACHIN_ENV", "ConnectionStrings__Postgres", "TEACHIN_LOOKUP_HASH_KEY", "ConnectionStrings__Redis", "TEACHIN_REDIS_DB"):
                    if required not in env:
                        fail(tpath, f"Deployment/{name}: env {required} is missing (src/config.rs needs it outside local)")
                if env.get("TEACHIN_REDIS_DB", {}).get("value") != str(merged["redis"]["databaseIndex"]):
                    fail(tpath, f"Deployment/{name}: TEACHIN_REDIS_DB must be redis.databaseIndex")
                if c.get("args") != [role]:
                    fail(tpath, f"Deployment/{name}: must run `teachin {role}`")
            hooks = [o for _, o in by_kind.get("Job", []) if o["spec"]["template"]["spec"]["containers"][0].get("args") == ["migrate"]]
            if merged["migrations"]["enabled"] and not any("pre-upgrade" in o["metadata"].get("annotations", {}).get("helm.sh/hook", "") for o in hooks):
                fail(CHART / "templates/migration-job.yaml", "the `teachin migrate` Job must be a pre-upgrade Helm hook")
            stray = [f"{o['kind']}/{o['metadata']['name']}" for _, o in objects if o["metadata"]["name"] in ("redis", "redis-data")]
            if stray:
                fail(CHART / "templates/redis.yaml", f"the application release must not own the shared Redis: {stray}")
        else:
            extra = [f"{o['kind']}/{o['metadata']['name']}" for _, o in objects if o["kind"] not in REDIS_KINDS or "redis" not in o["metadata"]["name"]]
            if extra:
                fail(CHART / vf, f"a Redis-only release renders non-Redis objects: {extra}")
            if not any(o["kind"] == "StatefulSet" for _, o in objects):
                fail(CHART / "templates/redis.yaml", "a Redis-only release renders no StatefulSet")
        if len(report.failures) == before:
            report.ok("chart-policy", f"{vf}: references, selectors, autoscalers, security and cron rules hold")


def _merged_values(overrides: dict) -> dict:
    """The values a release would really use: chart defaults coalesced with the file."""
    with hp.Chart.load(str(CHART)) as chart:
        return chart.merge_values(overrides)


def remote_keys(rendered: dict[str, list[tuple[Path, dict]]]) -> dict[str, Path]:
    """Key Vault secret names the ExternalSecrets read, with the template that reads them."""
    keys = {}
    for objects in rendered.values():
        for tpath, obj in objects:
            if obj["kind"] == "ExternalSecret":
                for d in obj["spec"].get("data", []):
                    keys[d["remoteRef"]["key"]] = tpath
    return keys


def run(report: Report) -> dict[str, list[tuple[Path, dict]]]:
    rendered = render_all(report)
    validate_objects(report, rendered)
    check_policies(report, rendered)
    return rendered
