"""Per-request records of the http-proxy mode: text and JSON lines, and AccessLog.write_request."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from portway.observe.accesslog import AccessLog
from portway.observe.accesslog import format_text as session_text
from portway.observe.httplog import HttpRecord, format_json, format_text
from portway.session import Session
from portway.termination import Reason

START = datetime(2026, 11, 22, 8, 21, 0, 123000, tzinfo=UTC).timestamp()

JSON_KEYS = {
    "type",
    "time",
    "start_unix",
    "id",
    "listener",
    "client",
    "user",
    "method",
    "url",
    "version",
    "status",
    "req_bytes",
    "resp_bytes",
    "upstream",
    "reused",
    "head_s",
    "total_s",
    "intercepted",
    "error",
}

HOSTILE_URL = 'http://example.com/a b"c\\d\r\nevil=1 caf\u00e9\u2028\x00'


def session() -> Session:
    s = Session(17, "proxy", ("10.1.2.3", 51234), ("0.0.0.0", 8080), start_mono=100.0)
    s.route = "alice"
    return s


def forwarded() -> HttpRecord:
    rec = HttpRecord(session(), "GET", "http://example.com/a", "1.1", start_mono=200.0)
    rec.start_wall = START
    rec.status = 200
    rec.upstream = ("127.0.0.1", 8081)
    rec.reused = True
    rec.resp_bytes = 1229  # 1.2 KiB
    rec.head_s = 0.0012
    rec.finish(200.0034)
    return rec


def test_new_record_defaults() -> None:
    rec = HttpRecord(session(), "POST", "http://h/", "1.0", start_mono=5.0)
    assert (rec.status, rec.upstream, rec.head_s, rec.total_s) == (None, None, None, None)
    assert (rec.req_bytes, rec.resp_bytes, rec.reused, rec.intercepted, rec.error) == (0, 0, False, False, "")
    assert (rec.request_headers, rec.response_headers, rec.status_text) == (None, None, "")
    assert rec.start_wall > 0 and rec.start_mono == 5.0
    rec.finish(5.25)
    assert rec.total_s == 0.25
    with pytest.raises(AttributeError):
        rec.unknown = 1  # type: ignore[attr-defined]  # slotted: a typo fails loudly


def test_text_line() -> None:
    assert format_text(forwarded()) == (
        "2026-11-22T08:21:00.123Z proxy 10.1.2.3:51234 #17 GET http://example.com/a HTTP/1.1"
        " -> 200 127.0.0.1:8081 reused in=0B out=1.2KiB head=1.2ms total=3.4ms user=alice"
    )


def test_text_line_of_a_refused_intercepted_request() -> None:
    s = Session(3, "proxy", ("::1", 40000), ("::", 8080), start_mono=0.0)  # no user
    rec = HttpRecord(s, "POST", "https://example.com/x", "1.0", start_mono=1.0)
    rec.start_wall = START
    rec.intercepted = True
    rec.req_bytes = 512
    rec.status = 403
    rec.error = 'destination refused: 10.0.0.1 is "private"'
    rec.finish(1.0001)
    assert format_text(rec) == (
        "2026-11-22T08:21:00.123Z proxy [::1]:40000 #3 POST https://example.com/x HTTP/1.0"
        " -> 403 - new in=512B out=0B head=- total=0.1ms mitm"
        ' error="destination refused: 10.0.0.1 is \\"private\\""'
    )


def test_text_line_without_a_response() -> None:
    rec = HttpRecord(session(), "GET", "http://example.com/", "1.1", start_mono=0.0)
    line = format_text(rec)
    assert " -> - - new in=0B out=0B head=- total=- user=alice" in line


def test_hostile_text_stays_one_line_with_fixed_fields() -> None:
    rec = forwarded()
    rec.url = HOSTILE_URL
    rec.method = 'G T"'
    rec.session.route = "bob user=root"
    rec.error = "upstream closed\nfake line"
    line = format_text(rec)
    assert "\n" not in line and "\r" not in line and "\x00" not in line
    assert line.isascii()
    # The quoted fields come back intact as JSON strings, so nothing was cut or injected.
    decoder = json.JSONDecoder()
    url_at = line.index(" HTTP/1.1") - len(json.dumps(HOSTILE_URL))
    assert decoder.raw_decode(line, url_at)[0] == HOSTILE_URL
    assert decoder.raw_decode(line, line.index("#17 ") + 4)[0] == 'G T"'
    assert decoder.raw_decode(line, line.index("user=") + 5)[0] == "bob user=root"
    assert decoder.raw_decode(line, line.index("error=") + 6)[0] == "upstream closed\nfake line"
    # Outside the quoted strings, the fields are where they always are.
    assert line.split(" -> ")[1].split(" ")[:3] == ["200", "127.0.0.1:8081", "reused"]


def test_bare_text_is_printable_ascii_without_spaces_or_quotes() -> None:
    rec = forwarded()
    rec.url = "http://example.com/p?q=a%20b&x=[1]\\y"
    assert f" {rec.url} HTTP/1.1 " in format_text(rec)
    rec.url = ""
    assert ' GET "" HTTP/1.1 ' in format_text(rec)


def test_json_line() -> None:
    doc = json.loads(format_json(forwarded()))
    assert doc == {
        "type": "http",
        "time": "2026-11-22T08:21:00.123Z",
        "start_unix": round(START, 6),
        "id": 17,
        "listener": "proxy",
        "client": "10.1.2.3:51234",
        "user": "alice",
        "method": "GET",
        "url": "http://example.com/a",
        "version": "1.1",
        "status": 200,
        "req_bytes": 0,
        "resp_bytes": 1229,
        "upstream": "127.0.0.1:8081",
        "reused": True,
        "head_s": 0.0012,
        "total_s": pytest.approx(0.0034),
        "intercepted": False,
        "error": "",
    }


def test_json_line_of_unknowns_and_hostile_text() -> None:
    s = Session(9, "proxy", ("::1", 1), ("::", 8080), start_mono=0.0)
    rec = HttpRecord(s, "GET", HOSTILE_URL, "1.1", start_mono=0.0)
    rec.error = "bad\nthing \u2028"
    line = format_json(rec)
    assert line.isascii() and "\n" not in line
    doc = json.loads(line)
    assert set(doc) == JSON_KEYS
    assert doc["url"] == HOSTILE_URL
    assert doc["error"] == "bad\nthing \u2028"
    assert doc["client"] == "[::1]:1"
    for key in ("user", "status", "upstream", "head_s", "total_s"):
        assert doc[key] is None


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_write_request_to_a_file(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path), fmt)
    rec = forwarded()
    log.write_request(rec)
    log.write_request(rec)
    assert path.read_text() == ""  # buffered, like connection lines
    conn = rec.session
    conn.finish(Reason.CLIENT_CLOSED, 101.0)
    log.write(conn)  # the connection line goes into the same buffer, in order
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    if fmt == "text":
        assert lines[:2] == [format_text(rec)] * 2
        assert lines[2] == session_text(conn)
    else:
        docs = [json.loads(x) for x in lines]
        assert [d.get("type") for d in docs] == ["http", "http", None]
        assert set(docs[0]) == JSON_KEYS
        assert docs[0]["id"] == docs[2]["id"] == 17


def test_write_request_flushes_itself_when_full(tmp_path: Path) -> None:
    from portway.observe import accesslog

    path = tmp_path / "access.jsonl"
    log = AccessLog(str(path), "json")
    rec = forwarded()
    n = accesslog.BUFFER_LIMIT // (len(format_json(rec)) + 1) + 1
    for _ in range(n - 1):
        log.write_request(rec)
    assert path.read_text() == ""
    log.write_request(rec)
    assert len(path.read_text().splitlines()) == n
    log.close()


def test_write_request_off_and_closed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    off = AccessLog("off", "json")
    off.write_request(forwarded())
    off.flush()
    path = tmp_path / "access.log"
    log = AccessLog(str(path), "text")
    log.close()
    log.write_request(forwarded())
    log.flush()
    assert path.read_text() == ""
    assert capsys.readouterr() == ("", "")


def test_write_request_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    log = AccessLog("stdout", "text")
    log.write_request(forwarded())
    log.flush()
    assert capsys.readouterr().out == format_text(forwarded()) + "\n"
