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

import code_contract as code
import crd
from common import CHART, CLUSTER_SCOPED, DEPLOY_SETS, KUBERNETES_VERSION, NAMESPACES, OUT, VALUES_FILES, Report, rel

RELEASE = "teachin"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job", "CronJob"}
REDIS_KINDS = {"StatefulSet", "Service", "Secret", "PersistentVolumeClaim", "NetworkPolicy"}
# What else the cluster's shared release (values.redis.yaml) may hold: cluster-wide objects.
SHARED_KINDS = {"ClusterIssuer"}


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


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_values(name: str) -> dict:
    """Overrides of one values file (values.yaml itself is the chart's defaults), plus what the
    deploy workflow sets on the command line (common.DEPLOY_SETS)."""
    own = {} if name == "values.yaml" else (yaml.load((CHART / name).read_text(), Loader=UniqueKeyLoader) or {})
    return _deep_merge(DEPLOY_SETS.get(name, {}), own)


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
            report.fail("yamllint", vpath, f"not valid YAML, so not rendered: {e}")
            continue
        # helm lint (strict: warnings are failures), with this values file.
        lint = hp.lint(str(CHART), values, strict=True, namespace=NAMESPACES[vf], kube_version=f"v{KUBERNETES_VERSION}.0")
        lint_failed = False
        for m in lint.get("messages", []):
            # Schema violations are helm-schema's to report (below), once.
            if m["severity"] >= 2 and re.match(r"^\s*(values don't meet|- at '/)", m["error"]):
                lint_failed = True
                continue
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
            if obj["kind"] in CLUSTER_SCOPED:
                if "namespace" in obj["metadata"]:
                    fail(tpath, f"{key[0]}/{key[1]} is cluster-scoped: no metadata.namespace")
            elif obj["metadata"].get("namespace") != NAMESPACES[vf]:
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
                if c.get("args") != [role]:
                    fail(tpath, f"Deployment/{name}: must run `teachin {role}`")
            check_binary_contract(merged, pods, fail)
            check_ingress_routes(merged, by_kind, fail)
            check_keda_queries(merged, by_kind, fail)
            hooks = [o for _, o in by_kind.get("Job", []) if o["spec"]["template"]["spec"]["containers"][0].get("args") == ["migrate"]]
            if merged["migrations"]["enabled"] and not any("pre-upgrade" in o["metadata"].get("annotations", {}).get("helm.sh/hook", "") for o in hooks):
                fail(CHART / "templates/migration-job.yaml", "the `teachin migrate` Job must be a pre-upgrade Helm hook")
            stray = [f"{o['kind']}/{o['metadata']['name']}" for _, o in objects if o["metadata"]["name"] in ("redis", "redis-data")]
            if stray:
                fail(CHART / "templates/redis.yaml", f"the application release must not own the shared Redis: {stray}")
        else:
            extra = [f"{o['kind']}/{o['metadata']['name']}" for _, o in objects
                     if o["kind"] not in SHARED_KINDS and (o["kind"] not in REDIS_KINDS or "redis" not in o["metadata"]["name"])]
            if extra:
                fail(CHART / vf, f"the cluster's shared release renders objects of an environment: {extra}")
            if not any(o["kind"] == "StatefulSet" for _, o in objects):
                fail(CHART / "templates/redis.yaml", "a Redis-only release renders no StatefulSet")
        if len(report.failures) == before:
            report.ok("chart-policy", f"{vf}: references, selectors, autoscalers, security, cron rules and the binary's settings, commands, routes and SQL hold")


# ----------------------------------------------------------------------------- the binary


def _secret_envs(merged: dict) -> set[str]:
    return {d["env"] for g in merged["externalSecrets"]["secrets"] for d in g["data"]}


def check_binary_contract(merged: dict, pods: dict, fail) -> None:
    """Every workload running the teachin image gets what src/config.rs requires outside a local
    environment, under the names it reads; runs a command src/cli.rs defines; and sets no
    setting-like name that no code reads unless ops/README.md lists it as coming."""
    required = code.required_settings()
    if not required:
        fail(code.CONFIG_RS, "found no required settings in src/config.rs (self.secret(&[..]) or "
             "ConfigError::new(\"NAME\", \"must be set ...\")): update ops/checks/code_contract.py with it")
        return
    from_secrets = _secret_envs(merged)
    pending = code.pending_names()
    read_somewhere = code.code_string_literals()
    image = merged["image"]["repository"]
    for ident, (tpath, obj, pod) in pods.items():
        for c in pod.get("containers", []):
            if not c.get("image", "").startswith(image):
                continue
            cid = f"{ident} container {c['name']}"
            error = code.command_error([str(a) for a in c.get("args", [])])
            if error:
                fail(tpath, f"{cid}: {error}")
            env = {e["name"]: e for e in c.get("env", [])}
            if env.get("TEACHIN_ENV", {}).get("value") != merged["global"]["environment"]:
                fail(CHART / "templates/_helpers.tpl", f"{cid}: TEACHIN_ENV must be global.environment "
                     "(without it src/config.rs runs with local defaults and well-known keys)")
            for group, condition in required:
                if condition and env.get(condition[0], {}).get("value") != condition[1]:
                    continue
                if not any(n in env for n in group):
                    where = CHART / "values.yaml" if set(group) & from_secrets else CHART / "templates/_helpers.tpl"
                    when = f" when {condition[0]}={condition[1]}" if condition else " outside a local environment"
                    fail(where, f"{cid}: env {' or '.join(group)} is missing: src/config.rs refuses to start without it{when} "
                         "(grant it in externalSecrets.secrets[].data[].roles)")
            if not any(n in env for n in ("REDIS_URL", "ConnectionStrings__Redis")):
                fail(CHART / "templates/_helpers.tpl", f"{cid}: env REDIS_URL or ConnectionStrings__Redis is missing")
            if env.get("TEACHIN_REDIS_DB", {}).get("value") != str(merged["redis"]["databaseIndex"]):
                fail(CHART / "templates/_helpers.tpl", f"{cid}: TEACHIN_REDIS_DB must be redis.databaseIndex")
            for name in env:
                if name in code.config_names() or name in read_somewhere or name in pending or name == "REDIS_PASSWORD":
                    continue
                where = CHART / "values.yaml" if name in from_secrets else CHART / "templates/_helpers.tpl"
                fail(where, f"{cid}: sets {name}, which neither src/config.rs nor any Rust source reads "
                     f"(a misspelling? If the code reading it is on its way, list it in {rel(code.README)} "
                     "under \"Names the engine will read\")")


def _served_route(path: dict, prefix: str) -> tuple[str | None, bool]:
    """The manager path an Ingress path serves, and whether it also serves everything below."""
    p, kind = path["path"], path.get("pathType")
    if prefix:
        m = re.fullmatch(re.escape(prefix) + r"/\((.*)\)\$", p)
        if not m:
            return None, False
        return "/" + m[1].replace("\\", ""), False
    return p, kind == "Prefix"


def check_ingress_routes(merged: dict, by_kind: dict, fail) -> None:
    """The manager's public routes (api/src) are exactly what the Ingresses expose; WebSocket
    routes go straight to the manager's Service with hour-long timeouts."""
    if not merged["ingress"]["enabled"]:
        return
    routes = code.public_routes()
    if not routes:
        fail(code.SERVER_RS, "found no .route(...) in the manager's routers: update ops/checks/code_contract.py")
        return
    manager = f"{RELEASE}-manager"
    prefix = merged["ingress"]["pathPrefix"]
    served: dict[str, tuple] = {}
    for tpath, ing in by_kind.get("Ingress", []):
        ann = ing["metadata"].get("annotations", {})
        for rule in ing["spec"].get("rules", []):
            for p in rule.get("http", {}).get("paths", []):
                route, below = _served_route(p, prefix)
                if route is None:
                    fail(tpath, f"Ingress/{ing['metadata']['name']}: path {p['path']!r} is not {prefix}/(<route>)$")
                    continue
                for internal in code.INTERNAL_ROUTES:
                    if internal == route or (below and internal.startswith(route.rstrip("/") + "/")) or (below and route == "/"):
                        fail(tpath, f"Ingress/{ing['metadata']['name']}: exposes {internal}, which must stay inside the cluster")
                if route not in routes and not below:
                    fail(CHART / "values.yaml", f"ingress.routes: {route} is not a route of the manager ({', '.join(sorted(routes))})")
                served[route] = (tpath, ing, p, ann)
    for route, websocket in sorted(routes.items()):
        listed = route in merged["ingress"]["routes"]["websockets" if websocket else "requests"]
        if route not in served or not listed:
            kind = "websockets" if websocket else "requests"
            fail(CHART / "values.yaml", f"ingress.routes.{kind} must list {route} (a {'WebSocket' if websocket else 'plain'} route of the manager, {rel(code.SERVER_RS if 'hubs' not in route else code.HUB_RS)})")
            continue
        tpath, ing, p, ann = served[route]
        if not websocket:
            continue
        backend = p["backend"]["service"]["name"]
        if backend != manager:
            fail(tpath, f"Ingress/{ing['metadata']['name']}: WebSocket route {route} goes to {backend!r}; it must go to Service {manager!r} "
                 "(KEDA's HTTP interceptor cannot proxy WebSockets)")
        for a in ("proxy-read-timeout", "proxy-send-timeout"):
            value = ann.get(f"nginx.ingress.kubernetes.io/{a}", "60")
            if not str(value).isdigit() or int(value) < 3600:
                fail(tpath, f"Ingress/{ing['metadata']['name']}: WebSocket route {route} needs {a} of at least 3600 s, has {value}")


def check_keda_queries(merged: dict, by_kind: dict, fail) -> None:
    """The SQL KEDA runs names tables and columns the migrations create; the queues it
    watches are the bus's."""
    if not code.tables():
        fail(code.MIGRATIONS, "found no CREATE TABLE in commands/migrations: update ops/checks/code_contract.py")
        return
    queues = code.queue_names()
    if set(merged["bus"]["queues"].values()) != set(queues):
        fail(CHART / "values.yaml", f"bus.queues {sorted(merged['bus']['queues'].values())} are not the bus's queues "
             f"{sorted(queues)} ({rel(code.BUS_RS)})")
    for tpath, so in by_kind.get("ScaledObject", []):
        for trig in so["spec"]["triggers"]:
            if trig["type"] != "postgresql":
                continue
            is_depth = trig.get("name") in queues
            where = CHART / "values.yaml" if is_depth else tpath
            what = "bus.postgres.depthQuery" if is_depth else f"trigger {trig.get('name')}"
            for problem in code.sql_problems(trig["metadata"].get("query", "")):
                fail(where, f"ScaledObject/{so['metadata']['name']}: {what}: {problem}")


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
