"""The Lua apply script dispatches on the event type codes declared with the models."""

from __future__ import annotations

import re
from importlib import resources

from kpi_state.event_models import EVENT_MODELS, TYPE_CODES


def lua_source(name: str) -> str:
    return resources.files("kpi_state").joinpath(f"lua/{name}").read_text(encoding="utf-8")


# A handler is registered as ``H.<code> = ...`` (lua/apply_handlers.lua).
_HANDLER = re.compile(r"^H\.([A-Z]{2}) = ", re.M)
# A code compared in Lua: ``f.y == 'DW'``.
_CODE_TEST = re.compile(r"f\.y\s*[=~]=\s*'([A-Z]{2})'")


def test_every_event_type_has_one_lua_handler_and_no_other() -> None:
    handlers = _HANDLER.findall(lua_source("apply_handlers.lua"))
    assert sorted(handlers) == sorted(TYPE_CODES.values())
    assert len(set(handlers)) == len(handlers)


def test_codes_are_distinct_and_declared_on_every_model() -> None:
    assert len(set(TYPE_CODES.values())) == len(EVENT_MODELS)


def test_codes_the_lua_parts_compare_are_declared() -> None:
    for name in ("apply.lua", "apply_records.lua", "apply_dimensions.lua", "apply_run.lua"):
        assert set(_CODE_TEST.findall(lua_source(name))) <= set(TYPE_CODES.values()), name
