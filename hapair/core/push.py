"""The signature of a request between the two directors of a pair (a config pushed to
the peer, or its version asked for) and of its reply.

The request's header is an HMAC-SHA256, with the pair's heartbeat key, over who sends
it, to whom, when, a fresh nonce, the path and the body's hash: a push recorded on the
wire cannot be replayed (the receiver keeps the nonces of its time window), reflected
back to its sender (the receiver must be the one named) or altered. The reply is
signed over the request's nonce, its status and its body's hash, so that no one on
the path can answer in the peer's place. Pure: the caller gives the time and the
nonce.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import OrderedDict
from dataclasses import dataclass

HEADER = "X-Hapair-Push"
REPLY_HEADER = "X-Hapair-Push-Reply"
WINDOW = 30.0  # s a request is good for, either side of the receiver's clock (NTP)
MAX_NONCES = 4096  # requests kept per window; more at once are refused, not forgotten
MAX_HEADER = 256
_FIELDS = ("from", "to", "time", "nonce", "mac")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_NONCE = re.compile(r"[0-9a-f]{32}")
_MAC = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"[0-9]{1,12}(\.[0-9]{1,6})?")


class PushRefused(Exception):
    """A request that is not the peer's own: the message says why (for the log and the
    sender; it gives nothing away that the request did not hold)."""


@dataclass(frozen=True, slots=True)
class Signed:
    sender: str
    receiver: str
    time: float
    nonce: str
    mac: str
    time_text: str


def _mac(key: bytes, *parts: str | bytes) -> str:
    message = b"\n".join(p.encode() if isinstance(p, str) else p for p in parts)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _request_mac(
    key: bytes, sender: str, receiver: str, when: str, nonce: str, path: str, body: bytes
) -> str:
    return _mac(
        key, b"hapair-push-v1", sender, receiver, when, nonce, path, hashlib.sha256(body).digest()
    )


def sign(
    key: bytes, sender: str, receiver: str, path: str, body: bytes, now: float, nonce: str
) -> str:
    """The header value of a request from `sender` to `receiver` (nonce: 32 hex digits)."""
    when = f"{now:.3f}"
    mac = _request_mac(key, sender, receiver, when, nonce, path, body)
    return f"v1 from={sender} to={receiver} time={when} nonce={nonce} mac={mac}"


def parse(header: str) -> Signed:
    """A request's header, or PushRefused when it is not one."""
    if len(header) > MAX_HEADER:
        raise PushRefused("the signature header is too long")
    words = header.split(" ")
    if words[0] != "v1" or len(words) != 1 + len(_FIELDS):
        raise PushRefused("not a hapair v1 signature")
    fields: dict[str, str] = {}
    for word, name in zip(words[1:], _FIELDS, strict=True):
        key, sep, value = word.partition("=")
        if key != name or not sep:
            raise PushRefused(f"the signature lacks {name}=")
        fields[name] = value
    if not (_NAME.fullmatch(fields["from"]) and _NAME.fullmatch(fields["to"])):
        raise PushRefused("the signature's names are not director names")
    if not (_NONCE.fullmatch(fields["nonce"]) and _MAC.fullmatch(fields["mac"])):
        raise PushRefused("the signature's nonce or mac is malformed")
    if not _TIME.fullmatch(fields["time"]):
        raise PushRefused("the signature's time is malformed")
    return Signed(
        fields["from"],
        fields["to"],
        float(fields["time"]),
        fields["nonce"],
        fields["mac"],
        fields["time"],
    )


class ReplayGuard:
    """The receiver's side: checks a request's signature and remembers its nonce for as
    long as its time is within the window, so that each request is taken once."""

    def __init__(self, window: float = WINDOW, most: int = MAX_NONCES) -> None:
        self.window = window
        self.most = most
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce -> expiry, in order

    def check(
        self, key: bytes, header: str, receiver: str, peer: str, path: str, body: bytes, now: float
    ) -> Signed:
        """The request's signature if it is `peer`'s to `receiver`, fresh, new and
        unaltered; PushRefused otherwise (nothing is remembered of a refused one)."""
        signed = parse(header)
        if signed.receiver != receiver or signed.sender != peer:
            raise PushRefused(
                f"signed from {signed.sender} to {signed.receiver}; this is {receiver}, "
                f"its peer {peer}"
            )
        if abs(now - signed.time) > self.window:
            raise PushRefused(
                f"signed {now - signed.time:+.0f}s from this director's clock, more than "
                f"{self.window:g}s (are both directors' clocks set by NTP?)"
            )
        expected = _request_mac(
            key, signed.sender, signed.receiver, signed.time_text, signed.nonce, path, body
        )
        if not hmac.compare_digest(expected, signed.mac):
            raise PushRefused("wrong signature: not signed with this pair's key, or altered")
        self._expire(now)
        if signed.nonce in self._seen:
            raise PushRefused("a replay: this request was taken before")
        if len(self._seen) >= self.most:
            raise PushRefused("too many requests in the window; try again")
        self._seen[signed.nonce] = signed.time + self.window
        return signed

    def _expire(self, now: float) -> None:
        # Expiries are not in order when the sender's clock jumps; drop every one that is due.
        for nonce in [n for n, until in self._seen.items() if until < now]:
            del self._seen[nonce]


def sign_reply(key: bytes, nonce: str, status: int, body: bytes) -> str:
    return _mac(key, b"hapair-push-reply-v1", nonce, str(status), hashlib.sha256(body).digest())


def reply_ok(key: bytes, nonce: str, status: int, body: bytes, header: str | None) -> bool:
    """Whether a reply is the peer's answer to the request with `nonce`."""
    if header is None or not _MAC.fullmatch(header):
        return False
    return hmac.compare_digest(sign_reply(key, nonce, status, body), header)
