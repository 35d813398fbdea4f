"""Checks of the hosts, ports and addresses ``fedprune deploy`` and ``deploy serve`` are given: they end up in
Flower's TOML and command lines, or a listening socket, so anything but a plain host and port is refused."""

from __future__ import annotations

import re

from fedprune.server.run_config import ConfigError

_HOST = re.compile(r"[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]")  # a name, IPv4, or [IPv6]


def check_port(option: str, port: int) -> None:
    """A TCP port, 1-65535."""
    if not 1 <= port <= 65535:
        raise ConfigError(option, f"{port} is not a port; give 1-65535")


def check_host(option: str, host: str) -> None:
    """A listen host: a DNS name or IP address (IPv6 with or without brackets)."""
    if not _HOST.fullmatch(host) and not _HOST.fullmatch(f"[{host}]"):
        raise ConfigError(option, f"{host!r} is not a DNS name or IP address")


def check_address(option: str, address: str) -> None:
    """``HOST:PORT`` (IPv6 in brackets) and nothing else: it ends up in Flower's TOML and command lines."""
    host, sep, port = address.rpartition(":")
    if not sep or not _HOST.fullmatch(host) or not (port.isascii() and port.isdigit()) \
            or not 1 <= int(port) <= 65535:
        raise ConfigError(option, f"{address!r} is not HOST:PORT (a DNS name or IP address, a port 1-65535)")
