"""CONFORMANCE J66–J69: routing Live IO calls by namespace group, and the factory registry (ENGINE-SPEC §11.5)."""

from __future__ import annotations

from typing import Any

import pytest

from engine.config import RunConfig
from engine.errors import IoError, IoErrorKind
from engine.exec_transport import ExecTransportFactory
from engine.ids import RunId
from engine.live_io_registry import LiveIoRegistry
from engine.live_io_router import LiveIoRouter, UnimplementedTransportFactory, namespace_matches
from engine.stores.memory import MemoryStore
from engine.testing import base_config, sid
from engine.transport import LiveTransport, LiveTransportFactory, TransportContext


class TagTransport:
    def __init__(self, tag: str, attempt: int) -> None:
        self.tag = tag
        self.attempt = attempt

    async def call(self, namespace: str, request: Any) -> Any:
        return {"via": self.tag, "ns": namespace, "attempt": self.attempt}


class TagFactory:
    """Answers ``{"via": tag, …}``; counts how many transports it made."""

    def __init__(self, group: str, tag: str | None = None) -> None:
        self._group = group
        self.tag = tag if tag is not None else group
        self.made = 0

    @property
    def namespace_group(self) -> str:
        return self._group

    def make(self, context: TransportContext) -> LiveTransport:
        self.made += 1
        return TagTransport(self.tag, context.attempt)


def ctx(attempt: int = 0, config: RunConfig | None = None) -> TransportContext:
    return TransportContext(
        stores=MemoryStore().stores,
        run_id=RunId.new_v4(),
        state_id=sid("s1"),
        attempt=attempt,
        run_config=config if config is not None else base_config(),
    )


def test_factories_satisfy_the_protocol() -> None:
    for factory in (TagFactory("x"), LiveIoRouter([]), UnimplementedTransportFactory(), ExecTransportFactory()):
        assert isinstance(factory, LiveTransportFactory)
        assert isinstance(factory.make(ctx()), LiveTransport)


async def test_j66_prefix_routing() -> None:
    """J66: groups proof, evm: `proof.read` → proof transport; `evm` → evm transport."""
    router = LiveIoRouter([TagFactory("proof"), TagFactory("evm")])
    transport = router.make(ctx())
    assert await transport.call("proof.read", {}) == {"via": "proof", "ns": "proof.read", "attempt": 0}
    assert (await transport.call("evm", {}))["via"] == "evm"


async def test_j66_group_match_is_by_whole_dot_segments() -> None:
    router = LiveIoRouter([TagFactory("proof")])
    transport = router.make(ctx())
    for namespace in ("proofs", "proof_read", "pro", "", "xproof.read"):
        with pytest.raises(IoError) as err:
            await transport.call(namespace, {})
        assert err.value.code == "io_unknown_namespace"
    assert namespace_matches("proof.a.b", "proof")
    assert not namespace_matches("proofa.b", "proof")


async def test_j67_longest_prefix_wins() -> None:
    """J67: groups local, local.fs: `local.fs.read_text` → local.fs."""
    for order in (["local", "local.fs"], ["local.fs", "local"]):
        router = LiveIoRouter([TagFactory(g) for g in order])
        transport = router.make(ctx())
        assert (await transport.call("local.fs.read_text", {}))["via"] == "local.fs"
        assert (await transport.call("local.fs", {}))["via"] == "local.fs"
        assert (await transport.call("local.fsx", {}))["via"] == "local"
        assert (await transport.call("local.net.get", {}))["via"] == "local"


async def test_j68_unknown_namespace_never_echoes_the_request() -> None:
    """J68: no routes; `unknown.ns` with a bearer token → io_unknown_namespace without the request."""
    router = LiveIoRouter([])
    with pytest.raises(IoError) as err:
        await router.make(ctx()).call("unknown.ns", {"authorization": "Bearer x"})
    e = err.value
    assert e.kind is IoErrorKind.OTHER
    assert e.code == "io_unknown_namespace"
    everything = f"{e} {e.message} {e.info.model_dump_json()} {e.to_wire()!r}"
    assert "Bearer" not in everything
    assert "authorization" not in everything


def test_j69_duplicate_registration_rejected() -> None:
    """J69: registering local.fs twice → the second fails mentioning `duplicate`; empty groups rejected."""
    registry = LiveIoRegistry()
    first = TagFactory("local.fs")
    registry.register(first)
    with pytest.raises(IoError) as err:
        registry.register(TagFactory("local.fs"))
    assert "duplicate" in str(err.value)
    with pytest.raises(IoError) as err:
        registry.register(TagFactory(" local.fs "))
    assert "duplicate" in str(err.value)
    for blank in ("", "   ", "\t"):
        with pytest.raises(IoError) as err:
            registry.register(TagFactory(blank))
        assert "empty" in str(err.value)
    assert registry.list() == [first]
    assert registry.resolve("local.fs") is first


def test_j69_router_construction_rejects_duplicates_and_empty_groups() -> None:
    with pytest.raises(IoError) as err:
        LiveIoRouter([TagFactory("evm"), TagFactory("proof"), TagFactory("evm")])
    assert "duplicate" in str(err.value)
    with pytest.raises(IoError) as err:
        LiveIoRouter([TagFactory("evm"), TagFactory("  ")])
    assert "empty" in str(err.value)


def test_registry_resolve_is_exact_and_list_keeps_order() -> None:
    registry = LiveIoRegistry()
    local, fs, evm = TagFactory("local"), TagFactory("local.fs"), TagFactory("evm")
    for factory in (local, fs, evm):
        registry.register(factory)
    assert registry.resolve("local.fs") is fs
    assert registry.resolve("local") is local
    assert registry.resolve("local.fs.read_text") is None
    assert registry.resolve("loc") is None
    assert registry.list() == [local, fs, evm]
    assert registry.groups() == ["local", "local.fs", "evm"]
    assert "evm" in registry
    assert len(registry) == 3


async def test_registry_router_routes_by_longest_group() -> None:
    registry = LiveIoRegistry()
    registry.register(TagFactory("local"))
    registry.register(TagFactory("local.fs"))
    transport = registry.router().make(ctx())
    assert (await transport.call("local.fs.read_text", {}))["via"] == "local.fs"
    assert (await transport.call("local.clock", {}))["via"] == "local"


async def test_unimplemented_default_fails_every_call() -> None:
    transport = UnimplementedTransportFactory().make(ctx())
    for namespace in ("exec", "anything.at.all", ""):
        with pytest.raises(IoError) as err:
            await transport.call(namespace, {"authorization": "Bearer x"})
        assert err.value.kind is IoErrorKind.OTHER
        assert err.value.code == "io_unimplemented"
        assert "Bearer" not in repr(err.value.to_wire())


async def test_router_makes_group_transports_lazily_once_per_attempt() -> None:
    proof, evm = TagFactory("proof"), TagFactory("evm")
    router = LiveIoRouter([proof, evm])
    transport = router.make(ctx(attempt=2))
    assert (proof.made, evm.made) == (0, 0)
    assert (await transport.call("proof.a", {}))["attempt"] == 2
    await transport.call("proof.b", {})
    assert (proof.made, evm.made) == (1, 0)
    router.make(ctx(attempt=3))
    assert (proof.made, evm.made) == (1, 0)
    with pytest.raises(IoError):
        await transport.call("nope", {})
    assert (proof.made, evm.made) == (1, 0)


async def test_router_passes_transport_errors_through() -> None:
    router = LiveIoRouter([ExecTransportFactory()])
    with pytest.raises(IoError) as err:
        await router.make(ctx()).call("exec", "not an object")
    assert err.value.code == "exec_request_invalid"


async def test_catch_all_group_is_the_fallback_for_unmatched_namespaces() -> None:
    """Project extension: a `*` factory (router, default) inside a router takes unmatched namespaces."""
    wrapped_default = LiveIoRouter([UnimplementedTransportFactory()])
    with pytest.raises(IoError) as err:
        await wrapped_default.make(ctx()).call("exec", {})
    assert err.value.code == "io_unimplemented"

    inner = LiveIoRouter([TagFactory("evm")])
    outer = LiveIoRouter([TagFactory("proof"), inner])
    assert outer.groups == ("*", "proof")
    transport = outer.make(ctx())
    assert (await transport.call("proof.x", {}))["via"] == "proof"
    assert (await transport.call("evm.call", {}))["via"] == "evm"
    with pytest.raises(IoError) as err:
        await transport.call("other", {})
    assert err.value.code == "io_unknown_namespace"
    with pytest.raises(IoError) as err:
        LiveIoRouter([inner, UnimplementedTransportFactory()])
    assert "duplicate" in str(err.value)
