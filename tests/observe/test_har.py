"""The HAR writer: HAR 1.2 structure, the entry limit, atomic rewrites and write failures."""

from __future__ import annotations

import json
import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from portway.observe.har import HarWriter
from portway.observe.httplog import HttpRecord
from portway.session import Session

START = datetime(2026, 11, 22, 8, 21, 0, 123000, tzinfo=UTC).timestamp()

# Required members per object in the HAR 1.2 spec (http://www.softwareishard.com/blog/har-12-spec/).
LOG_KEYS = {"version", "creator", "entries"}
ENTRY_KEYS = {"startedDateTime", "time", "request", "response", "cache", "timings"}
REQUEST_KEYS = {
    "method",
    "url",
    "httpVersion",
    "cookies",
    "headers",
    "queryString",
    "headersSize",
    "bodySize",
}
RESPONSE_KEYS = {
    "status",
    "statusText",
    "httpVersion",
    "cookies",
    "headers",
    "content",
    "redirectURL",
    "headersSize",
    "bodySize",
}
TIMING_KEYS = {"send", "wait", "receive"}


def record(n: int = 0, url: str = "https://example.com/search?q=caf%C3%A9&empty=&q=2") -> HttpRecord:
    s = Session(17, "proxy", ("10.1.2.3", 51234), ("0.0.0.0", 8080), start_mono=0.0)
    rec = HttpRecord(s, "GET", url, "1.1", start_mono=10.0)
    rec.start_wall = START + n
    rec.intercepted = True
    rec.status = 302
    rec.status_text = "Found"
    rec.upstream = ("93.184.215.14", 443)
    rec.req_bytes = 0
    rec.resp_bytes = 120
    rec.head_s = 0.0125
    rec.finish(10.05)
    rec.request_headers = [(b"Host", b"example.com"), (b"X-Latin", b"caf\xe9")]
    rec.response_headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"Location", b"https://example.com/next"),
        (b"Content-Length", b"120"),
    ]
    return rec


def check_har(doc: Any) -> list[dict[str, Any]]:
    """Assert the HAR 1.2 structure (required members and their types); return the entries."""
    assert set(doc) == {"log"}
    log = doc["log"]
    assert set(log) >= LOG_KEYS
    assert log["version"] == "1.2"
    assert isinstance(log["creator"]["name"], str) and isinstance(log["creator"]["version"], str)
    entries: list[dict[str, Any]] = log["entries"]
    assert isinstance(entries, list)
    for e in entries:
        assert set(e) >= ENTRY_KEYS
        datetime.fromisoformat(e["startedDateTime"])
        assert e["startedDateTime"].endswith("Z")
        assert set(e["request"]) >= REQUEST_KEYS
        assert set(e["response"]) >= RESPONSE_KEYS
        assert {"size", "mimeType"} <= set(e["response"]["content"])
        assert isinstance(e["cache"], dict)
        timings = e["timings"]
        assert set(timings) >= TIMING_KEYS
        assert all(timings[k] >= 0 for k in TIMING_KEYS)  # the spec: non-negative, never -1
        assert e["time"] == pytest.approx(sum(v for v in timings.values() if v >= 0))
        for part in (e["request"], e["response"]):
            assert part["cookies"] == []
            for h in part["headers"]:
                assert set(h) == {"name", "value"}
        for q in e["request"]["queryString"]:
            assert set(q) == {"name", "value"}
    return entries


def read(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_bytes().decode("utf-8"))
    return data


def test_har_document(tmp_path: Path) -> None:
    path = tmp_path / "capture.har"
    har = HarWriter(str(path), creator_version="9.9.9")
    har.add(record())
    har.close()
    doc = read(path)
    (e,) = check_har(doc)
    assert doc["log"]["creator"] == {"name": "portway", "version": "9.9.9"}
    assert "comment" not in doc["log"]
    assert e["startedDateTime"] == "2026-11-22T08:21:00.123Z"
    assert e["request"]["method"] == "GET"
    assert e["request"]["url"] == "https://example.com/search?q=caf%C3%A9&empty=&q=2"
    assert e["request"]["httpVersion"] == "HTTP/1.1"
    assert e["request"]["headers"][1] == {"name": "X-Latin", "value": "caf\u00e9"}
    assert e["request"]["queryString"] == [
        {"name": "q", "value": "caf\u00e9"},
        {"name": "empty", "value": ""},
        {"name": "q", "value": "2"},
    ]
    assert (e["request"]["headersSize"], e["request"]["bodySize"]) == (-1, 0)
    resp = e["response"]
    assert (resp["status"], resp["statusText"], resp["httpVersion"]) == (302, "Found", "HTTP/1.1")
    assert resp["content"] == {"size": 120, "mimeType": "text/html; charset=utf-8"}
    assert resp["redirectURL"] == "https://example.com/next"
    assert (resp["headersSize"], resp["bodySize"]) == (-1, 120)
    assert e["timings"] == {"send": 0, "wait": 12.5, "receive": 37.5}
    assert e["time"] == 50.0
    assert e["cache"] == {}
    assert e["serverIPAddress"] == "93.184.215.14"
    assert e["connection"] == "17"
    assert "_error" not in e
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_entry_without_headers_or_response(tmp_path: Path) -> None:
    s = Session(5, "proxy", ("10.1.2.3", 1), ("0.0.0.0", 8080), start_mono=0.0)
    rec = HttpRecord(s, "CONNECT", "http://[::1", "1.0", start_mono=0.0)  # not even a valid URL
    rec.error = "destination refused: loopback"
    rec.finish(0.002)
    path = tmp_path / "x.har"
    har = HarWriter(str(path))
    har.add(rec)
    har.flush()
    (e,) = check_har(read(path))
    assert e["request"]["headers"] == [] and e["request"]["queryString"] == []
    assert e["request"]["httpVersion"] == "HTTP/1.0"
    resp = e["response"]
    assert (resp["status"], resp["statusText"], resp["httpVersion"], resp["headers"]) == (0, "", "", [])
    assert resp["content"] == {"size": 0, "mimeType": ""}
    assert resp["redirectURL"] == ""
    assert e["timings"] == {"send": 0, "wait": 2.0, "receive": 0.0}  # all of it waiting
    assert "serverIPAddress" not in e
    assert e["_error"] == "destination refused: loopback"


def test_limit_keeps_the_newest_and_counts_the_dropped(tmp_path: Path) -> None:
    path = tmp_path / "capture.har"
    har = HarWriter(str(path), limit=3)
    for n in range(5):
        har.add(record(n, url=f"http://example.com/{n}"))
    assert (len(har), har.dropped) == (3, 2)
    har.flush()
    doc = read(path)
    entries = check_har(doc)
    assert [e["request"]["url"] for e in entries] == [f"http://example.com/{n}" for n in (2, 3, 4)]
    assert "2 older entries dropped" in doc["log"]["comment"]
    with pytest.raises(ValueError, match="at least 1"):
        HarWriter(str(path), limit=0)


def test_flush_without_adds_does_not_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "capture.har"
    har = HarWriter(str(path))
    har.flush()
    assert not path.exists()  # nothing added yet: no file at all
    har.add(record())
    har.flush()
    before = path.stat()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns - 10**9))  # so a rewrite would show
    before = path.stat()
    har.flush()
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    har.add(record(1))
    har.flush()
    assert path.stat().st_ino != before.st_ino  # replaced, not rewritten in place
    assert len(check_har(read(path))) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["capture.har"]  # no temporary left behind


def test_readers_always_see_a_whole_document(tmp_path: Path) -> None:
    path = tmp_path / "capture.har"
    har = HarWriter(str(path), limit=500)
    har.add(record())
    har.flush()
    stop = threading.Event()
    seen: list[int] = []
    errors: list[Exception] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(len(read(path)["log"]["entries"]))
            except Exception as e:  # a torn or missing file
                errors.append(e)
                return

    t = threading.Thread(target=reader)
    t.start()
    try:
        for n in range(100):
            har.add(record(n))
            har.add(record(n))
            har.flush()
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert seen and seen == sorted(seen)  # each read saw one complete document, never an older one
    assert len(check_har(read(path))) == 201


def test_write_failure_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    har = HarWriter(str(blocker / "capture.har"))  # its directory is a file: every write fails
    for n in range(3):
        har.add(record(n))
        har.flush()
    har.close()
    warnings = [r for r in caplog.records if r.name == "portway.har"]
    assert len(warnings) == 1
    assert "capture.har" in warnings[0].getMessage()
    assert len(har) == 3  # kept for a later retry


def test_recovers_after_a_failure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "later"
    har = HarWriter(str(directory / "capture.har"))
    har.add(record())
    har.flush()  # the directory does not exist yet
    directory.mkdir()
    har.flush()  # still dirty, so retried
    assert len(check_har(read(directory / "capture.har"))) == 1
    assert len([r for r in caplog.records if r.name == "portway.har"]) == 1


def test_add_after_close_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "capture.har"
    har = HarWriter(str(path))
    har.add(record())
    har.close()
    har.add(record(1))
    har.flush()
    assert len(check_har(read(path))) == 1
