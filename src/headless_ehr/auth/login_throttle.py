"""Failed sign-ins on the login page, counted per username and per source address.

Past the bound, the login form answers 429 without checking the password (right or
wrong: a guesser learns nothing, and Argon2's CPU is not spent on them) until the
window ends. The counters are per node, in memory (the `limits` library's fixed
windows): N nodes allow N times the bound. A username bound also lets anyone who
knows a username lock it out for a window; the address bound is looser, so one
address guessing many usernames is slowed as well.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import FixedWindowRateLimiter

WINDOW_MINUTES = 15
PER_USERNAME = 10  # failed sign-ins for one username in a window
PER_ADDRESS = 200  # from one address (a hospital may reach us through one NAT address)


class LoginThrottle:
    def __init__(self) -> None:
        self.limiter = FixedWindowRateLimiter(MemoryStorage())
        self.items = {
            "username": RateLimitItemPerMinute(PER_USERNAME, WINDOW_MINUTES),
            "address": RateLimitItemPerMinute(PER_ADDRESS, WINDOW_MINUTES),
        }

    async def wait(self, username: str, address: str) -> int | None:
        """Seconds until a sign-in may be tried again; None when it may be now."""
        waits = []
        for kind, key in (("username", username), ("address", address)):
            item = self.items[kind]
            if not await self.limiter.test(item, "login", kind, key):
                stats = await self.limiter.get_window_stats(item, "login", kind, key)
                waits.append(max(1, math.ceil(stats.reset_time - time.time())))
        return max(waits) if waits else None

    async def failed(self, username: str, address: str) -> None:
        for kind, key in (("username", username), ("address", address)):
            await self.limiter.hit(self.items[kind], "login", kind, key)
