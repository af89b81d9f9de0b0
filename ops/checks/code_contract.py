"""What the binary itself says, read from its sources, for the checks that hold ops/ to it.

The chart and Terraform describe how the `teachin` binary runs; these parsers read the few
facts they must agree with straight from the Rust code and the SQL migrations, so a rename on
either side fails ops/check instead of a deploy:
- the settings src/config.rs reads, and which of them it requires outside a local environment;
- the subcommands src/cli.rs defines (what the chart may put in `args`);
- the manager's public routes (api/src/server.rs, api/src/hub/mod.rs), and which of them are
  WebSockets (their handler takes a `WebSocketUpgrade`);
- the bus's queue names (workers/src/bus/mod.rs);
- the tables and columns the migrations create (for the SQL KEDA runs).

Plain Python (re, pathlib), so both ops/check venvs can import it. The parsers are narrow on
purpose: when one finds nothing, the caller fails, and the parser is updated with the code.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from common import OPS, ROOT

CONFIG_RS = ROOT / "src" / "config.rs"
CLI_RS = ROOT / "src" / "cli.rs"
SERVER_RS = ROOT / "api" / "src" / "server.rs"
HUB_RS = ROOT / "api" / "src" / "hub" / "mod.rs"
BUS_RS = ROOT / "workers" / "src" / "bus" / "mod.rs"
MIGRATIONS = ROOT / "commands" / "migrations"
README = OPS / "README.md"
# Rust sources searched for the names of the settings the code reads.
RUST_SOURCES = ["src", "api/src", "workers/src", "projections/src", "commands/src"]
# The manager serves these outside the routers above (health.rs, metrics.rs): never public.
INTERNAL_ROUTES = ["/metrics", "/healthz", "/readyz"]

_NAME = r'"([A-Za-z_][A-Za-z0-9_]*)"'


def _names(list_text: str) -> list[str]:
    return re.findall(_NAME, list_text)


# ----------------------------------------------------------------------------- settings


@lru_cache(maxsize=None)
def config_names() -> frozenset[str]:
    """Every setting name src/config.rs reads (string literals that look like one)."""
    text = CONFIG_RS.read_text()
    return frozenset(n for n in re.findall(_NAME, text) if "_" in n and n != n.lower())


@lru_cache(maxsize=None)
def required_settings() -> tuple[tuple[tuple[str, ...], tuple[str, str] | None], ...]:
    """What src/config.rs refuses to start without outside a local environment: groups of
    alternative names (any one will do), each with a condition (NAME, value) or None.
    - `self.secret(&[names...], ...)`: required outside local;
    - `ConfigError::new("NAME", "must be set outside a local environment ...")`: NAME (with the
      other names of the `self.first(&[...])` list that holds it);
    - `ConfigError::new("NAME", "must be set when OTHER=value")`: NAME when OTHER is value."""
    text = CONFIG_RS.read_text()
    firsts = [tuple(_names(m[1])) for m in re.finditer(r"self\.first\(\s*&\[([^\]]*)\]", text)]
    groups: list[tuple[tuple[str, ...], tuple[str, str] | None]] = []
    for m in re.finditer(r"self\.secret\(\s*&\[([^\]]*)\]", text):
        groups.append((tuple(_names(m[1])), None))
    for m in re.finditer(r'ConfigError::new\(\s*"(\w+)",\s*"must be set (?:outside a local environment|when (\w+)=(\w+))', text):
        name = m[1]
        group = next((f for f in firsts if name in f), (name,))
        groups.append((group, (m[2], m[3]) if m[2] else None))
    return tuple(groups)


@lru_cache(maxsize=None)
def code_string_literals() -> frozenset[str]:
    """Every setting-like string literal in the Rust sources (what the code could read)."""
    found: set[str] = set()
    for d in RUST_SOURCES:
        for f in (ROOT / d).rglob("*.rs"):
            found.update(re.findall(_NAME, f.read_text()))
    return frozenset(found)


def pending_names() -> dict[str, int]:
    """Names ops/README.md lists (as list items) under the heading "Names the engine will
    read": set by the chart before the code that reads them lands. Name -> line."""
    lines = README.read_text().splitlines()
    out: dict[str, int] = {}
    inside = False
    for n, line in enumerate(lines, 1):
        if line.startswith("#"):
            inside = "names the engine will read" in line.lower()
            continue
        if inside and line.startswith(("-", " ")):
            for name in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", line):
                out.setdefault(name, n)
    return out


# ----------------------------------------------------------------------------- commands


def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def _enum_body(name: str) -> str | None:
    for f in (ROOT / "src").glob("*.rs"):
        text = f.read_text()
        m = re.search(rf"pub enum {name}\s*\{{", text)
        if not m:
            continue
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        return text[m.end():i - 1]
    return None


@lru_cache(maxsize=None)
def subcommands(enum: str = "Command") -> dict[str, str | None]:
    """Command name -> the enum of its own subcommands (or None), for one clap enum."""
    body = _enum_body(enum)
    if body is None:
        return {}
    out: dict[str, str | None] = {}
    attrs: list[str] = []
    depth = 0
    for line in body.splitlines():
        s = line.strip()
        if depth == 0:
            if s.startswith("#["):
                attrs.append(s)
            elif s.startswith("///") or not s:
                pass
            else:
                m = re.match(r"([A-Z]\w*)\s*(?:\(([\w:]+)\))?", s)
                if m:
                    named = next((re.search(r'name\s*=\s*"([^"]+)"', a) for a in attrs if "name" in a), None)
                    nested = m[2].split("::")[-1] if m[2] and any("subcommand" in a for a in attrs) else None
                    out[named[1] if named else _kebab(m[1])] = nested
                attrs = []
        depth += s.count("{") - s.count("}")
    return out


def command_error(args: list[str]) -> str | None:
    """Why `teachin <args>` is not a command the binary has, or None when it is."""
    enum = "Command"
    for depth, arg in enumerate(args):
        table = subcommands(enum)
        if not table:
            return f"cannot read the subcommands of `{enum}` from src/"
        if arg not in table:
            return f"`teachin {' '.join(args[:depth + 1])}` is not a command (src/cli.rs has: {', '.join(sorted(table))})"
        enum = table[arg]
        if enum is None:
            return None
    if enum is not None:
        return f"`teachin {' '.join(args)}` needs a subcommand ({', '.join(sorted(subcommands(enum)))})"
    return None


# ----------------------------------------------------------------------------- routes


def _api_sources() -> dict[Path, str]:
    return {f: f.read_text() for f in (ROOT / "api" / "src").rglob("*.rs")}


def _is_websocket(handler: str, sources: dict[Path, str]) -> bool:
    name = handler.split("::")[-1]
    for text in sources.values():
        m = re.search(rf"\bfn {name}\s*\((.*?)\)\s*(?:->|\{{)", text, re.S)
        if m and "WebSocketUpgrade" in m[1]:
            return True
    return False


@lru_cache(maxsize=None)
def public_routes() -> dict[str, bool]:
    """The manager's public routes -> is it a WebSocket."""
    sources = _api_sources()
    hub = sources.get(HUB_RS, "")
    hub_path = re.search(r'const HUB_PATH: &str = "([^"]+)"', hub)
    routes: dict[str, bool] = {}
    for f in (SERVER_RS, HUB_RS):
        text = sources.get(f, "")
        for m in re.finditer(r"\.route\(\s*(\"[^\"]*\"|&?format!\(\"[^\"]*\"\)|HUB_PATH)\s*,\s*((?:\s*\.?\s*(?:get|post|put|patch|delete)\([\w:]+\))+)", text):
            raw = m[1]
            if raw == "HUB_PATH":
                path = hub_path[1] if hub_path else None
            else:
                lit = re.search(r'"([^"]*)"', raw)[1]
                path = lit.replace("{HUB_PATH}", hub_path[1]) if hub_path else lit
            if not path:
                continue
            handlers = re.findall(r"(?:get|post|put|patch|delete)\(([\w:]+)\)", m[2])
            routes[path] = any(_is_websocket(h, sources) for h in handlers)
    return routes


# ----------------------------------------------------------------------------- bus


@lru_cache(maxsize=None)
def queue_names() -> frozenset[str]:
    text = BUS_RS.read_text()
    return frozenset(re.findall(r'QueueName::\w+\s*=>\s*"([a-z0-9-]+)"', text))


# ----------------------------------------------------------------------------- schema


def _strip_sql_comments(text: str) -> str:
    return re.sub(r"--[^\n]*", "", text)


def _split_top(body: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in body:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


@lru_cache(maxsize=None)
def tables() -> dict[str, frozenset[str]]:
    """Table -> columns, from every migration (CREATE TABLE, ALTER TABLE ... ADD COLUMN)."""
    out: dict[str, set[str]] = {}
    for f in sorted(MIGRATIONS.glob("*.sql")):
        text = _strip_sql_comments(f.read_text())
        for m in re.finditer(r"CREATE TABLE\s+(?:IF NOT EXISTS\s+)?([\w.]+)\s*\(", text, re.I):
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            cols = out.setdefault(m[1].split(".")[-1].lower(), set())
            for item in _split_top(text[m.end():i - 1]):
                word = item.split()[0].lower() if item.split() else ""
                if word and word not in {"primary", "unique", "constraint", "foreign", "check", "exclude"}:
                    cols.add(word.strip('"'))
        for m in re.finditer(r"ALTER TABLE\s+(?:ONLY\s+)?([\w.]+)\s+ADD COLUMN\s+(?:IF NOT EXISTS\s+)?(\w+)", text, re.I):
            out.setdefault(m[1].split(".")[-1].lower(), set()).add(m[2].lower())
    return {t: frozenset(c) for t, c in out.items()}


SQL_WORDS = {
    "select", "from", "where", "and", "or", "not", "is", "null", "as", "limit", "offset", "order",
    "by", "asc", "desc", "group", "having", "count", "min", "max", "sum", "avg", "coalesce", "now",
    "int", "integer", "bigint", "float", "double", "precision", "numeric", "text", "true", "false",
    "in", "exists", "case", "when", "then", "else", "end", "distinct", "interval", "extract",
    "epoch", "join", "left", "right", "inner", "outer", "on", "between", "like", "greatest", "least",
}


def sql_problems(query: str) -> list[str]:
    """Tables and columns a KEDA query names that the migrations do not create."""
    known = tables()
    text = re.sub(r"'[^']*'", "''", query)
    problems = []
    referenced = [t.split(".")[-1].lower() for t in re.findall(r"\b(?:from|join)\s+([A-Za-z_][\w.]*)", text, re.I)]
    aliases = {a.lower() for a in re.findall(r"\bas\s+([A-Za-z_]\w*)", text, re.I)}
    for t in referenced:
        if t not in known:
            problems.append(f"table {t!r} is not created by any migration in commands/migrations")
    columns = set().union(*(known.get(t, frozenset()) for t in referenced)) if referenced else set()
    for word in re.findall(r"\b[A-Za-z_][\w.]*\b", text):
        w = word.split(".")[-1].lower()
        if w in SQL_WORDS or w in aliases or w in referenced:
            continue
        if w not in columns:
            problems.append(f"column {w!r} is in none of {sorted(set(referenced))}")
    return sorted(set(problems))


AZURE_HUB_RS = ROOT / "api" / "src" / "hub" / "azure.rs"


def signalr_service_mode() -> str | None:
    """The Azure SignalR service mode the manager speaks: Serverless when it publishes through
    the service's REST API (`/api/v1/hubs/...`) and never opens a server connection; Default
    when it connects as a hub server (`/server` endpoint). None if the code has no Azure hub."""
    if not AZURE_HUB_RS.exists():
        return None
    text = AZURE_HUB_RS.read_text()
    if re.search(r"/api/v1/hubs/", text) and not re.search(r'"/server\b|\?hub=.*server', text):
        return "Serverless"
    if "/server" in text:
        return "Default"
    return None
