"""Blobs a run created that are not durable yet (issue 12): an ``ArtifactStore`` overlay in front of the real one.

A step's context snapshot, its fact payloads and whatever its transports ``put`` are held here as pending
:class:`~engine.stores.Blob` s instead of being written (and synced) one by one. The :class:`EventWriter` claims
them at its next ``defer``/``append`` and commits them with those events through ``commit_unit``: one durable
operation for the blobs and the first events that can refer to them (a blob is always created before any event
that names it, so it never travels after one). Until that commit returns they stay readable here, in-process.

Crash semantics (ENGINE-SPEC §13) are those of put-then-append: an event is durable only together with (or after)
every blob it names, so a recorded fact whose ``fact_recorded`` is durable has its payload, and is never run again.
A crash before the commit loses the blob and the event together, exactly like a crash between a put and its append
did before (the fact is unbound on resume and runs again, as it did).
"""

from __future__ import annotations

from engine._kinds import ArtifactKind
from engine.ids import ArtifactId
from engine.stores import ArtifactStore, Blob, EventStore, UnitOfWork, paired_unit_of_work

__all__ = ["PendingArtifacts", "pending_for"]


def pending_for(events: EventStore, artifacts: ArtifactStore) -> PendingArtifacts | None:
    """An overlay when ``events`` commits blobs into ``artifacts`` in one unit of work; ``None`` otherwise, and then
    the run writes each blob with its own ``put`` before the event naming it, as without issue 12."""
    unit = paired_unit_of_work(events, artifacts)
    return PendingArtifacts(artifacts, unit) if unit is not None else None


class PendingArtifacts:
    """``ArtifactStore`` whose ``put`` holds the blob until the writer commits it; reads see pending blobs first."""

    __slots__ = ("_blobs", "_unclaimed", "store", "unit")

    def __init__(self, store: ArtifactStore, unit: UnitOfWork) -> None:
        self.store = store
        self.unit = unit  # commits into ``store``
        self._blobs: dict[ArtifactId, Blob] = {}  # every blob not known durable (claimed or not)
        self._unclaimed: dict[ArtifactId, Blob] = {}  # not yet handed to a batch, in creation order

    async def put(self, kind: ArtifactKind, data: bytes) -> ArtifactId:
        return self.hold(kind, bytes(data))

    def hold(self, kind: ArtifactKind, data: bytes) -> ArtifactId:
        """``put`` without the coroutine: hash once, keep the blob pending, return its id."""
        blob = Blob.of(kind, data)
        aid = blob.artifact_id
        if aid not in self._blobs:
            self._blobs[aid] = blob
            self._unclaimed[aid] = blob
        return aid

    async def get(self, artifact_id: ArtifactId) -> bytes:
        blob = self._blobs.get(artifact_id)
        if blob is not None:
            return blob.data
        return await self.store.get(artifact_id)

    async def exists(self, artifact_id: ArtifactId) -> bool:
        return artifact_id in self._blobs or await self.store.exists(artifact_id)

    @property
    def unclaimed(self) -> int:
        return len(self._unclaimed)

    def claim(self) -> list[Blob]:
        """The blobs no batch carries yet; from now on the caller's batch carries them."""
        if not self._unclaimed:
            return []
        out = list(self._unclaimed.values())
        self._unclaimed = {}
        return out

    def unclaim(self, blobs: list[Blob]) -> None:
        """A batch carrying ``blobs`` was not committed: the next one takes them (ahead of newer blobs)."""
        if blobs:
            self._unclaimed = {**{b.artifact_id: b for b in blobs}, **self._unclaimed}

    def settle(self, blobs: list[Blob]) -> None:
        """``blobs`` are durable: reads go to the store from now on."""
        for b in blobs:
            self._blobs.pop(b.artifact_id, None)
