"""Access-log lines (text and JSON) and the buffered writer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from portway.observe import accesslog
from portway.observe.accesslog import AccessLog, format_json, format_text
from portway.session import Session
from portway.termination import Reason

START = datetime(2026, 11, 22, 8, 21, 0, 123000, tzinfo=UTC).timestamp()


def finished() -> Session:
    s = Session(42, "db", ("10.1.2.3", 51234), ("0.0.0.0", 5432), start_mono=1000.0)
    s.start_wall = START
    s.backend = "postgres"
    s.server = "pg1"
    s.server_addr = ("10.0.0.5", 5432)
    s.bytes_in = 1229  # 1.2 KiB
    s.bytes_out = 3565158  # 3.4 MiB
    s.sniff_s = 0.0001
    s.connect_s = 0.0012
    s.finish(Reason.CLIENT_CLOSED, 1012.3)
    return s


def test_text_line() -> None:
    assert format_text(finished()) == (
        "2026-11-22T08:21:00.123Z db 10.1.2.3:51234 -> postgres/pg1 10.0.0.5:5432"
        " in=1.2KiB out=3.4MiB sniff=0.1ms connect=1.2ms total=12.3s retries=0 end=client_closed (CD)"
    )


def test_text_line_with_peer_detail_and_missing_pieces() -> None:
    s = Session(1, "edge", ("::1", 40000), ("::", 443), start_mono=5.0)
    s.start_wall = START
    s.client = ("203.0.113.9", 1234)  # from a PROXY header
    s.bytes_in = 517
    s.finish(Reason.PROTOCOL_ERROR, 5.25, detail='bad "hello"\nsecond line')
    line = format_text(s)
    assert line == (
        "2026-11-22T08:21:00.123Z edge 203.0.113.9:1234 -> -/- - in=517B out=0B"
        " sniff=- connect=- total=250.0ms retries=0 end=protocol_error (PR)"
        ' peer=[::1]:40000 detail="bad \\"hello\\"\\nsecond line"'
    )
    assert "\n" not in line


def test_text_line_of_unfinished_session_and_long_durations() -> None:
    s = Session(1, "db", ("10.0.0.1", 1), ("0.0.0.0", 1), start_mono=0.0)
    s.start_wall = START
    assert "total=- retries=0 end=- (--)" in format_text(s)
    s.finish(Reason.SHUTDOWN, 3725.4)
    assert "total=3725s" in format_text(s)


def test_json_line() -> None:
    line = format_json(finished())
    assert "\n" not in line
    doc = json.loads(line)
    assert doc == {
        "time": "2026-11-22T08:21:00.123Z",
        "start_unix": round(START, 6),
        "end": "2026-11-22T08:21:12.423Z",
        "end_unix": pytest.approx(START + 12.3),
        "id": 42,
        "listener": "db",
        "client": "10.1.2.3:51234",
        "peer": "10.1.2.3:51234",
        "frontend": "0.0.0.0:5432",
        "sni": None,
        "route": None,
        "tls_version": None,
        "alpn": None,
        "backend": "postgres",
        "server": "pg1",
        "server_addr": "10.0.0.5:5432",
        "bytes_in": 1229,
        "bytes_out": 3565158,
        "sniff_s": 0.0001,
        "connect_s": 0.0012,
        "total_s": pytest.approx(12.3),
        "retries": 0,
        "reason": "client_closed",
        "code": "CD",
        "message": "client closed",
        "detail": "",
    }


def test_json_line_is_ascii_and_nulls_unknowns() -> None:
    s = Session(7, "edge", ("::1", 1), ("::", 443), start_mono=0.0)
    s.detail = "caf\u00e9\u2028x"
    line = format_json(s)
    assert line.isascii()
    doc = json.loads(line)
    assert doc["detail"] == "caf\u00e9\u2028x"
    assert doc["peer"] == "[::1]:1"
    for key in ("backend", "server", "server_addr", "sniff_s", "total_s", "reason", "code", "end"):
        assert doc[key] is None


def test_file_target_buffers_until_flush(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("earlier line\n")
    log = AccessLog(str(path), "text")
    log.write(finished())
    log.write(finished())
    assert path.read_text() == "earlier line\n"  # still buffered
    log.flush()
    lines = path.read_text().splitlines()
    assert lines[0] == "earlier line"
    assert lines[1:] == [format_text(finished())] * 2
    log.flush()  # nothing buffered: no-op
    log.write(finished())
    log.close()
    assert len(path.read_text().splitlines()) == 4
    log.write(finished())  # ignored after close
    log.flush()
    assert len(path.read_text().splitlines()) == 4
    assert not log.enabled


def test_buffer_flushes_itself_when_full(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    log = AccessLog(str(path), "json")
    line = format_json(finished())
    n = accesslog.BUFFER_LIMIT // (len(line) + 1) + 1
    for _ in range(n - 1):
        log.write(finished())
    assert path.read_text() == ""
    log.write(finished())
    written = path.read_text().splitlines()
    assert len(written) == n
    assert all(json.loads(x)["id"] == 42 for x in written)
    log.close()


def test_reopen_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path), "text")
    log.write(finished())
    path.rename(tmp_path / "access.log.1")
    log.reopen()  # flushes into the rotated file, then starts a new one
    log.write(finished())
    log.close()
    assert len((tmp_path / "access.log.1").read_text().splitlines()) == 1
    assert len(path.read_text().splitlines()) == 1


def test_stdout_stderr_and_off(capsys: pytest.CaptureFixture[str]) -> None:
    out = AccessLog("stdout", "json")
    out.write(finished())
    out.flush()
    err = AccessLog("stderr", "text")
    err.write(finished())
    err.close()
    off = AccessLog("off", "text")
    off.write(finished())
    off.flush()
    assert not off.enabled
    captured = capsys.readouterr()
    assert json.loads(captured.out)["listener"] == "db"
    assert captured.err == format_text(finished()) + "\n"


def test_write_failure_is_logged_once_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def write(self, data: str) -> int:
            raise BrokenPipeError("gone")

        def flush(self) -> None:
            pass

    log = AccessLog("stdout", "text")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdout", Broken())
        for _ in range(3):
            log.write(finished())
            log.flush()
    warnings = [r for r in caplog.records if r.name == "portway.accesslog"]
    assert len(warnings) == 1


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="text, json"):
        AccessLog("off", "xml")


def test_tls_fields_in_both_formats() -> None:
    s = finished()
    s.sni, s.route = "app.example.com", "app"
    s.tls_version, s.alpn = "TLSv1.3", "h2"
    assert format_text(s).endswith("end=client_closed (CD) sni=app.example.com route=app tls=TLSv1.3 alpn=h2")
    record = json.loads(format_json(s))
    assert (record["tls_version"], record["alpn"]) == ("TLSv1.3", "h2")
