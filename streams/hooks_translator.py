"""A stored webhook envelope (``kpi_app.hooks_web``) -> contract-v2 events and dead letters.

Used by the faust agent of ``streams.hooks_worker``; no broker here, so it is tested directly on
the real Redis. HubSpot's record state (``connectors.hubspot.DealState``) lives in Redis
under ``KeyLayout.hubspot_deal`` (kpi_state/keys.py), each attribute as ``<occurredAt ms>|<value>``
(a value encoding private to ``MERGE_NEWER``, not a key or field name); a merge keeps, per
attribute, the value with the latest ``occurredAt`` (one atomic script call), so a retry or a
redelivery merges nothing new and translates to the same events (the same ids).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog

from connectors.common import StageMap, Translation, owner_map
from connectors.hubspot import DealState, HubSpotMapper, parse_event
from connectors.pipedrive import PipedriveMapper
from kpi_state.keys import KeyLayout
from kpi_state.settings import Settings

log = structlog.get_logger(__name__)

MERGE_NEWER = """
for i = 2, #ARGV, 3 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local cur_ts = -1
  if cur then cur_ts = tonumber(string.match(cur, '^(%d+)|')) or -1 end
  if tonumber(ARGV[i + 1]) >= cur_ts then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1] .. '|' .. ARGV[i + 2])
  end
end
if #ARGV > 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return redis.call('HGETALL', KEYS[1])
"""


@dataclass(frozen=True)
class Letter:
    """An item that became no event: the bytes that stand for it, and why."""

    value: bytes
    reason: str
    field: str | None
    detail: str
    index: int | None


@dataclass
class Translated:
    vendor: str = "unknown"  # "hubspot", "pipedrive", or "unknown" (not an envelope)
    events: list[dict[str, Any]] = field(default_factory=list)
    letters: list[Letter] = field(default_factory=list)


class HubSpotStates:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._layout = KeyLayout(settings.namespace)
        self._ttl = settings.entity_retention_seconds
        self._script = redis.register_script(MERGE_NEWER)

    async def merge(self, deal: str, updates: Mapping[str, str], occurred_ms: int) -> DealState:
        args: list[str | int] = [self._ttl]
        for name, value in updates.items():
            args += [name, occurred_ms, value]
        flat = await self._script(keys=[self._layout.hubspot_deal(deal)], args=args)
        state: dict[str, tuple[str, int]] = {}
        for name, stored in zip(flat[::2], flat[1::2], strict=True):
            ts, _, value = stored.decode().partition("|")
            state[name.decode()] = (value, int(ts))
        return state


class HookTranslator:
    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        stages = settings.stage_names
        self.hubspot = HubSpotMapper(
            StageMap.parse(settings.hubspot_stages, stages, "KPI_HUBSPOT_STAGES"),
            owner_map(settings.hubspot_owners, "KPI_HUBSPOT_OWNERS"),
            stages[0],
        )
        self.pipedrive = PipedriveMapper(
            StageMap.parse(settings.pipedrive_stages, stages, "KPI_PIPEDRIVE_STAGES"),
            owner_map(settings.pipedrive_owners, "KPI_PIPEDRIVE_OWNERS"),
        )
        self.states = HubSpotStates(redis, settings)

    async def translate(self, raw: bytes | None) -> Translated:
        """Raises only for Redis errors (the caller retries); anything else is a dead letter."""
        out = Translated()
        try:
            wrapped = orjson.loads(raw or b"")
        except orjson.JSONDecodeError as exc:
            out.letters.append(Letter(raw or b"", "invalid_json", None, str(exc), None))
            return out
        if not isinstance(wrapped, dict) or wrapped.get("vendor") not in ("hubspot", "pipedrive"):
            out.letters.append(
                Letter(raw or b"", "invalid_payload", "vendor", "not a webhook envelope", None)
            )
            return out
        body = wrapped.get("body")
        out.vendor = wrapped["vendor"]
        if wrapped["vendor"] == "pipedrive":
            self._add(out, self._guard(lambda: self.pipedrive.translate(body)), orjson.dumps(body), None)
            return out
        if not isinstance(body, list):
            out.letters.append(Letter(orjson.dumps(body), "invalid_payload", None, "not a JSON array", None))
            return out
        for index, item in enumerate(body):
            self._add(out, await self._hubspot_item(item), orjson.dumps(item), index)
        return out

    async def _hubspot_item(self, item: object) -> Translation:
        event = parse_event(item)
        if isinstance(event, Translation):
            return event
        deal = self.hubspot.deal_key(event)
        state: DealState = {}
        if deal is not None:
            # Redis errors propagate: the caller retries the whole message (merges are idempotent).
            state = await self.states.merge(deal, self.hubspot.state_updates(event), event.occurredAt)
        return self._guard(lambda: self.hubspot.translate(event, state))

    @staticmethod
    def _guard(translate: Any) -> Translation:
        try:
            result: Translation = translate()
            return result
        except Exception as exc:  # an input nobody foresaw: a dead letter, never a stopped worker
            log.exception("hooks.unprocessable", error=repr(exc))
            return Translation.refuse("unprocessable", None, type(exc).__name__)

    @staticmethod
    def _add(out: Translated, result: Translation, value: bytes, index: int | None) -> None:
        if result.reason is not None:
            out.letters.append(Letter(value, result.reason, result.field_name, result.detail, index))
        else:
            out.events.extend(result.events)
