"""A guard that refuses (and records) every connection or name lookup off the
loopback interface: evaluation must never reach the network."""

import ipaddress
import socket
from contextlib import contextmanager

import pytest


def _loopback(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host in (None, "localhost"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False  # a name other than localhost: resolving it is already a network call


@contextmanager
def no_network():
    """Refuse (and record) every connection or name lookup off the loopback interface."""
    attempts: list = []

    def guard(where, host, address) -> None:
        if not _loopback(host):
            attempts.append((where, address))
            raise OSError(f"network access in a test: {where} {address!r}")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_create, real_getaddrinfo = socket.create_connection, socket.getaddrinfo

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            guard("connect", address[0], address)
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            guard("connect_ex", address[0], address)
        return real_connect_ex(self, address)

    def create_connection(address, *args, **kwargs):
        guard("create_connection", address[0], address)
        return real_create(address, *args, **kwargs)

    def getaddrinfo(host, *args, **kwargs):
        guard("getaddrinfo", host, host)
        return real_getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket.socket, "connect_ex", connect_ex)
        mp.setattr(socket, "create_connection", create_connection)
        mp.setattr(socket, "getaddrinfo", getaddrinfo)
        yield attempts
