"""This node's runner of asynchronous requests (bulk/async_jobs.py): claims open ones,
any node's, one at a time, keeps the lease alive while one runs, and sweeps expired ones.

Running a request is the REST layer's (rest/asynchronous.py replays it through the FHIR
endpoint); it is handed in, so this layer never imports the one above it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import asyncpg

from . import async_jobs
from .async_jobs import AsyncRequest
from .job_worker import JobWorker

log = logging.getLogger("headless_ehr.bulk.async")

Execute = Callable[[AsyncRequest], Awaitable[None]]


class AsyncWorker(JobWorker[AsyncRequest]):
    what = "async requests"
    lease_seconds = async_jobs.LEASE_SECONDS

    def __init__(self, pool: asyncpg.Pool, execute: Execute) -> None:
        super().__init__(pool, log)
        self.execute = execute

    async def claim(self) -> AsyncRequest | None:
        return await async_jobs.claim(self.pool)

    async def run(self, claim: AsyncRequest) -> None:
        await self.execute(claim)

    async def renew(self, claim: AsyncRequest) -> bool:
        return await async_jobs.renew(self.pool, claim)

    async def release(self, claim: AsyncRequest) -> None:
        await async_jobs.release(self.pool, claim)

    async def sweep(self) -> None:
        await async_jobs.expired(self.pool)
