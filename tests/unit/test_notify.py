"""systemd notify messages: datagrams to NOTIFY_SOCKET (a bound UNIX datagram socket, no server), and the watchdog period.

EC2 spot notices, against a fake IMDSv2 server, are in tests/pipeline/test_spot.py.
"""

from __future__ import annotations

import socket

from ckptsync.notify import sd_notify, watchdog_period


def test_sd_notify_sends_datagrams_to_notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        s.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sd_notify("READY=1")
        assert s.recv(1024) == b"READY=1"


def test_sd_notify_without_socket_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sd_notify("READY=1")


def test_watchdog_period_is_half_of_watchdog_usec(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_period() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_period() is None
