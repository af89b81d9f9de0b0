"""Terraform structure, without providers (they cannot be downloaded offline).

Runs in its own venv (ops/.venv/hcl, python-hcl2 v8) and checks, for the root and every
module under ops/terraform:
- every file parses;
- every variable has a description and a type, and every root variable that is not a bool
  has a validation block;
- every reference resolves: var.*, local.*, module.<m>.<output>, data.<t>.<n>, <type>.<name>;
  every declared variable is used;
- every module call passes only declared inputs and every required one (wired);
- the tfvars files set only declared variables, and every required one;
- `count` is decidable from variables alone (Terraform needs it at plan time), and each
  use_shared_* flag really switches resources: flipping it removes a managed resource and
  adds a data source of the same type (the shared environment's), in the root or inside a
  module, evaluated through module inputs;
- the Service Bus queues are the bus's (workers/src/bus/mod.rs), with duplicate detection
  (the outbox relay resends under the same message ids) and without sessions (the REST client
  cannot receive by session).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hcl2  # noqa: E402  (python-hcl2 v8, from ops/.venv/hcl)
from hcl2 import SerializationOptions  # noqa: E402

import code_contract as code  # noqa: E402
from common import KUBERNETES_VERSION, OUT, ROOT, TERRAFORM, Report, StopCheck, rel  # noqa: E402

OPTIONS = SerializationOptions(strip_string_quotes=True, explicit_blocks=False)
META_ARGS = {"source", "count", "for_each", "providers", "depends_on", "version"}
PROVIDER_PREFIXES = ("azurerm_", "random_", "kubernetes_", "postgresql_")
# tfvars each environment must set this way (cloud architecture, "Typical Configuration").
EXPECTED_FLAGS = {
    "terraform.tfvars.dev": {"use_shared_aks": False, "use_shared_postgres": False},
    "terraform.tfvars.prod": {"use_shared_aks": False, "use_shared_postgres": False},
    "terraform.tfvars.template": {"use_shared_aks": True, "use_shared_postgres": True},
}
FLAGS = ["use_shared_aks", "use_shared_postgres"]
# Values that differ per run or are secret: never in a committed tfvars file (a -var-file
# overrides TF_VAR_*, so a placeholder there would win over the workflow's real value). The
# terraform workflow must pass each as TF_VAR_<name>.
RUN_VALUES = {
    "terraform.tfvars.dev": {"subscription_id"},
    "terraform.tfvars.prod": {"subscription_id"},
    "terraform.tfvars.template": {"subscription_id", "environment_name"},
}
SECRET_LIKE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$|^(?:sk|pk|key)[-_]|password|secret", re.I)
TF_WORKFLOWS = [ROOT / ".github" / "workflows" / "terraform.yaml", ROOT / ".github" / "workflows" / "pr-environment.yaml"]
# Resources holding data that must survive a bad plan: lifecycle.prevent_destroy in dev and
# prod; dynamic environments must stay destroyable.
STATEFUL_TYPES = {
    "azurerm_postgresql_flexible_server", "azurerm_postgresql_flexible_server_database",
    "azurerm_storage_account", "azurerm_key_vault", "azurerm_servicebus_namespace",
}
PROTECTED_ENVS = {"terraform.tfvars.dev": True, "terraform.tfvars.prod": True, "terraform.tfvars.template": False}


class Unknown:
    """A value known only after apply (a resource attribute, a module output)."""

    def __repr__(self):
        return "<unknown>"


UNKNOWN = Unknown()


# ----------------------------------------------------------------------------- parsing


class Module:
    """The blocks of one directory, each remembering the file it came from."""

    def __init__(self, path: Path, report: Report):
        self.path = path
        self.variables: dict[str, tuple[dict, Path]] = {}
        self.locals: dict[str, tuple[object, Path]] = {}
        self.outputs: dict[str, tuple[dict, Path]] = {}
        self.modules: dict[str, tuple[dict, Path]] = {}
        self.resources: dict[tuple[str, str], tuple[dict, Path]] = {}
        self.data: dict[tuple[str, str], tuple[dict, Path]] = {}
        self.files: dict[Path, dict] = {}
        # provider and terraform blocks: scanned for references only.
        self.other: list[tuple[str, object, Path]] = []
        for f in sorted(path.glob("*.tf")):
            try:
                with f.open() as fh:
                    doc = hcl2.load(fh, serialization_options=OPTIONS)
            except Exception as e:  # the parser raises several exception types
                report.fail("terraform-parse", f, f"does not parse: {str(e).splitlines()[0]}")
                continue
            self.files[f] = doc
            for kind in ("provider", "terraform"):
                for block in doc.get(kind, []):
                    self.other.append((kind, block, f))
            for block in doc.get("variable", []):
                for name, body in block.items():
                    self.variables[name] = (body, f)
            for block in doc.get("locals", []):
                for name, value in block.items():
                    self.locals[name] = (value, f)
            for block in doc.get("output", []):
                for name, body in block.items():
                    self.outputs[name] = (body, f)
            for block in doc.get("module", []):
                for name, body in block.items():
                    self.modules[name] = (body, f)
            for block in doc.get("resource", []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        self.resources[(rtype, name)] = (body, f)
            for block in doc.get("data", []):
                for dtype, named in block.items():
                    for name, body in named.items():
                        self.data[(dtype, name)] = (body, f)


def strings(node):
    """Every string inside a parsed HCL value (expressions are strings like "${...}")."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


REF_VAR = re.compile(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)")
REF_LOCAL = re.compile(r"\blocal\.([A-Za-z_][A-Za-z0-9_-]*)")
REF_MODULE = re.compile(r"\bmodule\.([A-Za-z_][A-Za-z0-9_-]*)(?:\[[^\]]*\])?\.([A-Za-z_][A-Za-z0-9_-]*)")
REF_DATA = re.compile(r"\bdata\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_-]*)")
REF_RESOURCE = re.compile(r"(?<![\w.])((?:azurerm|random|kubernetes|postgresql)_[A-Za-z0-9_]+)\.([A-Za-z_][A-Za-z0-9_-]*)")


def expressions(text: str) -> list[str]:
    """The ${...} parts of a string: only these are code (the rest is a literal)."""
    out, i = [], 0
    while True:
        start = text.find("${", i)
        if start < 0:
            return out
        depth, j = 0, start + 1
        while j < len(text):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        out.append(text[start + 2 : j])
        i = j + 1


def code_of(body) -> list[str]:
    return [e for s in strings(body) for e in expressions(s)]


# ----------------------------------------------------------------------------- references


def check_module(mod: Module, modules_by_source: dict[Path, Module], report: Report, is_root: bool) -> None:
    step = "terraform-refs"
    used_vars: set[str] = set()
    blocks = []
    for kind in ("variables", "locals", "outputs", "modules", "resources", "data"):
        for key, (body, f) in getattr(mod, kind).items():
            blocks.append((kind, key, body, f))
    blocks.extend((kind, kind, body, f) for kind, body, f in mod.other)
    for kind, key, body, f in blocks:
        label = key if isinstance(key, str) else ".".join(key)
        for code in code_of(body):
            # A variable's own validation refers to itself; that is not a use elsewhere.
            for v in REF_VAR.findall(code):
                if v not in mod.variables:
                    report.fail(step, f, f"{label}: var.{v} is not declared in {mod.path.name}/")
                elif not (kind == "variables" and key == v):
                    used_vars.add(v)
            for loc in REF_LOCAL.findall(code):
                if loc not in mod.locals:
                    report.fail(step, f, f"{label}: local.{loc} is not declared")
            for m, out in REF_MODULE.findall(code):
                if m not in mod.modules:
                    report.fail(step, f, f"{label}: module.{m} is not declared")
                    continue
                src = (mod.path / mod.modules[m][0].get("source", "")).resolve()
                target = modules_by_source.get(src)
                if target is not None and out not in target.outputs:
                    report.fail(step, f, f"{label}: module.{m} has no output {out!r} (outputs: {', '.join(sorted(target.outputs))})")
            for t, n in REF_DATA.findall(code):
                if (t, n) not in mod.data:
                    report.fail(step, f, f"{label}: data.{t}.{n} is not declared")
            for t, n in REF_RESOURCE.findall(code):
                if (t, n) not in mod.resources and f"data.{t}.{n}" not in code:
                    report.fail(step, f, f"{label}: resource {t}.{n} is not declared")
    for name, (body, f) in mod.variables.items():
        if name not in used_vars:
            report.fail(step, f, f"variable {name!r} is declared but never used")
        if not body.get("description"):
            report.fail("terraform-vars", f, f"variable {name!r} has no description")
        if "type" not in body:
            report.fail("terraform-vars", f, f"variable {name!r} has no type")
        elif is_root and body["type"] != "bool" and not body.get("validation"):
            report.fail("terraform-vars", f, f"variable {name!r} has no validation block")
    for name, (body, f) in mod.outputs.items():
        if not body.get("description"):
            report.fail("terraform-vars", f, f"output {name!r} has no description")


def check_module_calls(mod: Module, modules_by_source: dict[Path, Module], report: Report) -> None:
    for name, (body, f) in mod.modules.items():
        source = body.get("source", "")
        src = (mod.path / source).resolve()
        target = modules_by_source.get(src)
        if target is None:
            report.fail("terraform-wiring", f, f"module {name!r}: source {source!r} is not a module directory here")
            continue
        args = set(body) - META_ARGS
        for a in sorted(args - set(target.variables)):
            report.fail("terraform-wiring", f, f"module {name!r} passes {a!r}, which {source} does not declare")
        for v, (vbody, _) in sorted(target.variables.items()):
            if "default" not in vbody and v not in args:
                report.fail("terraform-wiring", f, f"module {name!r} does not pass required input {v!r} of {source}")


def parse_tfvars(path: Path, report: Report) -> dict | None:
    try:
        with path.open() as fh:
            return hcl2.load(fh, serialization_options=OPTIONS)
    except Exception as e:
        report.fail("terraform-tfvars", path, f"does not parse: {str(e).splitlines()[0]}")
        return None


def check_tfvars(root: Module, report: Report) -> dict[str, dict]:
    out = {}
    for name in sorted(EXPECTED_FLAGS):
        path = TERRAFORM / name
        if not path.exists():
            report.fail("terraform-tfvars", path, "is missing")
            continue
        values = parse_tfvars(path, report)
        if values is None:
            continue
        values = {k: v for k, v in values.items() if not k.startswith("__")}  # parser's comment entries
        for k in sorted(set(values) - set(root.variables)):
            report.fail("terraform-tfvars", path, f"sets {k!r}, which variables.tf does not declare")
        for v, (body, _) in sorted(root.variables.items()):
            if "default" not in body and v not in values and v not in RUN_VALUES.get(name, {}):
                report.fail("terraform-tfvars", path, f"does not set required variable {v!r}")
        for flag, expected in EXPECTED_FLAGS[name].items():
            if values.get(flag) is not expected:
                report.fail("terraform-tfvars", path, f"{flag} must be {str(expected).lower()} here (cloud architecture: dev/prod own their resources, dynamic environments share dev's)")
        if values.get("kubernetes_version", KUBERNETES_VERSION) != KUBERNETES_VERSION:
            report.fail("terraform-tfvars", path, f"kubernetes_version {values.get('kubernetes_version')} differs from the version ops/check validates the chart for ({KUBERNETES_VERSION}, ops/checks/common.py)")
        out[name] = values
    return out


# ----------------------------------------------------------------------------- evaluation

TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<str>\"(?:[^\"\\]|\\.)*\")|(?P<op>==|!=|>=|<=|&&|\|\||[!?:(),\[\]<>+\-*/])|(?P<name>[A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z_][A-Za-z0-9_\-]*|\[\d+\])*))"
)


class Evaluator:
    """A small evaluator for the HCL expressions `count` uses: conditionals, boolean and
    comparison operators, numbers, strings, lists, length() and references to variables and
    locals. Anything else is Unknown, and a count that is Unknown is a failure."""

    def __init__(self, variables: dict, locals_: dict, resolve_local):
        self.variables = variables
        self.locals = locals_
        self.resolve_local = resolve_local

    def value(self, node):
        if isinstance(node, str):
            code = expressions(node)
            if len(code) == 1 and node.strip() == "${" + code[0] + "}":
                return self.expr(code[0])
            return UNKNOWN if code else node
        if isinstance(node, list):
            return [self.value(v) for v in node]
        return node

    def expr(self, text: str):
        self.tokens = [(m.lastgroup, m.group(m.lastgroup)) for m in TOKEN.finditer(text) if m.lastgroup]
        self.pos = 0
        try:
            v = self.ternary()
            if self.pos != len(self.tokens):
                return UNKNOWN
            return v
        except (IndexError, KeyError, TypeError, ValueError):
            return UNKNOWN

    def peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else (None, None)

    def take(self, value=None):
        tok = self.tokens[self.pos]
        if value is not None and tok[1] != value:
            raise ValueError(value)
        self.pos += 1
        return tok

    def ternary(self):
        cond = self.binary(0)
        if self.peek()[1] == "?":
            self.take("?")
            a = self.ternary()
            self.take(":")
            b = self.ternary()
            if isinstance(cond, Unknown):
                return UNKNOWN
            return a if cond else b
        return cond

    LEVELS = [["||"], ["&&"], ["==", "!="], [">", "<", ">=", "<="], ["+", "-"], ["*", "/"]]

    def binary(self, level):
        if level == len(self.LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek()[1] in self.LEVELS[level]:
            op = self.take()[1]
            right = self.binary(level + 1)
            if isinstance(left, Unknown) or isinstance(right, Unknown):
                left = UNKNOWN
                continue
            left = {
                "||": lambda a, b: a or b, "&&": lambda a, b: a and b, "==": lambda a, b: a == b,
                "!=": lambda a, b: a != b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
                ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "+": lambda a, b: a + b,
                "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b,
            }[op](left, right)
        return left

    def unary(self):
        if self.peek()[1] == "!":
            self.take()
            v = self.unary()
            return UNKNOWN if isinstance(v, Unknown) else (not v)
        if self.peek()[1] == "-":
            self.take()
            v = self.unary()
            return UNKNOWN if isinstance(v, Unknown) else -v
        return self.primary()

    def primary(self):
        kind, tok = self.take()
        if kind == "num":
            return float(tok) if "." in tok else int(tok)
        if kind == "str":
            return tok[1:-1]
        if tok == "(":
            v = self.ternary()
            self.take(")")
            return v
        if tok == "[":
            items = []
            while self.peek()[1] != "]":
                items.append(self.ternary())
                if self.peek()[1] == ",":
                    self.take(",")
            self.take("]")
            return items
        if kind == "name":
            if tok in ("true", "false"):
                return tok == "true"
            if tok == "null":
                return None
            if self.peek()[1] == "(":
                self.take("(")
                args = []
                while self.peek()[1] != ")":
                    args.append(self.ternary())
                    if self.peek()[1] == ",":
                        self.take(",")
                self.take(")")
                return self.call(tok, args)
            parts = tok.split(".")
            if parts[0] == "var" and len(parts) == 2:
                return self.value(self.variables[parts[1]])
            if parts[0] == "local" and len(parts) == 2:
                return self.resolve_local(parts[1])
            return UNKNOWN
        raise ValueError(tok)

    def call(self, name, args):
        if any(isinstance(a, Unknown) for a in args):
            return UNKNOWN
        if name == "length":
            return len(args[0])
        if name == "contains":
            return args[1] in args[0]
        return UNKNOWN


def instance_counts(mod: Module, variables: dict, modules_by_source, prefix: str, report: Report, where: str) -> dict[str, int]:
    """Address -> number of instances, for one set of input values (recursing into modules)."""
    resolving: dict[str, object] = {}

    def resolve_local(name):
        if name not in resolving:
            value, _ = mod.locals[name]
            resolving[name] = ev.value(value)
        return resolving[name]

    ev = Evaluator(variables, mod.locals, resolve_local)
    counts: dict[str, int] = {}

    def count_of(body, label, f):
        if "count" not in body:
            return 1
        c = ev.value(body["count"])
        if isinstance(c, Unknown) or not isinstance(c, (int, bool)):
            report.fail("terraform-count", f, f"{label}: count is not decidable from variables ({body['count']}); Terraform needs it known at plan time")
            return 0
        return int(c)

    for (t, n), (body, f) in mod.resources.items():
        counts[f"{prefix}{t}.{n}"] = count_of(body, f"{t}.{n}", f)
    for (t, n), (body, f) in mod.data.items():
        counts[f"{prefix}data.{t}.{n}"] = count_of(body, f"data.{t}.{n}", f)
    for name, (body, f) in mod.modules.items():
        n = count_of(body, f"module.{name}", f)
        target = modules_by_source.get((mod.path / body.get("source", "")).resolve())
        if target is None:
            continue
        inner_vars = {}
        for v, (vbody, _) in target.variables.items():
            if v in body:
                inner_vars[v] = ev.value(body[v])
            else:
                inner_vars[v] = vbody.get("default")
        inner = instance_counts(target, inner_vars, modules_by_source, f"{prefix}module.{name}.", report, where)
        for k, c in inner.items():
            counts[k] = c * n
    return counts


def root_values(root: Module, tfvars: dict) -> dict:
    values = {v: body.get("default") for v, (body, _) in root.variables.items()}
    values.update(tfvars)
    return values


def check_flags(root: Module, modules_by_source, tfvars: dict[str, dict], report: Report) -> None:
    base = root_values(root, tfvars.get("terraform.tfvars.dev", {}))
    for flag in FLAGS:
        if flag not in root.variables:
            report.fail("terraform-flags", TERRAFORM / "variables.tf", f"variable {flag} is missing")
            continue
        off = instance_counts(root, {**base, flag: False}, modules_by_source, "", report, flag)
        on = instance_counts(root, {**base, flag: True}, modules_by_source, "", report, flag)
        removed = {a for a in off if off[a] > 0 and on.get(a, 0) == 0 and ".data." not in f".{a}"}
        added = {a for a in on if on[a] > 0 and off.get(a, 0) == 0 and (".data." in f".{a}")}

        def rtype(address):
            parts = address.split(".")
            return parts[-2]

        removed_types = {rtype(a) for a in removed if rtype(a).startswith(PROVIDER_PREFIXES)}
        added_types = {rtype(a) for a in added}
        if not removed:
            report.fail("terraform-flags", TERRAFORM / "main.tf", f"{flag}=true removes no managed resource: the flag does not switch anything")
        if not added:
            report.fail("terraform-flags", TERRAFORM / "main.tf", f"{flag}=true adds no data source: the shared environment's resources are not read")
        if removed and added and not removed_types & added_types:
            report.fail("terraform-flags", TERRAFORM / "main.tf",
                        f"{flag}: resources it stops creating ({', '.join(sorted(removed_types))}) are not read back through data sources of the same type ({', '.join(sorted(added_types))})")
        if removed and added and removed_types & added_types:
            report.ok("terraform-flags", f"{flag}: true drops {len(removed)} resources ({', '.join(sorted(removed_types & added_types))}...) and reads them via {len(added)} data sources")
    for name, values in sorted(tfvars.items()):
        counts = instance_counts(root, root_values(root, values), modules_by_source, "", report, name)
        managed = sum(c for a, c in counts.items() if ".data." not in f".{a}")
        data = sum(c for a, c in counts.items() if ".data." in f".{a}")
        report.ok("terraform-flags", f"{name}: {managed} resource blocks instantiated, {data} data sources")


def check_bus_queues(modules_by_source, report: Report) -> None:
    """The queues Terraform makes are the ones the binary's servicebus backend uses, as it uses
    them: idempotent sends need duplicate detection; the REST client's plain peek-lock is refused
    by a session-enabled queue."""
    d = TERRAFORM / "modules" / "servicebus"
    mod = modules_by_source.get(d.resolve())
    queues = [(body, f) for (rtype, _), (body, f) in (mod.resources.items() if mod else []) if rtype == "azurerm_servicebus_queue"]
    if not queues:
        report.fail("terraform-bus", d / "main.tf", "declares no azurerm_servicebus_queue")
        return
    before = len(report.failures)
    wanted = code.queue_names()
    declared = set(re.findall(r'"([a-z0-9-]+-queue)"', "\n".join(f.read_text() for f in sorted(d.glob("*.tf")))))
    if not wanted:
        report.fail("terraform-bus", code.BUS_RS, "found no QueueName => \"name\" in the bus: update ops/checks/code_contract.py")
    elif declared != set(wanted):
        report.fail("terraform-bus", d / "main.tf", f"queues {sorted(declared)} are not the bus's {sorted(wanted)} ({rel(code.BUS_RS)})")
    for body, f in queues:
        if body.get("requires_duplicate_detection") is not True:
            report.fail("terraform-bus", f, "azurerm_servicebus_queue needs requires_duplicate_detection = true: the outbox relay resends "
                        "with the same message ids after a crash and relies on the broker to drop them")
        if not body.get("duplicate_detection_history_window"):
            report.fail("terraform-bus", f, "azurerm_servicebus_queue needs a duplicate_detection_history_window")
        if body.get("requires_session") is not False:
            report.fail("terraform-bus", f, "azurerm_servicebus_queue needs requires_session = false: the binary's REST client cannot "
                        "receive by session, so a session-enabled queue could never be read")
    if len(report.failures) == before:
        report.ok("terraform-bus", f"{len(wanted)} Service Bus queues as the bus uses them: duplicate detection, no sessions")


# ----------------------------------------------------------------------------- deployability


def _module_scope(mod: Module, variables: dict):
    """An Evaluator over one module instance's variables and locals."""
    resolving: dict[str, object] = {}

    def resolve_local(name):
        if name not in resolving:
            value, _ = mod.locals[name]
            resolving[name] = ev.value(value)
        return resolving[name]

    ev = Evaluator(variables, mod.locals, resolve_local)
    return ev


def instances(mod: Module, variables: dict, modules_by_source, prefix: str = ""):
    """Every instantiated resource: (address, type, body, file, evaluator of its module)."""
    ev = _module_scope(mod, variables)
    out = []

    def n_of(body):
        if "count" not in body:
            return 1
        c = ev.value(body["count"])
        return int(c) if isinstance(c, (int, bool)) else 0

    for (rt, name), (body, f) in mod.resources.items():
        if n_of(body):
            out.append((f"{prefix}{rt}.{name}", rt, body, f, ev))
    for name, (body, f) in mod.modules.items():
        if not n_of(body):
            continue
        target = modules_by_source.get((mod.path / body.get("source", "")).resolve())
        if target is None:
            continue
        inner = {v: (ev.value(body[v]) if v in body else vb.get("default")) for v, (vb, _) in target.variables.items()}
        out += instances(target, inner, modules_by_source, f"{prefix}module.{name}.")
    return out


def _lifecycle(body) -> dict:
    lc = body.get("lifecycle") or {}
    if isinstance(lc, list):
        lc = lc[0] if lc else {}
    return lc


def check_deployability(root: Module, modules_by_source, tfvars: dict[str, dict], report: Report) -> dict:
    """Rules about what a first `terraform apply` meets, and the facts ops/checks/deploy_checks.py
    compares with the chart and the workflows (written to ops/.out/terraform-facts.json)."""
    facts: dict = {"environments": {}}
    before = len(report.failures)

    # tfvars-run-values: no per-run or secret value in a committed tfvars file.
    wf_text = "\n".join(f.read_text() for f in TF_WORKFLOWS if f.exists())
    for name, values in sorted(tfvars.items()):
        path = TERRAFORM / name
        env = name.rsplit(".", 1)[1]
        for k in sorted(RUN_VALUES.get(name, set())):
            if k in values:
                report.fail("tfvars-run-values", path, f"sets {k!r}, which the workflow passes as TF_VAR_{k}: a -var-file overrides TF_VAR_*, "
                            "so this committed value would win (keep per-run values and secrets out of tfvars)")
            elif f"TF_VAR_{k}" not in wf_text:
                report.fail("tfvars-run-values", TF_WORKFLOWS[0], f"never sets TF_VAR_{k}, which {name} leaves to the workflow")
        for k, v in sorted(values.items()):
            if isinstance(v, str) and SECRET_LIKE.search(v):
                report.fail("tfvars-run-values", path, f"{k} = {v!r} looks like an id or a secret: pass it as TF_VAR_{k}")
        if env in ("dev", "prod") and values.get("environment_name", env) != env:
            report.fail("tfvars-run-values", path, f"environment_name {values.get('environment_name')!r} is not {env!r}, the environment this file is for")

    # crd-at-plan: a kubernetes_manifest needs its kind's CRD (and the cluster) at plan time.
    for d, mod in modules_by_source.items():
        for (rt, name), (body, f) in mod.resources.items():
            if rt == "kubernetes_manifest":
                report.fail("crd-at-plan", f, f"kubernetes_manifest.{name}: needs the cluster and its kind's CRD at *plan* time, before the "
                            "cluster or the operator that installs the CRD exist, so a fresh environment cannot plan; let the Helm chart make it")

    # signalr-mode: the service mode the manager speaks.
    code_mode = code.signalr_service_mode()
    signalr_blocks = [(n, b, f) for mod in modules_by_source.values() for (rt, n), (b, f) in mod.resources.items() if rt == "azurerm_signalr_service"]
    for n, b, f in signalr_blocks:
        mode = b.get("service_mode", "Default")
        if code_mode and mode != code_mode:
            report.fail("signalr-mode", f, f"azurerm_signalr_service.{n}: service_mode {mode!r}, but the manager speaks {code_mode} "
                        f"({rel(code.AZURE_HUB_RS)}: REST publish and a negotiate redirect, no hub server connection)")

    # appinsights-rules: smart-detection rules Azure adds outside the state block `destroy`.
    has_ai = any(rt == "azurerm_application_insights" for mod in modules_by_source.values() for (rt, _n) in mod.resources)
    if has_ai:
        disabled = False
        for kind, block, f in root.other:
            if kind != "provider" or "azurerm" not in block:
                continue
            features = block["azurerm"].get("features") or {}
            features = features[0] if isinstance(features, list) and features else features
            ai = (features or {}).get("application_insights") or {}
            ai = ai[0] if isinstance(ai, list) and ai else ai
            disabled = ai.get("disable_generated_rule") is True
        if not disabled:
            report.fail("appinsights-rules", TERRAFORM / "providers.tf", "the azurerm provider must set features.application_insights.disable_generated_rule = true: "
                        "the smart-detection rules Azure adds to each component are not in the state and make `terraform destroy` of the resource group fail")

    # pg-app-role: the application connects as its own role, which cannot create roles.
    secrets = (TERRAFORM / "secrets.tf").read_text()
    m = re.search(r'"postgres-connection-string"\s*=\s*module\.(\w+)\.(\w+)', secrets)
    if not m:
        report.fail("pg-app-role", TERRAFORM / "secrets.tf", "postgres-connection-string must be a module output (the environment role's URL)")
    else:
        call = root.modules.get(m.group(1))
        target = modules_by_source.get((TERRAFORM / call[0].get("source", "")).resolve()) if call else None
        out = target.outputs.get(m.group(2)) if target else None
        if out is None:
            report.fail("pg-app-role", TERRAFORM / "secrets.tf", f"postgres-connection-string: module.{m.group(1)}.{m.group(2)} not found")
        else:
            value = json.dumps(out[0].get("value", ""))
            if re.search(r"admin", value, re.I):
                report.fail("pg-app-role", out[1], f"output {m.group(2)} (postgres-connection-string) connects with the admin login: "
                            "the application must connect as the environment's own role")
            if "var.role_name" not in value:
                report.fail("pg-app-role", out[1], f"output {m.group(2)} (postgres-connection-string) does not log in as the environment's role (var.role_name)")
            scripts = sorted(target.path.glob("*.sql"))
            sql = "\n".join(re.sub(r"--[^\n]*", "", f.read_text()) for f in scripts)
            where = scripts[0] if scripts else target.path / "main.tf"
            if not re.search(r"CREATE ROLE", sql):
                report.fail("pg-app-role", where, "no SQL script of the module creates the environment's role")
            for attr in ("CREATEROLE", "CREATEDB", "SUPERUSER", "REPLICATION", "BYPASSRLS"):
                for stmt in re.findall(r"(?:CREATE|ALTER) ROLE[^;\n]*", sql):
                    if re.search(rf"(?<!NO){attr}\b", stmt):
                        report.fail("pg-app-role", where, f"the application's role gets {attr} ({stmt.strip()[:80]}): it may not create roles or databases")
                if re.search(rf"(?:CREATE|ALTER) ROLE[^;\n]*", sql) and attr in ("CREATEROLE", "CREATEDB") and not re.search(rf"CREATE ROLE[^;\n]*\bNO{attr}\b", sql):
                    report.fail("pg-app-role", where, f"CREATE ROLE must say NO{attr} explicitly")
            if not re.search(r"REVOKE\s+CONNECT[^;\n]*FROM\s+PUBLIC", sql, re.I):
                report.fail("pg-app-role", where, "CONNECT on the environment's database must be revoked from PUBLIC, or every role on the shared server can connect to it")

    # prevent-destroy, and the facts for the cross-checks, per environment.
    for name, values in sorted(tfvars.items()):
        insts = instances(root, root_values(root, values), modules_by_source)
        want = PROTECTED_ENVS.get(name)
        for addr, rt, body, f, ev in insts:
            if rt not in STATEFUL_TYPES or want is None:
                continue
            protected = _lifecycle(body).get("prevent_destroy") is True
            # A protected sibling block of the same type means the environment's flag chose wrong.
            siblings = [b for mod in modules_by_source.values() if f.parent == mod.path
                        for (rt2, _n), (b, _f) in mod.resources.items() if rt2 == rt]
            has_protected = any(_lifecycle(b).get("prevent_destroy") is True for b in siblings)
            if want and not protected:
                report.fail("prevent-destroy", TERRAFORM / name if has_protected else f,
                            f"{addr} holds data but has no lifecycle.prevent_destroy = true in {name}"
                            + (" (protect_stateful_resources must be true)" if has_protected else ""))
            if not want and protected:
                report.fail("prevent-destroy", TERRAFORM / name, f"{addr} has prevent_destroy in {name}: a dynamic environment must be "
                            "destroyable when its pull request closes (protect_stateful_resources = false)")
        env = {"signalr": [], "pools": [], "acr_pull": 0, "registry": None}
        for addr, rt, body, f, ev in insts:
            if rt == "azurerm_signalr_service":
                env["signalr"].append({"address": addr, "file": str(f), "mode": body.get("service_mode")})
            if rt == "azurerm_kubernetes_cluster":
                dnp = body.get("default_node_pool") or {}
                dnp = dnp[0] if isinstance(dnp, list) else dnp
                crit = ev.value(dnp.get("only_critical_addons_enabled", False))
                env["pools"].append({"name": ev.value(dnp.get("name")), "file": str(f),
                                     "taints": ["CriticalAddonsOnly=true:NoSchedule"] if crit is True else [],
                                     "unknown": not isinstance(crit, bool)})
            if rt == "azurerm_kubernetes_cluster_node_pool":
                taints = ev.value(body.get("node_taints", []))
                env["pools"].append({"name": ev.value(body.get("name")), "file": str(f),
                                     "taints": taints if isinstance(taints, list) else [], "unknown": not isinstance(taints, list)})
            if rt == "azurerm_role_assignment" and body.get("role_definition_name") == "AcrPull" and "kubelet" in json.dumps(body.get("principal_id", "")):
                env["acr_pull"] += 1
            if rt == "azurerm_container_registry":
                env["registry"] = f"{ev.value(body.get('name')) if not isinstance(ev.value(body.get('name')), Unknown) else values.get('container_registry_name')}.azurecr.io"
        if env["registry"] is None:
            reg_var = root_values(root, values).get("container_registry_name")
            if any(rt == "azurerm_container_registry" for (rt, _n) in root.data) and reg_var:
                env["registry"] = f"{reg_var}.azurecr.io"
        env["shares_cluster"] = bool(root_values(root, values).get("use_shared_aks"))
        facts["environments"][name] = env
    if len(report.failures) == before:
        report.ok("terraform-deploy", "tfvars free of per-run values; no CRD at plan; SignalR mode; smart-detection rules; app role; prevent_destroy")
    return facts


def run(report: Report) -> None:
    dirs = [TERRAFORM] + sorted(p for p in (TERRAFORM / "modules").iterdir() if p.is_dir())
    modules_by_source = {d.resolve(): Module(d, report) for d in dirs}
    for d in dirs:
        mod = modules_by_source[d.resolve()]
        check_module(mod, modules_by_source, report, is_root=(d == TERRAFORM))
        check_module_calls(mod, modules_by_source, report)
    root = modules_by_source[TERRAFORM.resolve()]
    used = {(TERRAFORM / b.get("source", "")).resolve() for b, _ in root.modules.values()}
    for d in dirs[1:]:
        if d.resolve() not in used:
            report.fail("terraform-wiring", d / "main.tf", f"module {d.name} is never called from the root")
    tfvars = check_tfvars(root, report)
    check_flags(root, modules_by_source, tfvars, report)
    check_bus_queues(modules_by_source, report)
    facts = check_deployability(root, modules_by_source, tfvars, report)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "terraform-facts.json").write_text(json.dumps(facts, indent=1, default=str))
    report.ok("terraform", f"{len(dirs)} directories parsed; references, inputs and tfvars checked")


if __name__ == "__main__":
    r = Report(fail_fast="--fail-fast" in sys.argv)
    try:
        run(r)
    except StopCheck:
        pass
    sys.exit(1 if r.failures else 0)
