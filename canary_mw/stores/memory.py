"""The embedded in-memory backend: a tiny interpreter for the Redis commands the layout uses.

Interpreting the same commands as Redis (rather than keeping Python objects) means the memory
store cannot drift from the Redis one: one contract test suite covers both, garbage written by
hand behaves the same, and WRONGTYPE errors come back the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .._aio import run_within
from .layout import Command

__all__ = [
    "AsyncMemoryExecutor",
    "CommandError",
    "MemoryBackend",
    "MemoryExecutor",
    "backend_named",
]

Stream = list[tuple[bytes, dict[bytes, bytes]]]
Value = bytes | set[bytes] | dict[bytes, bytes] | Stream | deque[bytes]  # deque: a Redis list
Listener = Callable[[bytes], None]
#: Lua scripts the memory backend runs natively (EVAL), by their text: the function gets the
#: backend, the database, the messages to publish, the keys and the arguments. Registered by
#: the modules that send the scripts (canary_mw.rollout.storage).
NativeScript = Callable[["MemoryBackend", dict[bytes, Any], list[tuple[bytes, bytes]],
                         list[bytes], list[bytes]], object]  # fmt: skip
NATIVE_SCRIPTS: dict[bytes, NativeScript] = {}


class CommandError(Exception):
    """A command failed on its own (the memory twin of redis-py's ResponseError)."""


_WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"


def _b(value: str | bytes | int) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


class MemoryBackend:
    """Numbered databases of strings, sets and hashes, plus pub/sub, safe across threads."""

    def __init__(self) -> None:
        self._dbs: dict[int, dict[bytes, Value]] = {}
        self._lock = threading.Lock()
        self._listeners: dict[bytes, list[Listener]] = {}
        #: Key deadlines (time.monotonic()) per database dict, for EXPIRE / PEXPIRE / SET PX.
        self._deadlines: dict[int, dict[bytes, float]] = {}
        #: No deadline falls before this: execute() skips the scan until then (window keys
        #: pile up deadlines, and request-time lookups run execute() too).
        self._next_deadline = float("inf")

    # -- command interpreter ----------------------------------------------------------
    def execute(self, commands: Sequence[Command]) -> list[object]:
        results: list[object] = []
        published: list[tuple[bytes, bytes]] = []
        with self._lock:
            if time.monotonic() >= self._next_deadline:
                self._expire()
            for db, args in commands:
                name, *rest = args
                handler = self._handler(str(name))
                if handler is None:
                    results.append(CommandError(f"unknown command {name!r}"))
                    continue
                data = self._dbs.setdefault(db or 0, {})
                try:
                    results.append(handler(data, published, *[_b(arg) for arg in rest]))
                except CommandError as exc:
                    results.append(exc)
        for channel, message in published:  # outside the lock: listeners may call back in
            for listener in list(self._listeners.get(channel, ())):
                listener(message)
        return results

    def _handler(self, name: str) -> Any:
        return getattr(self, "_cmd_" + name.lower().replace(".", "_"), None)

    @staticmethod
    def _typed(data: dict[bytes, Value], key: bytes, kind: type[Value], create: bool) -> Any:
        value = data.get(key)
        if value is None:
            if not create:
                return None
            value = data[key] = kind()
        if not isinstance(value, kind):
            raise CommandError(_WRONGTYPE)
        return value

    def _set(self, data: dict[bytes, Value], key: bytes, create: bool = False) -> set[bytes]:
        value: set[bytes] | None = self._typed(data, key, set, create)
        return set() if value is None else value  # not `or`: a new empty set is falsy

    def _hash(
        self, data: dict[bytes, Value], key: bytes, create: bool = False
    ) -> dict[bytes, bytes]:
        value: dict[bytes, bytes] | None = self._typed(data, key, dict, create)
        return {} if value is None else value

    def _cmd_get(self, data: dict[bytes, Value], _: object, key: bytes) -> bytes | None:
        return self._typed(data, key, bytes, False)  # type: ignore[no-any-return]

    def _cmd_set(
        self, data: dict[bytes, Value], _: object, key: bytes, value: bytes, *options: bytes
    ) -> bool:
        data[key] = value
        self._deadlines.get(id(data), {}).pop(key, None)
        if len(options) == 2 and options[0].upper() in (b"PX", b"EX"):
            milliseconds = int(options[1]) * (1 if options[0].upper() == b"PX" else 1000)
            self._cmd_pexpire(data, _, key, str(milliseconds).encode())
        return True

    def _cmd_del(self, data: dict[bytes, Value], _: object, *keys: bytes) -> int:
        for key in keys:
            self._deadlines.get(id(data), {}).pop(key, None)
        return sum(data.pop(key, None) is not None for key in keys)

    def _cmd_incr(self, data: dict[bytes, Value], _: object, key: bytes) -> int:
        current = self._typed(data, key, bytes, False)
        try:
            value = int(current or b"0") + 1
        except ValueError:
            raise CommandError("ERR value is not an integer or out of range") from None
        data[key] = str(value).encode()
        return value

    def _cmd_pexpire(self, data: dict[bytes, Value], _: object, key: bytes, ms: bytes) -> int:
        if key not in data:
            return 0
        deadline = time.monotonic() + int(ms) / 1000
        self._deadlines.setdefault(id(data), {})[key] = deadline
        self._next_deadline = min(self._next_deadline, deadline)
        return 1

    def _cmd_expire(self, data: dict[bytes, Value], _: object, key: bytes, s: bytes) -> int:
        return self._cmd_pexpire(data, _, key, str(int(s) * 1000).encode())

    def _cmd_eval(
        self, data: dict[bytes, Value], published: list[tuple[bytes, bytes]], script: bytes,
        count: bytes, *rest: bytes,
    ) -> object:  # fmt: skip
        native = NATIVE_SCRIPTS.get(script)
        if native is None:
            raise CommandError("NOSCRIPT the memory backend runs only the scripts canary_mw sends")
        keys = int(count)
        return native(self, data, published, list(rest[:keys]), list(rest[keys:]))

    def _expire(self) -> None:
        now = time.monotonic()
        self._next_deadline = float("inf")
        for db in self._dbs.values():
            deadlines = self._deadlines.get(id(db), {})
            for key, at in list(deadlines.items()):
                if at <= now:
                    del deadlines[key]
                    db.pop(key, None)
                else:
                    self._next_deadline = min(self._next_deadline, at)

    def _cmd_sadd(self, data: dict[bytes, Value], _: object, key: bytes, *members: bytes) -> int:
        current = self._set(data, key, create=True)
        before = len(current)
        current.update(members)
        return len(current) - before

    def _cmd_srem(self, data: dict[bytes, Value], _: object, key: bytes, *members: bytes) -> int:
        current = self._set(data, key)
        before = len(current)
        current.difference_update(members)
        if before and not current:
            del data[key]  # Redis deletes empty sets
        return before - len(current)

    def _cmd_smembers(self, data: dict[bytes, Value], _: object, key: bytes) -> set[bytes]:
        return set(self._set(data, key))

    def _cmd_sismember(self, data: dict[bytes, Value], _: object, key: bytes, m: bytes) -> int:
        return int(m in self._set(data, key))

    def _cmd_scard(self, data: dict[bytes, Value], _: object, key: bytes) -> int:
        return len(self._set(data, key))

    def _cmd_hgetall(self, data: dict[bytes, Value], _: object, key: bytes) -> dict[bytes, bytes]:
        return dict(self._hash(data, key))

    def _cmd_hset(self, data: dict[bytes, Value], _: object, key: bytes, *pairs: bytes) -> int:
        current = self._hash(data, key, create=True)
        added = 0
        for field, value in zip(pairs[::2], pairs[1::2], strict=True):
            added += field not in current
            current[field] = value
        return added

    def _cmd_hdel(self, data: dict[bytes, Value], _: object, key: bytes, *fields: bytes) -> int:
        current = self._hash(data, key)
        removed = sum(current.pop(field, None) is not None for field in fields)
        if removed and not current:
            del data[key]  # Redis deletes empty hashes
        return removed

    def _cmd_hincrby(
        self, data: dict[bytes, Value], _: object, key: bytes, field: bytes, amount: bytes
    ) -> int:
        current = self._hash(data, key, create=True)
        try:
            value = int(current.get(field, b"0")) + int(amount)
        except ValueError:
            raise CommandError("ERR hash value is not an integer") from None
        current[field] = str(value).encode()
        return value

    def _cmd_lpush(self, data: dict[bytes, Value], _: object, key: bytes, *values: bytes) -> int:
        current: deque[bytes] = self._typed(data, key, deque, True)
        current.extendleft(values)
        return len(current)

    def _cmd_lrange(
        self, data: dict[bytes, Value], _: object, key: bytes, start: bytes, stop: bytes
    ) -> list[bytes]:
        current: deque[bytes] | None = self._typed(data, key, deque, False)
        items = list(current or ())
        end = int(stop)
        return items[int(start) : None if end == -1 else end + 1]

    def _cmd_ltrim(
        self, data: dict[bytes, Value], _: object, key: bytes, start: bytes, stop: bytes
    ) -> bytes:
        kept = self._cmd_lrange(data, None, key, start, stop)
        if kept:
            data[key] = deque(kept)
        else:
            data.pop(key, None)  # Redis deletes empty lists
        return b"OK"

    def _cmd_xadd(self, data: dict[bytes, Value], _: object, key: bytes, *args: bytes) -> bytes:
        maxlen = None
        if args[0].upper() == b"MAXLEN":
            approximate = args[1] in (b"~", b"=")
            maxlen = int(args[2] if approximate else args[1])
            args = args[3:] if approximate else args[2:]
        entry_id, *pairs = args
        stream: Stream = self._typed(data, key, list, True)
        if entry_id != b"*":
            raise CommandError("ERR only * ids are supported by the memory backend")
        millis = int(time.time() * 1000)
        last = stream[-1][0] if stream else b"0-0"
        last_ms, last_seq = (int(part) for part in last.split(b"-"))
        seq = last_seq + 1 if millis <= last_ms else 0
        new_id = f"{max(millis, last_ms)}-{seq}".encode()
        stream.append((new_id, dict(zip(pairs[::2], pairs[1::2], strict=True))))
        if maxlen is not None and len(stream) > maxlen:
            del stream[: len(stream) - maxlen]
        return new_id

    def _cmd_xrevrange(
        self, data: dict[bytes, Value], _: object, key: bytes, end: bytes, start: bytes,
        *args: bytes,
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:  # fmt: skip
        stream: Stream = self._typed(data, key, list, False) or []
        count = int(args[1]) if args and args[0].upper() == b"COUNT" else len(stream)
        return [
            (entry_id, dict(fields))
            for entry_id, fields in reversed(stream[-count:] if count else [])
        ]

    def _cmd_canary_change(
        self, data: dict[bytes, Value], published: list[tuple[bytes, bytes]], config: bytes,
        audit: bytes, expected: bytes, commands: bytes, fields: bytes, maxlen: bytes,
        channel: bytes, message: bytes, keys: bytes, counted: bytes,
    ) -> list[object] | None:  # fmt: skip
        """Layout.change, natively: the same steps and order as CHANGE_SCRIPT."""
        current = self._hash(data, config).get(b"version")
        try:
            current_version = int(current or b"0")
        except ValueError:
            raise CommandError("ERR hash value is not an integer") from None
        if expected and current_version != int(expected):
            return None
        results = []
        for name, *rest in json.loads(commands):
            results.append(self._handler(name)(data, published, *[_b(arg) for arg in rest]))
        entry = [_b(item) for item in json.loads(fields)]
        if counted:
            changed = sum(result for result in results if isinstance(result, int))
            if changed == 0:
                return [current_version, results]
            entry += [b"changed", str(changed).encode()]
        version = self._cmd_hincrby(data, published, config, b"version", b"1")
        self._cmd_xadd(data, published, audit, b"MAXLEN", b"~", maxlen, b"*",
                       b"version", str(version).encode(), *entry)  # fmt: skip
        self._cmd_publish(data, published, channel, message)
        return [version, results]

    def _cmd_publish(
        self, _: object, published: list[tuple[bytes, bytes]], channel: bytes, message: bytes
    ) -> int:
        published.append((channel, message))
        return len(self._listeners.get(channel, ()))

    # -- pub/sub ----------------------------------------------------------------------
    def listen(self, channel: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener(message)`` for every publish; returns the function that stops it."""
        key = channel.encode()
        with self._lock:
            self._listeners.setdefault(key, []).append(listener)

        def stop() -> None:
            with self._lock:
                listeners = self._listeners.get(key, [])
                if listener in listeners:
                    listeners.remove(listener)

        return stop


_NAMED: dict[str, MemoryBackend] = {}
_NAMED_LOCK = threading.Lock()


def backend_named(name: str) -> MemoryBackend:
    """``memory://NAME`` URLs share one backend per name within the process; ``memory://``
    (no name) gets a private one."""
    if not name:
        return MemoryBackend()
    with _NAMED_LOCK:
        return _NAMED.setdefault(name, MemoryBackend())


Notice = tuple[str, bytes]  # ("subscribe" | "message", payload)


class MemorySubscription:
    """Blocking subscription for threads (the sync engine)."""

    def __init__(self, backend: MemoryBackend, channel: str):
        self._queue: queue.SimpleQueue[Notice] = queue.SimpleQueue()
        self._queue.put(("subscribe", b""))
        self._stop = backend.listen(channel, lambda message: self._queue.put(("message", message)))

    def get(self, timeout: float) -> Notice | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._stop()


class AsyncMemorySubscription:
    """Subscription for an event loop; publishers may run on any thread."""

    def __init__(self, backend: MemoryBackend, channel: str):
        loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Notice] = asyncio.Queue()
        self._queue.put_nowait(("subscribe", b""))

        def deliver(message: bytes) -> None:
            # RuntimeError: the loop is closed, so nobody is listening any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._queue.put_nowait, ("message", message))

        self._stop = backend.listen(channel, deliver)

    async def get(self, timeout: float) -> Notice | None:
        try:
            return await run_within(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def close(self) -> None:
        self._stop()


# -- the executors the stores run commands through (store.py: SyncExecutor, AsyncExecutor) --
class MemoryExecutor:
    def __init__(self, backend: MemoryBackend):
        self.backend = backend

    def run(self, commands: Sequence[Command], *, fast: bool = False) -> list[object]:
        return self.backend.execute(commands)

    def warm(self, dbs: Iterable[int | None] = (None,)) -> None:
        pass

    def subscribe(self, channel: str) -> MemorySubscription:
        return MemorySubscription(self.backend, channel)

    def close(self) -> None:
        pass


class AsyncMemoryExecutor:
    def __init__(self, backend: MemoryBackend):
        self.backend = backend

    async def run(self, commands: Sequence[Command], *, fast: bool = False) -> list[object]:
        return self.backend.execute(commands)

    async def warm(self, dbs: Iterable[int | None] = (None,)) -> None:
        pass

    async def subscribe(self, channel: str) -> AsyncMemorySubscription:
        return AsyncMemorySubscription(self.backend, channel)

    async def close(self) -> None:
        pass
