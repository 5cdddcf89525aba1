"""TCP probe: up when a connect to address:port completes within the timeout.

Owns the lean connect path (thousands of these run each second): no streams, no data
sent, and the socket is reset and closed the moment the handshake completes. `check()`
is one attempt (a non-blocking socket, connect_ex, one writer callback and one timer on
the event loop). `Connector` is what the prober uses for many: every connect in flight
sits in one epoll set that the event loop watches as a single reader, completions are
handled in batches (of at most SLICE, so heartbeats never wait long behind probes) and
timeouts swept every few ms from one timer, so a probe costs no task, future, timer or
object of its own beyond a tuple and its Result. The texts of the usual outcomes are
built once per target.
"""

from __future__ import annotations

import _socket as _socket_module
import asyncio
import errno
import os
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from hapair.config.checks import TcpProbe
from hapair.probes import Result, describe_error, endpoint, failed

# SO_LINGER on with 0 s: close() sends RST, so a probe leaves no TIME_WAIT socket behind
# (at 10,000 probes/s those would exhaust the ephemeral ports towards one real server).
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)
_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
_SOL_SOCKET, _SO_ERROR, _SO_LINGER = socket.SOL_SOCKET, socket.SO_ERROR, socket.SO_LINGER
_IN_PROGRESS = errno.EINPROGRESS

_EPOLLOUT = select.EPOLLOUT
_socket = _socket_module.socket  # the C type: no Python-level __init__ and close()
_clock = time.perf_counter

Prepared = tuple[tuple[str, int], int, str]  # sockaddr, family, the prefix of every reason
_targets: dict[tuple[IPv4Address | IPv6Address, int], Prepared] = {}  # bounded by targets
_reasons: dict[tuple[str, str], str] = {}  # (prefix, outcome) -> reason, for common outcomes


def prepare(address: IPv4Address | IPv6Address, port: int) -> Prepared:
    """What `Connector.start()` needs to know of a target, computed once."""
    return _target(address, port)


def _target(address: IPv4Address | IPv6Address, port: int) -> Prepared:
    key = (address, port)
    known = _targets.get(key)
    if known is None:
        if len(_targets) > 100_000:  # a config churning through addresses: start over
            _targets.clear()
            _reasons.clear()
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        known = _targets[key] = (
            (str(address), port),
            family,
            f"TCP connect to {endpoint(address, port)}: ",
        )
    return known


def _reason(prefix: str, outcome: str) -> str:
    key = (prefix, outcome)
    text = _reasons.get(key)
    if text is None:
        text = _reasons[key] = prefix + outcome
    return text


def _wake(done: asyncio.Future[bool], connected: bool) -> None:
    if not done.done():
        done.set_result(connected)


async def check(probe: TcpProbe, address: IPv4Address | IPv6Address, port: int) -> Result:
    started = time.perf_counter()
    sockaddr, family, prefix = _target(address, port)
    sock: socket.socket | None = None
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + probe.timeout  # the timeout bounds the whole attempt
        sock = socket.socket(family, _STREAM)
        err = sock.connect_ex(sockaddr)
        if err == _IN_PROGRESS:
            fd = sock.fileno()
            done: asyncio.Future[bool] = loop.create_future()
            loop.add_writer(fd, _wake, done, True)
            timer = loop.call_at(deadline, _wake, done, False)
            try:
                answered = await done
            finally:
                timer.cancel()
                loop.remove_writer(fd)
            err = sock.getsockopt(_SOL_SOCKET, _SO_ERROR) if answered else -1
        if err == 0:
            sock.setsockopt(_SOL_SOCKET, _SO_LINGER, _RESET_ON_CLOSE)
            ok, reason = True, _reason(prefix, "connected")
        elif err == -1:
            ok, reason = False, _reason(prefix, f"no answer within {probe.timeout:g}s")
        else:
            ok, reason = False, _reason(prefix, describe_error(OSError(err, os.strerror(err))))
    except Exception as exc:
        return failed(exc, prefix + describe_error(exc), time.perf_counter() - started)
    finally:
        if sock is not None:
            sock.close()
    return Result(ok, reason, time.perf_counter() - started)


SWEEP = 0.01  # s: timeouts are enforced this late at most
# s: how long one callback works on probes before it lets the event loop run the rest
# (heartbeats, the control socket); what is left is taken up on the loop's next turn.
# The clock is read every few dozen probes, so a slow machine overruns it by that many.
SLICE = 0.005
SLICE_EVERY = 16  # probes started or timed out between two looks at the clock
_POLL_MAX = 64  # completions taken per epoll_wait: the slice is checked between them

# A connect in flight: socket, reason prefix, start (perf_counter), timeout, callback.
_Flight = tuple[_socket, str, float, float, Callable[[Result], None]]


class Connector:
    """Many TCP probes in flight on one epoll set, watched by the event loop as one fd.

    `start()` begins a connect and returns at once; `done(Result)` is called from the
    event loop when it completes, fails or times out (never from within `start()`).
    `after_batch()`, if given, is called once after each batch of completions (the
    prober starts the probes that waited for those slots). A batch ends after SLICE:
    the epoll set is level-triggered, so completions not taken yet wake the loop again.

    Deadlines sit in one FIFO per timeout value: the clock only moves forward, so each
    FIFO is already in deadline order and a start costs an append, not a heap push.
    """

    def __init__(self, after_batch: Callable[[], None] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._epoll = select.epoll()
        self._flying: dict[int, _Flight] = {}
        self._deadlines: dict[float, deque[tuple[float, int, _Flight]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")  # perf_counter time of the next sweep
        self._register = self._epoll.register
        self._after_batch = after_batch
        self._loop.add_reader(self._epoll.fileno(), self._ready)

    def __len__(self) -> int:
        return len(self._flying)

    def start(self, target: Prepared, timeout: float, done: Callable[[Result], None]) -> None:
        """Connect to a target from `prepare()`; `done(result)` follows within `timeout`
        (+ SWEEP)."""
        started = _clock()
        sockaddr, family, prefix = target
        sock = None
        try:
            sock = _socket(family, _STREAM)
            err = sock.connect_ex(sockaddr)
            if err == _IN_PROGRESS:
                fd = sock.fileno()
                self._register(fd, _EPOLLOUT)
                flight = self._flying[fd] = (sock, prefix, started, timeout, done)
                deadline = started + timeout
                fifo = self._deadlines.get(timeout)
                if fifo is None:
                    fifo = self._deadlines[timeout] = deque()
                fifo.append((deadline, fd, flight))
                if deadline + SWEEP < self._timer_at:
                    self._arm(deadline + SWEEP, started)
                return
            result = _outcome(sock, err, prefix, started)
        except Exception as exc:  # EMFILE from socket(): no verdict (probes.own_fault)
            result = failed(exc, prefix + describe_error(exc), _clock() - started)
            if sock is not None:
                sock.close()
        self._loop.call_soon(done, result)

    def close(self) -> None:
        """Drop every connect in flight (their `done` is not called) and the epoll set."""
        if self._timer is not None:
            self._timer.cancel()
        self._loop.remove_reader(self._epoll.fileno())
        for flight in self._flying.values():
            flight[0].close()
        self._flying.clear()
        self._deadlines.clear()
        self._epoll.close()

    def _ready(self) -> None:
        flying, poll = self._flying, self._epoll.poll
        end = _clock() + SLICE
        while True:
            events = poll(0, _POLL_MAX)
            for fd, mask in events:
                flight = flying.pop(fd, None)
                if flight is None:
                    continue
                sock, prefix, started, _, done = flight
                try:
                    # Writable with no error or hang-up: connected (no getsockopt needed).
                    err = 0 if mask == _EPOLLOUT else sock.getsockopt(_SOL_SOCKET, _SO_ERROR)
                    result = _outcome(sock, err, prefix, started)
                except Exception as exc:  # closing the socket removes it from the epoll set
                    sock.close()
                    result = Result(False, prefix + describe_error(exc), 0.0)
                done(result)
            if len(events) < _POLL_MAX or _clock() >= end:
                break
        if self._after_batch is not None:
            self._after_batch()

    def _arm(self, when: float, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_later(max(0.0, when - now), self._sweep)

    def _sweep(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        now = _clock()
        end = now + SLICE
        flying = self._flying
        expired = 0
        first = float("inf")
        out_of_time = False  # then the rest of this sweep runs on the loop's next turn
        for fifo in self._deadlines.values():
            while fifo and fifo[0][0] <= now and not out_of_time:
                _, fd, flight = fifo.popleft()
                if flying.get(fd) is not flight:
                    continue  # answered in time (the fd may be another connect's now)
                del flying[fd]
                done = flight[4]
                done(_expired(flight, now))
                expired += 1
                if not expired % SLICE_EVERY:
                    out_of_time = _clock() >= end
            # Connects already answered need no sweep: without this, every batch of
            # starts would wake the loop once more at its deadline, for nothing.
            while fifo and flying.get(fifo[0][1]) is not fifo[0][2]:
                fifo.popleft()
            if fifo and fifo[0][0] < first:
                first = fifo[0][0]
        if first <= now:
            self._arm(now, now)
        elif first < float("inf"):
            self._arm(first + SWEEP, now)
        if expired and self._after_batch is not None:
            self._after_batch()


def _expired(flight: _Flight, now: float) -> Result:
    """The Result of a connect past its deadline; closes the socket. One that did finish
    and only waited for a busy event loop to look (the epoll set holds it) is what it
    was: down must mean the server did not answer, not that the director was busy."""
    sock, prefix, started, timeout, _ = flight
    try:
        err = sock.getsockopt(_SOL_SOCKET, _SO_ERROR)
        if err == 0:
            sock.getpeername()  # ENOTCONN: the handshake is still waiting for an answer
        return _outcome(sock, err, prefix, started)
    except OSError:
        sock.close()
        return Result(False, _reason(prefix, f"no answer within {timeout:g}s"), now - started)


def _outcome(sock: _socket, err: int, prefix: str, started: float) -> Result:
    """The Result of a connect that ended with `err` (0: connected); closes the socket."""
    if err == 0:
        sock.setsockopt(_SOL_SOCKET, _SO_LINGER, _RESET_ON_CLOSE)
        sock.close()
        return Result(True, _reason(prefix, "connected"), _clock() - started)
    sock.close()
    reason = _reason(prefix, describe_error(OSError(err, os.strerror(err))))
    return Result(False, reason, _clock() - started)
