"""Where a client connects: one server, a list of servers, or a DNS name standing for several,
as the gRPC target and service config of the client's channels.

A target is written as
  - `host:port` (or `host`, port 50051; `[v6]:port` for an IPv6 address): one server,
  - `host1:port1,host2:port2,...`: several servers (names are looked up once, here),
  - `dns:///name:port`: every address the name resolves to, looked up again as it changes
    (a Kubernetes headless Service),
  - gRPC's own `unix:`, `unix-abstract:`, `ipv4:` and `ipv6:` forms, passed on unchanged.

Calls are spread over the servers by gRPC's round_robin policy with client-side health
checking (a server reporting NOT_SERVING, e.g. while it drains, gets no new calls), and the
idempotent calls are retried on another server when one is unavailable. An upload and the
request that refers to it go over a second channel that stays on one server
(`pinned_service_config`): uploads are kept by the server that received them.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass
from typing import Callable, Sequence

from roiseg.v1 import segmentation_pb2 as pb

#: Port of a target entry written without one (roiseg serve's default).
DEFAULT_PORT = 50051
#: The roiseg service, whose health the clients check.
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Segmentation"].full_name
#: Calls that are safe to send again after UNAVAILABLE (Segment only until its first event:
#: gRPC retries no call after a response has started).
RETRIED_METHODS = ("GetServerInfo", "ListModels", "UploadImage", "Segment", "ListExamples")
#: gRPC's own target schemes, passed on unchanged.
GRPC_SCHEMES = ("unix:", "unix-abstract:", "ipv4:", "ipv6:")
HINT = ("write a server as host:port, several as host1:port1,host2:port2, or a DNS name for "
        "several as dns:///name:port")

Resolver = Callable[[str, int], Sequence[str]]


class TargetError(ValueError):
    """A target that cannot be used, with what to write instead."""


@dataclass(frozen=True)
class Target:
    """A parsed target: `grpc_target` is what the channels dial; `addresses` the servers'
    host:port as given (one for a single server, none for gRPC's own forms)."""

    text: str
    grpc_target: str
    addresses: tuple[str, ...]
    loopback: bool

    @property
    def several(self) -> bool:
        """Whether calls may go to more than one server (a list, or a DNS name)."""
        return len(self.addresses) > 1 or self.grpc_target.startswith("dns:")


def parse_target(text: str, resolve: Resolver | None = None) -> Target:
    """The target `text` names (see the module's docstring); TargetError when it is malformed
    or a listed name does not resolve. `resolve(host, port)` gives a name's IP addresses
    (default: the system's resolver)."""
    text = (text or "").strip()
    if not text:
        raise TargetError(f"no server given: {HINT}")
    if text.startswith(GRPC_SCHEMES):
        return Target(text, text, (), text.startswith("unix"))
    if text.startswith("dns:"):
        if not text.startswith("dns:///") or "," in text:
            raise TargetError(f"{text!r} is not a DNS target: write dns:///name:port")
        host, port = split_host_port(text[len("dns:///"):])
        return Target(text, f"dns:///{join_host_port(host, port)}",
                      (join_host_port(host, port),), _is_loopback(host))
    if "://" in text:
        raise TargetError(f"{text!r} has a scheme roiseg does not know: {HINT}")
    entries = [split_host_port(entry) for entry in text.split(",")]
    addresses = tuple(dict.fromkeys(join_host_port(h, p) for h, p in entries))
    loopback = all(_is_loopback(h) for h, _ in entries)
    if len(addresses) == 1:
        return Target(text, addresses[0], addresses, loopback)
    resolved = [(ip, port) for host, port in entries
                for ip in _addresses(host, port, resolve or _system_resolver)]
    families = {ipaddress.ip_address(ip).version for ip, _ in resolved}
    if len(families) > 1:
        raise TargetError(f"{text!r} mixes IPv4 and IPv6 servers; list one kind, or use a DNS "
                          "name (dns:///name:port)")
    scheme = "ipv4:" if families == {4} else "ipv6:"
    listed = dict.fromkeys(join_host_port(ip, port) for ip, port in resolved)
    return Target(text, scheme + ",".join(listed), addresses, loopback)


def split_host_port(entry: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port`, `host` or a bare IPv6 address as (host, port); the port
    defaults to `DEFAULT_PORT`."""
    entry = entry.strip()
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise TargetError(f"{entry!r} is not [IPv6 address]:port")
        port_text = rest[1:] if rest else ""
    elif entry.count(":") > 1:
        host, port_text = entry, ""  # a bare IPv6 address
    else:
        host, _, port_text = entry.partition(":")
    if not host or any(c.isspace() or c in "/[]@" for c in host) or (
            ":" in host and not _is_ip(host)):
        raise TargetError(f"{entry!r} is not a server address: {HINT}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise TargetError(f"the port in {entry!r} must be a number from 1 to 65535")
    return host, int(port_text)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def balanced_service_config() -> str:
    """The balanced channel's service config: round_robin over the servers that report
    SERVING for the roiseg service, retries on UNAVAILABLE."""
    return json.dumps({"loadBalancingConfig": [{"round_robin": {}}],
                       "healthCheckConfig": {"serviceName": SERVICE_NAME},
                       "methodConfig": [_retry_config()]})


def pinned_service_config() -> str:
    """The pinned channel's service config: one server at a time (each client picks its own at
    random), the next one only when it fails; retries on UNAVAILABLE."""
    return json.dumps({"loadBalancingConfig": [{"pick_first": {"shuffleAddressList": True}}],
                       "methodConfig": [_retry_config()]})


def _retry_config() -> dict:
    return {"name": [{"service": SERVICE_NAME, "method": m} for m in RETRIED_METHODS],
            "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.2s", "maxBackoff": "2s",
                            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}


def _addresses(host: str, port: int, resolve: Resolver) -> list[str]:
    if _is_ip(host):
        return [host]
    try:
        found = list(dict.fromkeys(resolve(host, port)))
    except OSError as error:
        raise TargetError(f"the server name {host!r} cannot be looked up ({error}); for names "
                          "whose addresses change use dns:///name:port") from None
    if not found:
        raise TargetError(f"the server name {host!r} has no address")
    ipv4 = [ip for ip in found if ipaddress.ip_address(ip).version == 4]
    return ipv4 or found


def _system_resolver(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    return _is_ip(host) and ipaddress.ip_address(host).is_loopback
