"""Fakes of the gateway's injected dependencies, for tests that run without a broker or key store."""

from common.broker import BrokerUnavailable
from common.contracts import Contract, SendMessage
from common.errors import ServiceUnavailable
from common.idempotency import ClaimState, KeyClaim, KeyClaimRequest, KeyPublished, KeyReleased


class RecordingPublisher:
    def __init__(self) -> None:
        self.published: list[Contract] = []
        self.fail = False

    async def publish(self, contract: Contract) -> None:
        if self.fail:
            raise BrokerUnavailable("broker is down")
        self.published.append(contract)


class MemoryKeyStore:
    """conversation_service's key store rules in memory, without expiry; a claim is handed over only
    once it was released."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, SendMessage]] = {}
        self.published: set[str] = set()
        self.released: set[str] = set()
        self.reachable = True

    async def claim(self, request: KeyClaimRequest) -> KeyClaim:
        self._answer()
        fingerprint, command = self.keys.setdefault(request.key, (request.request_fingerprint, request.command))
        if command == request.command:
            return KeyClaim(state=ClaimState.CLAIMED, command=command)
        if fingerprint != request.request_fingerprint:
            return KeyClaim(state=ClaimState.MISMATCH, command=command)
        if request.key in self.released:
            self.released.discard(request.key)
            return KeyClaim(state=ClaimState.CLAIMED, command=command)
        state = ClaimState.PUBLISHED if request.key in self.published else ClaimState.IN_PROGRESS
        return KeyClaim(state=state, command=command)

    async def mark_published(self, published: KeyPublished) -> None:
        self._answer()
        self.published.add(published.key)

    async def release(self, released: KeyReleased) -> None:
        self._answer()
        self.released.add(released.key)

    def _answer(self) -> None:
        if not self.reachable:
            raise ServiceUnavailable("the idempotency key store is unavailable; retry later")
