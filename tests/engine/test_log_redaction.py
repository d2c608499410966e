"""The secrets guard applied to logs (engine.secrets.LineRedactor / redact_text; issue 13 item 7): a line that looks
secret is withheld whole, whatever the chunking of the stream; the detector is the store's (§12.1)."""

from __future__ import annotations

import pytest

from engine.secrets import MAX_LINE, SECRET_SUBSTRINGS, WITHHELD, LineRedactor, contains_secrets, redact_text

MNEMONIC = "legal winner thank year wave sausage worth useful legal winner thank yellow"
PLANTED = [f"{t}=plantedvalue{i}" for i, t in enumerate(SECRET_SUBSTRINGS)] + [MNEMONIC]


def _through(data: bytes, chunk: int) -> bytes:
    r = LineRedactor()
    out = b"".join(r.feed(data[i : i + chunk]) for i in range(0, len(data), chunk))
    return out + r.finish()


@pytest.mark.parametrize("secret", PLANTED)
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_a_secret_line_is_withheld_whatever_the_chunks(secret: str, chunk: int) -> None:
    shown = secret if secret == MNEMONIC else secret.upper()  # signs are found whatever their case
    data = f"ok before\nx {shown} y\nok after\n".encode()
    assert _through(data, chunk) == f"ok before\n{WITHHELD}\nok after\n".encode()


def test_clean_lines_pass_byte_for_byte_and_a_partial_last_line_is_judged_at_the_end() -> None:
    data = "[2026] worker 12: run 1a2b completed\r\nüñí 123\n\nno newline at the end".encode()
    assert _through(data, 3) == data
    assert _through(b"done\nplease authorization", 5) == f"done\n{WITHHELD}".encode()


def test_a_mnemonic_inside_a_line_and_across_two_lines() -> None:
    assert redact_text(f"seed: {MNEMONIC} (keep it)\n") == f"{WITHHELD}\n"
    assert not contains_secrets(f"seed: {MNEMONIC}")  # the store's detector judges whole strings only
    words = MNEMONIC.split()
    two = " ".join(words[:6]) + "\n" + " ".join(words[6:]) + "\n"
    assert redact_text(two) == " ".join(words[:6]) + f"\n{WITHHELD}\n"
    assert redact_text("eleven short words of prose are fine in a log line\n").count(WITHHELD) == 0


def test_a_value_on_the_line_after_its_sign_is_withheld_too() -> None:
    assert redact_text("password:\nhunter2\nnext\n") == f"{WITHHELD}\n{WITHHELD}\nnext\n"
    assert redact_text("password=hunter2\nnext\n") == f"{WITHHELD}\nnext\n"  # the value was on its line


def test_a_very_long_line_is_judged_in_pieces_and_a_sign_cut_in_two_is_seen() -> None:
    cut = MAX_LINE - 4
    data = b"a" * cut + b"password=hunter2" + b"b" * 10 + b"\n"  # "pass" | "word=hunter2…" across the cut
    out = _through(data, 1 << 16)
    assert b"hunter2" not in out and WITHHELD.encode() in out
    clean = b"c" * (3 * MAX_LINE) + b"\n"
    assert _through(clean, 5000) == clean
