"""Customer accounts and their API keys, in Redis.

A key is shown once, when the account is created; Redis keeps only its sha256 (keys are 256
random bits, so a plain hash cannot be reversed or guessed). task_service authenticates every
customer call with `authenticate`, and `gradients accounts …` manages accounts directly in the
validator's Redis (an operator tool: no RPC exposes account management).

Keys (`<ns>` = GRADIENTS_NAMESPACE):
- `<ns>:account:<name>`            hash: name, key_hash, max_concurrent_tasks, tasks_per_hour, created_at, revoked
- `<ns>:account-index`             set of account names
- `<ns>:account-key:<sha256(key)>` the account name of a key
- `<ns>:account-tasks:<name>`      set of the account's task ids (ownership, listing, quotas)
- `<ns>:account-created:<name>`    sorted set task id -> creation time (the hourly quota)
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from gradients.runtime.store import Store

KEY_PREFIX = "gm_"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
HOUR_S = 3600.0


class AccountError(ValueError):
    """An account operation that cannot be done (bad name, exists, unknown)."""


@dataclass(frozen=True)
class Account:
    name: str
    max_concurrent_tasks: int = 0  # 0 = no limit
    tasks_per_hour: int = 0  # 0 = no limit
    created_at: float = 0.0
    revoked: bool = False


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def bearer_key(authorization: str) -> str:
    """The key of an `authorization: Bearer <key>` value ("" when it is not one)."""
    scheme, _, value = authorization.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


@dataclass(frozen=True)
class QuotaDecision:
    allowed: bool
    reason: str = ""
    retry_after_s: float = 0.0


def check_quota(account: Account, live_tasks: int, created_times: list[float], now: float) -> QuotaDecision:
    """May `account` create one more task now? Pure: the caller reads the counts.

    live_tasks: the account's tasks not yet SCORED/FAILED/CANCELLED; created_times: creation
    times of its tasks (any order). The hourly quota is a sliding window of one hour.
    """
    if account.max_concurrent_tasks and live_tasks >= account.max_concurrent_tasks:
        return QuotaDecision(
            False,
            f"account {account.name} has {live_tasks} tasks running, its limit is "
            f"{account.max_concurrent_tasks}; retry when one of them ends",
        )
    if account.tasks_per_hour:
        recent = sorted(t for t in created_times if now - t < HOUR_S)
        if len(recent) >= account.tasks_per_hour:
            # The window frees a slot when the oldest task in it is an hour old.
            wait = recent[len(recent) - account.tasks_per_hour] + HOUR_S - now
            return QuotaDecision(
                False,
                f"account {account.name} created {len(recent)} tasks in the last hour, its "
                f"limit is {account.tasks_per_hour}; retry in {max(wait, 1.0):.0f} s",
                max(wait, 1.0),
            )
    return QuotaDecision(True)


class AccountStore:
    def __init__(self, store: Store):
        self.store = store

    def account_key(self, name: str) -> str:
        return self.store.key("account", name)

    @property
    def index_key(self) -> str:
        return self.store.key("account-index")

    def api_key_key(self, hashed: str) -> str:
        return self.store.key("account-key", hashed)

    def tasks_key(self, name: str) -> str:
        return self.store.key("account-tasks", name)

    def created_key(self, name: str) -> str:
        return self.store.key("account-created", name)

    async def create(self, name: str, max_concurrent_tasks: int = 0, tasks_per_hour: int = 0) -> tuple[Account, str]:
        """A new account and its API key (the only time the key exists in clear)."""
        if not NAME_PATTERN.match(name):
            raise AccountError(
                "an account name is 1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
            )
        if max_concurrent_tasks < 0 or tasks_per_hour < 0:
            raise AccountError("quotas must be >= 0 (0 = no limit)")
        api_key = new_api_key()
        hashed = key_hash(api_key)
        account = Account(name, max_concurrent_tasks, tasks_per_hour, time.time())
        # HSETNX on the name makes two concurrent creates of one name produce one account.
        if not await self.store.redis.hsetnx(self.account_key(name), "name", name):
            raise AccountError(f"account {name} already exists")
        async with self.store.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.account_key(name),
                mapping={
                    "key_hash": hashed,
                    "max_concurrent_tasks": max_concurrent_tasks,
                    "tasks_per_hour": tasks_per_hour,
                    "created_at": account.created_at,
                    "revoked": 0,
                },
            )
            pipe.sadd(self.index_key, name)
            pipe.set(self.api_key_key(hashed), name)
            await pipe.execute()
        return account, api_key

    async def get(self, name: str) -> Account | None:
        raw = await self.store.redis.hgetall(self.account_key(name))
        if not raw or b"key_hash" not in raw:
            return None
        return Account(
            name=raw[b"name"].decode(),
            max_concurrent_tasks=int(raw.get(b"max_concurrent_tasks", b"0")),
            tasks_per_hour=int(raw.get(b"tasks_per_hour", b"0")),
            created_at=float(raw.get(b"created_at", b"0")),
            revoked=raw.get(b"revoked", b"0") == b"1",
        )

    async def list(self) -> list[Account]:
        names = sorted(n.decode() for n in await self.store.redis.smembers(self.index_key))
        accounts = [await self.get(n) for n in names]
        return [a for a in accounts if a is not None]

    async def revoke(self, name: str) -> Account:
        account = await self.get(name)
        if account is None:
            raise AccountError(f"no account named {name}")
        hashed = await self.store.redis.hget(self.account_key(name), "key_hash")
        async with self.store.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.account_key(name), "revoked", 1)
            if hashed:
                pipe.delete(self.api_key_key(hashed.decode()))
            await pipe.execute()
        return Account(account.name, account.max_concurrent_tasks, account.tasks_per_hour, account.created_at, True)

    async def rotate_key(self, name: str) -> str:
        """A new key for an existing account (the old one stops working); un-revokes it."""
        account = await self.get(name)
        if account is None:
            raise AccountError(f"no account named {name}")
        old = await self.store.redis.hget(self.account_key(name), "key_hash")
        api_key = new_api_key()
        hashed = key_hash(api_key)
        async with self.store.redis.pipeline(transaction=True) as pipe:
            if old:
                pipe.delete(self.api_key_key(old.decode()))
            pipe.hset(self.account_key(name), mapping={"key_hash": hashed, "revoked": 0})
            pipe.set(self.api_key_key(hashed), name)
            await pipe.execute()
        return api_key

    async def ensure(self, name: str) -> str:
        """A usable key for `name`: the account is created, or its key rotated (local meshes)."""
        try:
            return (await self.create(name))[1]
        except AccountError:
            return await self.rotate_key(name)

    async def authenticate(self, api_key: str) -> Account | None:
        """The live account of `api_key`; None for an empty, unknown or revoked key."""
        if not api_key or len(api_key) > 256:
            return None
        hashed = key_hash(api_key)
        name = await self.store.redis.get(self.api_key_key(hashed))
        if name is None:
            return None
        account = await self.get(name.decode())
        if account is None or account.revoked:
            return None
        stored = await self.store.redis.hget(self.account_key(account.name), "key_hash")
        # Constant-time compare: the index lookup found it, this guards a stale index entry.
        if stored is None or not hmac.compare_digest(stored.decode(), hashed):
            return None
        return account

    async def owns(self, name: str, task_id: str) -> bool:
        return bool(await self.store.redis.sismember(self.tasks_key(name), task_id))

    async def task_ids(self, name: str) -> list[str]:
        return sorted(m.decode() for m in await self.store.redis.smembers(self.tasks_key(name)))
