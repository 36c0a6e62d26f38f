"""Ports and network interfaces: picked and checked in the coordinator before any worker starts."""

from __future__ import annotations

import ipaddress
import socket

import psutil

from ..engine.errors import InvalidSettingsError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def bind_listener(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A listening TCP socket on exactly `host` (not every interface); port 0 picks a free one."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def check_port_free(host: str, port: int, what: str) -> None:
    """Raises a clear error now rather than letting a worker fail to bind later."""
    try:
        with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
            sock.bind((host, port))
    except OSError as error:
        raise InvalidSettingsError(
            f"the {what} port {host}:{port} is not available ({error.strerror or error}); "
            f"choose another port or 0 to pick a free one"
        ) from error


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_interface() -> str | None:
    """The name of the interface carrying 127.0.0.1 ('lo' on Linux, 'lo0' on macOS)."""
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addresses):
            return name
    return None


def parse_address(text: str, default_port: int | None = None) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        if default_port is None:
            raise InvalidSettingsError(f"address {text!r} has no port; write HOST:PORT")
        return text, default_port
    try:
        return host.strip("[]"), int(port)
    except ValueError as error:
        raise InvalidSettingsError(f"address {text!r}: the port must be a number; write HOST:PORT") from error


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
