"""Filesystem store format v2 (issue 12): the store contract on version-2 and version-1 stores, the record format,
commits of blobs and events, and the readers that share the framing (the TUI's log index, the doctor)."""

from __future__ import annotations

import base64
import errno
import gc
import json
from pathlib import Path
from typing import Any, NoReturn

import pytest

from engine._kinds import ArtifactKind
from engine.doctor import check_store
from engine.events import decode_envelope, decode_trusted, encode_envelope
from engine.stores._base import Blob, UnitOfWork, commit_unit
from engine.stores.fs import FsStore, framing
from mfm_tui.log_index import FileLogSource
from tests.engine.store_contract import StoreContract, UnitOfWorkContract, domain, env, envs, new_run


class TestFsStoreV2Contract(UnitOfWorkContract, StoreContract):
    async def make_store(self, request: pytest.FixtureRequest) -> FsStore:
        store = FsStore(request.getfixturevalue("tmp_path") / "store")
        assert store.version == 2
        return store

    async def fail_between_blobs_and_events(self, store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """The blobs and the events are ONE write: fail its fdatasync, after the bytes reached the file."""

        def fail(fd: int) -> NoReturn:
            raise OSError(errno.EIO, "injected: fdatasync after the commit's write")

        monkeypatch.setattr(store.events._core.ops, "fdatasync", fail)

    async def reopen_store(self, store: FsStore, request: pytest.FixtureRequest) -> FsStore:
        return FsStore(store.root)


class TestFsStoreV1Contract(StoreContract):
    async def make_store(self, request: pytest.FixtureRequest) -> FsStore:
        store = FsStore(request.getfixturevalue("tmp_path") / "store", new_version=1)
        assert store.version == 1
        return store

    async def reopen_store(self, store: FsStore, request: pytest.FixtureRequest) -> FsStore:
        return FsStore(store.root)


def test_new_stores_are_version_2_and_say_so(tmp_path: Path) -> None:
    FsStore(tmp_path / "store")
    assert json.loads((tmp_path / "store" / "store.json").read_text())["version"] == 2


def test_record_framing_round_trip_and_every_checked_field() -> None:
    body = b'{"a":1}'
    rec = framing.record(framing.EVENT_RECORD, True, body)
    assert rec.startswith(b"E. 7 ") and rec.endswith(b" " + body + b"\n") and rec.count(b"\n") == 1
    line = rec[:-1]
    assert framing.parse_record(line) == (framing.EVENT_RECORD, True, len(line) - len(body))
    for i in range(len(line)):  # every single flipped bit of the line is caught
        for bit in (0x01, 0x20):
            bad = line[:i] + bytes([line[i] ^ bit]) + line[i + 1 :]
            assert framing.parse_record(bad) is None, (i, bit)
    assert framing.parse_record(line + b" ") is None and framing.parse_record(line[:-1]) is None


@pytest.mark.parametrize(
    ("data", "mode"),
    [(b'{"k":"v\\u00e9","n":[1,2]}', b"t"), ("caf\u00e9 text".encode(), b"t"), (b"a\nb\r\x00\xff", b"b")],
)
def test_blob_records_hold_text_as_is_and_anything_else_as_base64(data: bytes, mode: bytes) -> None:
    aid = Blob.of(ArtifactKind.OUTPUT, data).artifact_id
    body = framing.blob_body(aid, ArtifactKind.other("my kind"), data)
    assert body[65:66] == mode and b"\n" not in body
    if mode == b"b":
        assert body.endswith(base64.b64encode(data))
    else:
        assert body.endswith(b" " + data)
    assert framing.parse_blob(body) == (aid, ArtifactKind.other("my kind"), data)


async def test_commit_is_the_unit_of_work_and_events_bytes_are_todays_lines(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "store")
    assert isinstance(store.events, UnitOfWork)
    run = new_run()
    snap = Blob.of(ArtifactKind.CONTEXT_SNAPSHOT, b'{"ctx":1}')
    head = await commit_unit(store.events, store.artifacts, run, 0, envs(run, 1, 2), [snap])
    assert head == 2
    lines = store.events_path(run).read_bytes().split(b"\n")[:-1]
    assert [ln[:2] for ln in lines] == [b"B+", b"E+", b"E."]
    assert [ln.split(b" ", 3)[3] for ln in lines[1:]] == [encode_envelope(e) for e in envs(run, 1, 2)]
    assert await FsStore(tmp_path / "store").artifacts.get(snap.artifact_id) == b'{"ctx":1}'
    assert await FsStore(tmp_path / "store").artifacts.kind_of(snap.artifact_id) == ArtifactKind.CONTEXT_SNAPSHOT
    # the same blob again: already in a committed record, not written twice
    await store.events.commit(run, 2, [env(run, 3)], [snap])
    assert store.events_path(run).read_bytes().count(b"\nB") == 0


async def test_commit_with_a_blob_whose_id_lies_is_refused(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "store")
    run = new_run()
    liar = Blob(Blob.of(ArtifactKind.OUTPUT, b"x").artifact_id, ArtifactKind.OUTPUT, b"y")
    with pytest.raises(Exception) as info:
        await store.events.commit(run, 0, [env(run, 1)], [liar])
    assert getattr(info.value, "code", None) == "artifact_put_id_mismatch"
    assert await store.events.head_seq(run) == 0


async def test_v1_log_in_a_v2_store_stays_v1_and_commits_put_blobs_durably(tmp_path: Path) -> None:
    root = tmp_path / "store"
    old = FsStore(root, new_version=1)
    run = new_run()
    await old.events.append(run, 0, [env(run, 1)])
    (root / "store.json").write_text(json.dumps({"format": "mfm-store", "version": 2, "created_at": "x"}))
    store = FsStore(root)
    blob = Blob.of(ArtifactKind.FACT_PAYLOAD, b'{"f":1}')
    assert await store.events.commit(run, 1, [env(run, 2)], [blob]) == 2
    data = store.events_path(run).read_bytes()
    assert data == encode_envelope(env(run, 1)) + b"\n" + encode_envelope(env(run, 2)) + b"\n"
    assert (root / framing.artifact_file(blob.artifact_id)).read_bytes() == b'{"f":1}'


async def test_the_tui_log_index_reads_v2_logs_with_blob_records(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "store")
    run = new_run()
    for i in range(1, 6):
        blobs = [Blob.of(ArtifactKind.CONTEXT_SNAPSHOT, b'{"i":%d}' % i)]
        await store.events.commit(run, i - 1, [env(run, i)], blobs)
    path = store.events_path(run)
    with open(path, "ab") as f:
        f.write(framing.record(framing.EVENT_RECORD, True, encode_envelope(env(run, 6)))[:-3])  # being written
    src = FileLogSource(path)
    assert len(src) == 5
    assert [framing.decode_line(src.raw(i) or b"") for i in range(5)] == envs(run, 1, 5)
    src.build_index()
    assert len(src) == 5 and src.raw(4) == encode_envelope(env(run, 5))


async def test_doctor_reports_v2_damage_and_knows_blob_records(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FsStore(root)
    run = new_run()
    await store.events.append(run, 0, envs(run, 1, 3))
    await store.events.append(run, 3, [env(run, 4)])
    path = store.events_path(run)
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1][:-3] + b"XYZ"
    path.write_bytes(b"\n".join(lines))
    codes = [f.code for f in check_store(root).findings if f.run_id == run]
    assert "record_checksum_mismatch" in codes


def test_trusted_decoding_builds_exactly_what_validated_decoding_builds() -> None:
    run = new_run()
    samples = [
        *envs(run, 1, 6),
        domain(run, 7, {"nested": {"b": [1, {"c": None}], "a": "é"}, "big": 2**53 - 1}),
        domain(run, 8, None),
        domain(run, 9, [1, 2, "x"], name="fact_recorded"),
    ]
    bodies = [encode_envelope(e) for e in samples]
    trusted = decode_trusted(bodies)
    validated = [decode_envelope(b) for b in bodies]
    assert trusted == validated == samples
    assert [type(e.event) for e in trusted] == [type(e.event) for e in validated]
    assert [encode_envelope(e) for e in trusted] == bodies
    assert [type(e.run_id) for e in trusted] == [type(e.run_id) for e in validated]


async def test_a_byte_flipped_after_the_scan_is_caught_by_the_read(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "store")
    run = new_run()
    await store.events.append(run, 0, envs(run, 1, 3))
    assert await store.events.head_seq(run) == 3  # scanned and cached
    path = store.events_path(run)
    data = bytearray(path.read_bytes())
    second = data.index(b"\n") + 1
    data[second + 40] ^= 0x01  # inside event 2's record
    path.write_bytes(bytes(data))
    got = await store.events.read_range(run, 1)
    assert got == envs(run, 1, 1) and got.damage.code == "run_log_corrupt"  # type: ignore[attr-defined]


def _count_checksums(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the XXH3 computations of records (``record`` writing one, ``parse_record`` in the scan) and of the
    decode (``decode_span`` / ``decode_lines``)."""
    counts = {"records": 0, "decode": 0}
    for module, key in ((framing.records, "records"), (framing.runlog, "decode")):
        real = module._xxh

        def counting(data: bytes, real: Any = real, key: str = key) -> int:
            counts[key] += 1
            return int(real(data))

        monkeypatch.setattr(module, "_xxh", counting)
    return counts


async def test_a_whole_run_read_checks_each_record_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a resume does (a fresh store reads a run from seq 1): the scan checks every record's checksum, and the
    decode checks the span it read against the scan's digest in one pass instead of each record a second time."""
    root = tmp_path / "store"
    run = new_run()
    writer = FsStore(root)
    for first in range(1, 50, 7):
        blob = Blob.of(ArtifactKind.CONTEXT_SNAPSHOT, b'{"n":%d}' % first)
        await writer.events.commit(run, first - 1, envs(run, first, first + 6), [blob])
    records = len(writer.events_path(run).read_bytes().splitlines())
    assert records == 49 + 7
    counts = _count_checksums(monkeypatch)
    assert await FsStore(root).events.read_range(run, 1) == envs(run, 1, 49)
    assert counts == {"records": records, "decode": 1}
    counts.update(records=0, decode=0)
    assert await FsStore(root).events.read_range(run, 5, 20) == envs(run, 5, 20)  # a part: checked record by record
    assert counts == {"records": records, "decode": 16}
    counts.update(records=0, decode=0)
    await writer.events.append(run, 49, envs(run, 50, 51))  # the appender's own commits extend its digest
    assert await writer.events.read_range(run, 1) == envs(run, 1, 51)
    assert counts == {"records": 2, "decode": 1}  # the two records written, then the read: one pass


async def test_a_byte_flipped_before_the_first_event_after_the_scan_is_caught(tmp_path: Path) -> None:
    """The digest covers the whole prefix, blob records included: a change there after the scan makes the read
    check record by record (the events, intact, are all read; the blob record's damage is the doctor's)."""
    store = FsStore(tmp_path / "store")
    run = new_run()
    await store.events.commit(run, 0, envs(run, 1, 3), [Blob.of(ArtifactKind.CONTEXT_SNAPSHOT, b'{"a":1}')])
    assert await store.events.head_seq(run) == 3
    path = store.events_path(run)
    data = bytearray(path.read_bytes())
    data[data.index(b'{"a":1}') + 2] ^= 0x01  # inside the blob record, before event 1
    path.write_bytes(bytes(data))
    assert await store.events.read_range(run, 1) == envs(run, 1, 3)
    data[data.index(b'"seq":2') + 6] ^= 0x01  # now inside event 2's record too
    path.write_bytes(bytes(data))
    got = await store.events.read_range(run, 1)
    assert got == envs(run, 1, 1) and got.damage.code == "run_log_corrupt"  # type: ignore[attr-defined]


@pytest.mark.parametrize("enabled", [True, False])
async def test_a_large_read_decodes_with_the_cyclic_gc_paused_and_restores_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    """Decoding a span of 1 MiB or more runs with the cyclic GC paused (its collections, triggered by the
    allocations, walked every live object again and again); a small one does not; afterwards the GC is as before."""
    store = FsStore(tmp_path / "store")
    run = new_run()
    big = "x" * 2000
    batch = [domain(run, seq, {"pad": big}) for seq in range(1, 601)]  # ~1.3 MB of records
    await store.events.append(run, 0, batch)
    seen: list[bool] = []
    real = framing.runlog.decode_trusted

    def spy(bodies: list[bytes]) -> Any:
        seen.append(gc.isenabled())
        return real(bodies)

    monkeypatch.setattr(framing.runlog, "decode_trusted", spy)
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        assert await FsStore(tmp_path / "store").events.read_range(run, 1) == batch
        assert await FsStore(tmp_path / "store").events.read_range(run, 10, 12) == batch[9:12]
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
    assert seen == [False, enabled]
