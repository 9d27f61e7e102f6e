"""Where targets live: one key (``KeyLayout.targets``) holding the whole set as a JSON list, replaced
atomically (one SET), so every process reads the same set and a load is all or nothing."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from kpi_state.store import KpiStore
from kpi_state.targets import TARGET_LIST, Target


class TargetStore:
    def __init__(self, store: KpiStore) -> None:
        self._redis = store.redis
        self.key = store.layout.targets

    async def replace(self, targets: Sequence[Target]) -> None:
        """Replace the whole set (validated before: see targets.validate_targets)."""
        await self._redis.set(self.key, orjson.dumps([t.model_dump() for t in targets]))

    async def load(self) -> list[Target]:
        raw = await self._redis.get(self.key)
        if raw is None:
            return []
        return TARGET_LIST.validate_json(raw)
