"""CONFORMANCE.md section N: the secrets detector (ENGINE-SPEC §12.1) and clean linkage payloads."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from engine._kinds import ArtifactKind
from engine._secrets import SECRET_SUBSTRINGS, contains_secrets, json_contains_secrets
from engine.errors import StorageError
from engine.events import (
    DOMAIN_EVENT_ARTIFACT_WRITTEN,
    DOMAIN_EVENT_FACT_RECORDED,
    ArtifactWritten,
    ChildRunCompleted,
    ChildRunSpawned,
    DomainEvent,
    EventEnvelope,
    FactRecorded,
    RunStatus,
    decode_envelope,
)
from engine.hashing import CanonicalJsonError, artifact_id_for_json, canonical_json_bytes
from engine.ids import ArtifactId, RunId
from engine.stores._base import encode_batch

PHRASE_12 = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"


# -- N91 --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "password=123",
        "MNEMONIC",
        "private_key",
        "seed phrase: ...",
        "AWS_SECRET_ACCESS_KEY=...",
        PHRASE_12,
    ],
)
def test_n91_detects(text: str) -> None:
    assert contains_secrets(text)


@pytest.mark.parametrize("text", ["artifact_written", "seeding_database", "seed", "", "fact/key"])
def test_n91_clean(text: str) -> None:
    assert not contains_secrets(text)


def test_n91_json_scan() -> None:
    assert json_contains_secrets({"ok": {"nested": [1, 2]}, "mnemonic": PHRASE_12})
    assert not json_contains_secrets({"ok": {"nested": [1, 2]}})


def test_n91_word_count_bounds() -> None:
    """[derived] 11 words → false; 12..24 → true; 25 → false."""
    assert not contains_secrets(" ".join(["word"] * 11))
    assert contains_secrets(" ".join(["word"] * 12))
    assert contains_secrets(" ".join(["word"] * 24))
    assert not contains_secrets(" ".join(["word"] * 25))


def test_n91_capitalised_word_breaks_the_heuristic() -> None:
    """[derived] 12 words with one capitalised → false, unless a substring matches."""
    words = PHRASE_12.split()
    words[3] = "Abandon"
    assert not contains_secrets(" ".join(words))
    words[4] = "Password"
    assert contains_secrets(" ".join(words))


def test_n91_bearer_needs_the_trailing_space() -> None:
    assert contains_secrets("Bearer x")
    assert contains_secrets("authorization: BEARER abc")
    assert not contains_secrets("bearer")
    assert not contains_secrets("bearer\tx")


@pytest.mark.parametrize("needle", SECRET_SUBSTRINGS)
def test_n91_every_substring_case_insensitive(needle: str) -> None:
    assert contains_secrets(f"prefix {needle} suffix")
    assert contains_secrets(needle.upper())
    assert contains_secrets("x" + needle.title() + "y")


def test_n91_substring_list_is_the_spec_list() -> None:
    assert set(SECRET_SUBSTRINGS) == {
        "password",
        "passphrase",
        "mnemonic",
        "private_key",
        "privatekey",
        "seed phrase",
        "seed_phrase",
        "seedphrase",
        "api_key",
        "apikey",
        "x-api-key",
        "x_api_key",
        "access_key",
        "accesskey",
        "secret_key",
        "secretkey",
        "aws_access_key_id",
        "aws_secret_access_key",
        "access_token",
        "refresh_token",
        "id_token",
        "authorization",
        "bearer ",
    }


def test_n91_parity_ascii_only_lowercasing() -> None:
    """§12.1 parity: only ASCII letters are lower-cased (Rust ``to_ascii_lowercase``).

    U+212A KELVIN SIGN lower-cases to ASCII "k" under ``str.lower()``; Rust does not fold it, so
    "private_\u212aey" is *not* a secret. Likewise U+0130 (I with dot) must not become "i".
    """
    assert "private_\u212aey".lower() == "private_key"  # what a naive port would see
    assert not contains_secrets("private_\u212aey")
    # The canonical encoder's secret scan (which may take a faster path) agrees.
    assert (
        canonical_json_bytes({"private_\u212aey": "Bearer\u00a0x"}) == '{"private_\u212aey":"Bearer\u00a0x"}'.encode()
    )


def test_n91_parity_mnemonic_words_are_ascii_lowercase_only() -> None:
    words = PHRASE_12.split()
    words[0] = "abandón"
    assert not contains_secrets(" ".join(words))
    words[0] = "abandon1"
    assert not contains_secrets(" ".join(words))


def test_n91_parity_unicode_whitespace_splits_words() -> None:
    """Rust ``split_whitespace`` splits on Unicode White_Space (NBSP, ideographic space, tabs, newlines)."""
    for sep in ("\u00a0", "\u3000", "\t", "\n", "  ", "\u2028", "\u0085"):
        assert contains_secrets(sep.join(PHRASE_12.split())), repr(sep)
    assert contains_secrets("  " + PHRASE_12 + "\n")
    with pytest.raises(CanonicalJsonError):
        canonical_json_bytes(["x", {"k": "\u3000".join(PHRASE_12.split())}])


def test_n91_parity_information_separators_do_not_split() -> None:
    """Python's ``str.split()`` also splits on U+001C..U+001F; Rust does not (they stay in the word)."""
    for sep in ("\x1c", "\x1d", "\x1e", "\x1f"):
        assert sep.split() != [sep]  # Python's own split would treat it as whitespace
        assert not contains_secrets(sep.join(PHRASE_12.split())), repr(sep)
        canonical_json_bytes({"k": sep.join(PHRASE_12.split())})  # not a secret for the encoder either


def test_n91_parity_zero_width_space_is_not_whitespace() -> None:
    """U+200B is not White_Space in Rust or Python: the words glue together."""
    assert not contains_secrets("\u200b".join(PHRASE_12.split()))


@pytest.mark.parametrize(
    "value",
    [
        {"password": 1},
        {"outer": [{"inner": {"api_key": None}}]},
        ["x", ["y", ["Bearer token"]]],
        ("tuple", "refresh_token"),
        {"k": {"deep": PHRASE_12}},
    ],
)
def test_n91_json_scan_finds_keys_and_nested_values(value: Any) -> None:
    assert json_contains_secrets(value)


@pytest.mark.parametrize("value", [None, True, 12, -5, [], {}, {"a": [1, None, False]}, {"seed": "seeding"}])
def test_n91_json_scan_non_strings_are_never_secret(value: Any) -> None:
    assert not json_contains_secrets(value)


def test_n91_json_scan_keys_first() -> None:
    """Object keys are checked; a secret key with a clean value is detected."""
    assert json_contains_secrets({"access_token": "clean"})
    assert json_contains_secrets({"a": {"ID_TOKEN": 0}})


def test_n91_deep_nesting_does_not_overflow() -> None:
    value: Any = "password"
    for _ in range(5000):
        value = [value]
    assert json_contains_secrets(value)


# -- N92 --------------------------------------------------------------------------------------

RUN = RunId("0b7f3c1e-9a2d-4e5f-8a6b-1c2d3e4f5a6b")


def _linkage_payloads() -> list[Any]:
    return [
        ChildRunSpawned(
            parent_run_id=RunId.from_uuid(uuid.uuid4()),
            child_run_id=RunId.from_uuid(uuid.uuid4()),
            child_manifest_id=ArtifactId("0" * 64),
        ).model_dump(mode="json"),
        ChildRunCompleted(
            child_run_id=RunId.from_uuid(uuid.uuid4()),
            status=RunStatus.COMPLETED,
            final_snapshot_id=ArtifactId("1" * 64),
        ).model_dump(mode="json"),
    ]


def test_n92_child_run_payloads_are_canonical_and_clean() -> None:
    for _ in range(20):  # random UUIDs: never mnemonic-like, never a substring hit
        for payload in _linkage_payloads():
            artifact_id_for_json(payload)
            assert not json_contains_secrets(payload)


def test_n92_standard_domain_events_pass_stream_encoding() -> None:
    fact = DomainEvent(
        name=DOMAIN_EVENT_FACT_RECORDED,
        payload=FactRecorded(key="fact/key", payload_id=ArtifactId("2" * 64), meta={}).model_dump(mode="json"),
    )
    written = DomainEvent(
        name=DOMAIN_EVENT_ARTIFACT_WRITTEN,
        payload=ArtifactWritten(artifact_id=ArtifactId("3" * 64), kind=ArtifactKind.OUTPUT).model_dump(mode="json"),
    )
    for ev in (fact, written):
        assert not contains_secrets(ev.name)
        canonical_json_bytes(ev.payload)
    envs = [EventEnvelope(run_id=RUN, seq=i + 1, event=ev) for i, ev in enumerate((fact, written))]
    lines = encode_batch(RUN, 0, envs)
    assert [decode_envelope(line) for line in lines] == envs


def test_n92_secret_domain_payload_fails_stream_encoding() -> None:
    """The contrast case (§12.2): a secret in a domain payload is refused with secrets_detected."""
    env = EventEnvelope(run_id=RUN, seq=1, event=DomainEvent(name="note", payload={"api_key": "x"}))
    with pytest.raises(StorageError) as info:
        encode_batch(RUN, 0, [env])
    assert info.value.code == "secrets_detected"
    named = EventEnvelope(run_id=RUN, seq=1, event=DomainEvent(name="password_changed", payload={}))
    with pytest.raises(StorageError) as info:
        encode_batch(RUN, 0, [named])
    assert info.value.code == "secrets_detected"
