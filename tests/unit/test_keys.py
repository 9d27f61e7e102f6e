"""The Redis key layout has one owner: kpi_state/keys.py (issue 14).

Checks the layout's own outputs, that the Lua scripts use the same literals, and that no other
Python module formats a key or a field name (a scan of the source tree's syntax trees).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from kpi_state import keys
from kpi_state.keys import KeyLayout
from kpi_state.kpis import DIM_CODES
from kpi_state.store import lua_source

ROOT = Path(__file__).resolve().parents[2]
OWNER = ROOT / "kpi_state" / "keys.py"
SCANNED = ("kpi_state", "streams", "kpi_app", "connectors", "bench", "tools", "tests")

_KINDS = "|".join(
    re.escape(k)
    for k in (
        *keys.BUCKET_KINDS,
        *keys.ENTITY_KINDS,
        keys.SEEN,
        keys.DIMENSION_VALUES,
        keys.HUBSPOT_DEAL,
        keys.PIN,
    )
)
_NAMES = "|".join(re.escape(n) for n in (keys.ALL, keys.CURRENT, keys.OFFSETS, keys.WATERMARK, keys.TARGETS))
# A string piece that formats a key: a kind and its separator at the start of a piece ("d:" in
# f"d:{start}"), or a key name right after an interpolated prefix (":offsets" in
# f"{ns}:offsets"), a SCAN pattern of keys (":*" in f"{ns}:{kind}:*"), or a dimension /
# current-state field ("|s|", "po|").
_KEY_PIECE = re.compile(rf"^(?:(?:{_KINDS}):|:(?:{_NAMES}|{_KINDS})(?::|$))|:\*$")
_FIELD_PIECE = re.compile(r"\|[rsg]\||^(?:po|pv)\|")
_PREFIX_NAME = re.compile(r"(?:^|_)prefix$")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants (prose may name keys)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _name_of(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def key_formatting(source: str) -> Iterator[tuple[int, str]]:
    """(line, snippet) of every place ``source`` formats a Redis key or hash field name."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if _KEY_PIECE.search(node.value) or _FIELD_PIECE.search(node.value):
                yield node.lineno, node.value
        elif (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.Add)
            and _PREFIX_NAME.search(_name_of(node.left))
        ):  # prefix + name: a key built on the namespace prefix
            yield node.lineno, ast.unparse(node)


def _sources() -> Iterator[Path]:
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            # Tests state the layout literally on purpose: an independent check of the contract.
            if path == OWNER or (
                path.parent.name in ("unit", "integration", "e2e") and path.name.startswith("test_")
            ):
                continue
            yield path


def test_no_module_but_keys_formats_a_key() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {snippet!r}"
        for path in _sources()
        for line, snippet in key_formatting(path.read_text(encoding="utf-8"))
    ]
    assert found == []


def test_the_scan_finds_what_it_looks_for() -> None:
    """The patterns of the scan flag the ways keys were built before keys.py, and only those."""
    flagged = [
        'key = f"{settings.namespace}:offsets"',
        'key = f"{ns}:all"',
        'guard = f"{store.prefix}pin:{token}"',
        'names = [f"d:{start}" for start in starts]',
        'key = store.prefix + "targets"',
        "key = self._prefix + deal_id",
        'n = cur.get(f"po|{stage}", 0)',
        'field = f"ld|s|{source}"',
        'pattern = f"{namespace}:seen:*"',
        'pattern = f"{namespace}:{kind}:*"',
    ]
    for line in flagged:
        assert list(key_formatting(line)), line
    unflagged = [
        'window = "all"',
        'label = "|".join(stated)',
        'ts, _, value = stored.decode().partition("|")',
        'url = f"http://127.0.0.1:{port}"',
        'ns = f"{root}:{n}"',
        'when = f"{day.isoformat()}T12:00:00Z"',
        'def f():\n    """Keys ``<ns>:offsets`` and ``m:<start>``."""',
        'path = prefix / "lua"',
    ]
    for line in unflagged:
        assert not list(key_formatting(line)), line
    assert list(key_formatting('x = f"{a}:{b}:" + prefix')) == []  # the prefix on the right
    # Known limit: f"{kind}:{start}" reads like f"{host}:{port}"; bucket names come from
    # keys.bucket_name, and the layout tests of report.py's reads catch a wrong one.


def test_layout() -> None:
    layout = KeyLayout("kpi")
    assert layout.prefix == "kpi:"
    assert (layout.all, layout.current, layout.offsets, layout.watermark, layout.targets) == (
        "kpi:all",
        "kpi:cur",
        "kpi:offsets",
        "kpi:wm",
        "kpi:targets",
    )
    assert (
        layout.bucket("mo", 1769904000)
        == "kpi:mo:1769904000"
        == layout.key(keys.bucket_name("mo", 1769904000))
    )
    assert layout.bucket_pattern("d") == "kpi:d:*"
    assert layout.entity("D", "42") == "kpi:D:42"
    assert layout.entity_pattern("L") == "kpi:L:*"
    assert (layout.seen("e1"), layout.seen_pattern) == ("kpi:seen:e1", "kpi:seen:*")
    assert layout.dimension_values("s") == "kpi:dv:s"
    assert layout.hubspot_deal("7") == "kpi:hs:D:7"
    assert layout.pin("abc") == "kpi:pin:abc"
    assert layout.everything == "kpi:*"


def test_fields() -> None:
    assert keys.dimension_field("ld", "s", "web|shop") == "ld|s|web|shop"
    assert keys.split_field("ld|s|web|shop") == ("ld", "s", "web|shop")
    assert keys.split_field("ld") is None
    assert keys.split_field("e:qualified") is None
    assert keys.open_deals_field("won") == "po|won"
    assert keys.pipeline_value_field("won") == "pv|won"
    assert {code: dim for dim, code in keys.DIMENSION_CODES.items()} == DIM_CODES


def test_lua_scripts_use_the_same_literals() -> None:
    """apply.lua builds keys from the prefix it is given (ARGV[1]); its literals must be ours."""
    apply = lua_source("apply.lua")
    for name in (keys.ALL, keys.CURRENT, keys.OFFSETS, keys.WATERMARK):
        assert f"P .. '{name}'" in apply, name
    for kind in (*keys.ENTITY_KINDS, keys.SEEN):
        assert f"P .. '{kind}{keys.SEP}'" in apply, kind
    for kind in keys.BUCKET_KINDS:
        assert f"'{kind}{keys.SEP}', CFG.keep.{kind}" in apply, kind
    for code in keys.DIMENSION_CODES.values():
        assert f"'{keys.FIELD_SEP}{code}{keys.FIELD_SEP}'" in apply, code
    records = lua_source("apply_records.lua")
    for field in (keys.OPEN_DEALS, keys.PIPELINE_VALUE):
        assert f"bump(CUR, '{field}{keys.FIELD_SEP}'" in records, field
    assert f"bump(CUR, '{keys.ACTIVE_CUSTOMERS}'" in records
    assert f"P .. '{keys.DIMENSION_VALUES}{keys.SEP}'" in lua_source("apply_dimensions.lua")
