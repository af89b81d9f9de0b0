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

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hcl2  # noqa: E402  (python-hcl2 v8, from ops/.venv/hcl)
from hcl2 import SerializationOptions  # noqa: E402

import code_contract as code  # noqa: E402
from common import KUBERNETES_VERSION, TERRAFORM, Report, StopCheck, rel  # noqa: E402

OPTIONS = SerializationOptions(strip_string_quotes=True, explicit_blocks=False)
META_ARGS = {"source", "count", "for_each", "providers", "depends_on", "version"}
PROVIDER_PREFIXES = ("azurerm_", "random_", "kubernetes_")
# tfvars each environment must set this way (cloud architecture, "Typical Configuration").
EXPECTED_FLAGS = {
    "terraform.tfvars.dev": {"use_shared_aks": False, "use_shared_postgres": False},
    "terraform.tfvars.prod": {"use_shared_aks": False, "use_shared_postgres": False},
    "terraform.tfvars.template": {"use_shared_aks": True, "use_shared_postgres": True},
}
FLAGS = ["use_shared_aks", "use_shared_postgres"]


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
REF_RESOURCE = re.compile(r"(?<![\w.])((?:azurerm|random|kubernetes)_[A-Za-z0-9_]+)\.([A-Za-z_][A-Za-z0-9_-]*)")


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
            if "default" not in body and v not in values:
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
    report.ok("terraform", f"{len(dirs)} directories parsed; references, inputs and tfvars checked")


if __name__ == "__main__":
    r = Report(fail_fast="--fail-fast" in sys.argv)
    try:
        run(r)
    except StopCheck:
        pass
    sys.exit(1 if r.failures else 0)
