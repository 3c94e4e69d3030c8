"""Client targets: one server, a list, a DNS name; malformed ones refused with a hint."""

from __future__ import annotations

import json

import pytest
from roiseg.client.connection import Client
from roiseg.client.targets import (
    TargetError,
    balanced_service_config,
    parse_target,
    pinned_service_config,
)


def _no_lookup(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host} should not be looked up")


def test_one_server_is_dialled_as_given():
    t = parse_target(" gpu-box:9000 ", _no_lookup)
    assert (t.grpc_target, t.addresses, t.several, t.loopback) == (
        "gpu-box:9000", ("gpu-box:9000",), False, False)
    assert parse_target("gpu-box", _no_lookup).grpc_target == "gpu-box:50051"
    assert parse_target("[::1]:7000", _no_lookup).grpc_target == "[::1]:7000"
    assert parse_target("::1", _no_lookup).grpc_target == "[::1]:50051"
    assert parse_target("localhost:1", _no_lookup).loopback
    assert parse_target("unix:/tmp/roiseg.sock", _no_lookup).grpc_target == "unix:/tmp/roiseg.sock"


def test_a_list_becomes_an_address_list_with_names_looked_up_once():
    t = parse_target("127.0.0.1:1, 127.0.0.1:2,127.0.0.1:1", _no_lookup)
    assert t.grpc_target == "ipv4:127.0.0.1:1,127.0.0.1:2" and t.several and t.loopback
    assert parse_target("[::1]:1,[::2]:2", _no_lookup).grpc_target == "ipv6:[::1]:1,[::2]:2"
    names = {"gpu1": ["10.0.0.1", "10.0.0.2"], "gpu2": ["fd00::3", "10.0.0.3"]}
    t = parse_target("gpu1:9000,gpu2", lambda host, port: names[host])
    assert t.grpc_target == "ipv4:10.0.0.1:9000,10.0.0.2:9000,10.0.0.3:50051"
    assert t.addresses == ("gpu1:9000", "gpu2:50051") and not t.loopback


def test_a_dns_name_stands_for_several():
    t = parse_target("dns:///roiseg.lab.svc.cluster.local:50051", _no_lookup)
    assert t.grpc_target == "dns:///roiseg.lab.svc.cluster.local:50051" and t.several
    assert parse_target("dns:///roiseg", _no_lookup).grpc_target == "dns:///roiseg:50051"


@pytest.mark.parametrize("text", ["", " ", "a:1,", ",a:1", "a:0", "a:70000", "a:port",
                                  "http://a:1", "dns://x/a:1", "dns:///a:1,b:2", "a b:1",
                                  "[::1", "[::1]x", "gpu::1", "127.0.0.1:1,[::1]:2"])
def test_malformed_targets_say_what_to_write(text):
    with pytest.raises(TargetError) as error:
        parse_target(text, _no_lookup)
    assert str(error.value)
    with pytest.raises(ValueError):
        Client(text)


def test_a_listed_name_that_does_not_resolve_is_refused():
    def fail(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")
    with pytest.raises(TargetError, match="'nowhere' cannot be looked up"):
        parse_target("127.0.0.1:1,nowhere:2", fail)


def test_service_configs_balance_over_healthy_servers_and_retry_unavailable():
    balanced = json.loads(balanced_service_config())
    assert balanced["loadBalancingConfig"] == [{"round_robin": {}}]
    assert balanced["healthCheckConfig"] == {"serviceName": "roiseg.v1.Segmentation"}
    retry = balanced["methodConfig"][0]
    assert retry["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert {n["method"] for n in retry["name"]} >= {"GetServerInfo", "ListModels", "Segment"}
    pinned = json.loads(pinned_service_config())
    assert pinned["loadBalancingConfig"] == [{"pick_first": {"shuffleAddressList": True}}]
