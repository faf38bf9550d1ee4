"""Background upkeep: mark instances without heartbeats down, forget long-down instances, compact the
change log. Database outages are logged and waited out; the loop never dies."""

from __future__ import annotations

import asyncio
import logging
import time

from services.common.errors import ServiceError
from services.model_registry.registry import Registry

log = logging.getLogger(__name__)

# Purging and compaction are cheap but need not run at heartbeat-expiry frequency.
HOUSEKEEPING_SECONDS = 60.0


async def maintain(
    registry: Registry,
    expiry_interval: float,
    down_retention: float,
    change_retention: float,
) -> None:
    last_housekeeping = time.monotonic()
    failing = False
    while True:
        await asyncio.sleep(expiry_interval)
        try:
            await registry.expire_instances()
            if time.monotonic() - last_housekeeping >= HOUSEKEEPING_SECONDS:
                last_housekeeping = time.monotonic()
                purged = await registry.purge_instances(down_retention)
                compacted = await registry.compact(change_retention)
                if purged or compacted:
                    log.info(
                        "housekeeping: %d instances forgotten, %d changes compacted", len(purged), compacted
                    )
            if failing:
                log.info("maintenance: database reachable again")
            failing = False
        except ServiceError as error:
            if not failing:
                log.warning("maintenance: %s", error.message)
            failing = True
