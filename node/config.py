"""The node's configuration: one frozen NodeConfig, read from a commented TOML file."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.errors import UserError

__all__ = [
    "CONFIG_FILE",
    "BlobConfig",
    "ControlConfig",
    "GossipConfig",
    "NegotiateConfig",
    "NetworkConfig",
    "NodeConfig",
    "PenaltyConfig",
    "load_config",
    "render_config",
]

CONFIG_FILE = "config.toml"


def _opt(default: Any, doc: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: tuple(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class NetworkConfig:
    """libp2p host: addresses, bootstrap peers, connection limits."""

    listen: tuple[str, ...] = _opt(
        ["/ip4/127.0.0.1/tcp/4001"],
        "multiaddrs to listen on (TCP); use /ip4/0.0.0.0/... to accept other machines",
    )
    announce: tuple[str, ...] = _opt([], "addresses to advertise instead of the listen ones")
    bootstrap: tuple[str, ...] = _opt([], "multiaddrs ending in /p2p/<peer id> to dial at start")
    dht: bool = _opt(True, "run the Kademlia DHT for peer routing (client mode on a light node)")
    target_peers: int = _opt(4, "dial workers heard of until this many connections")
    max_peers: int = _opt(12, "above this many connections, prune back towards target_peers")
    max_connections: int = _opt(300, "hard limit on connections")
    dial_timeout_s: float = _opt(10.0, "seconds to wait for a connection to open")


@dataclass(frozen=True)
class GossipConfig:
    """Capability gossip on /c0/caps/1."""

    heartbeat_s: float = _opt(1.0, "GossipSub heartbeat interval (the library default is 120)")
    ad_interval_s: float = _opt(30.0, "a full node republishes its ad this often")
    ad_ttl_s: int = _opt(120, "lifetime of an ad; receivers forget it after this")
    max_ad_size: int = _opt(16384, "ads larger than this are rejected")
    rate_per_s: float = _opt(1.0, "ads accepted per second per sender (token bucket refill)")
    burst: int = _opt(5, "ads a sender may send in a burst")
    degree: int = _opt(6, "GossipSub mesh degree D")


@dataclass(frozen=True)
class NegotiateConfig:
    """Request/response over /c0/negotiate/1.0.0."""

    max_frame: int = _opt(262144, "largest frame accepted, in bytes")
    first_frame_timeout_s: float = _opt(10.0, "a new stream must carry a request within this")
    read_timeout_s: float = _opt(10.0, "limit on every read inside a frame")
    idle_timeout_s: float = _opt(60.0, "an idle reused stream is closed after this")
    request_timeout_s: float = _opt(10.0, "default limit for a request and its reply")
    max_streams_per_peer: int = _opt(16, "concurrent inbound streams per peer")
    handler_timeout_s: float = _opt(30.0, "limit on a local handler's work for one request")


@dataclass(frozen=True)
class BlobConfig:
    """Content-addressed blobs over /c0/blob/1.0.0."""

    chunk_size: int = _opt(4194304, "bytes per data frame")
    max_blob_size: int = _opt(8 * 1024**3, "largest blob served or fetched")
    read_timeout_s: float = _opt(30.0, "limit on every read of a transfer")
    min_rate_bytes_s: int = _opt(
        262144,
        "slowest transfer accepted (bytes/s): a fetch of N bytes must end within"
        " negotiate.request_timeout_s + N / this",
    )
    max_streams_per_peer: int = _opt(4, "concurrent inbound blob streams per peer")


@dataclass(frozen=True)
class PenaltyConfig:
    """The node's own peer penalties (py-libp2p's gossip scoring is not used)."""

    ban_threshold: float = _opt(-100.0, "a peer at or below this score is disconnected, banned")
    half_life_s: float = _opt(600.0, "penalties decay by half over this many seconds")
    ban_s: float = _opt(900.0, "how long a ban lasts")


@dataclass(frozen=True)
class ControlConfig:
    """The local control API for the CLI."""

    socket: str = _opt("control.sock", "unix socket, relative to the node home (mode 0600)")


@dataclass(frozen=True)
class StorageConfig:
    """The node database (SQLite, WAL)."""

    sync: str = _opt(
        "normal",
        "normal: a commit survives the node being killed (kill -9), the last few may roll"
        " back on power loss; full: every commit is also synced to disk before it returns",
    )


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node needs to run; every option has a default."""

    light: bool = _opt(False, "light node: no ads, no execution; own jobs only")
    network: NetworkConfig = field(default_factory=NetworkConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    negotiate: NegotiateConfig = field(default_factory=NegotiateConfig)
    blobs: BlobConfig = field(default_factory=BlobConfig)
    penalties: PenaltyConfig = field(default_factory=PenaltyConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def replace(self, **changes: Any) -> NodeConfig:
        """A copy with changes; nested sections take dicts: replace(network={...})."""
        fixed: dict[str, Any] = {}
        for key, value in changes.items():
            current = getattr(self, key)
            if dataclasses.is_dataclass(current) and isinstance(value, dict):
                fixed[key] = _build(type(current), value, key)
            else:
                fixed[key] = value
        return dataclasses.replace(self, **fixed)


_SECTIONS = {f.name: f for f in dataclasses.fields(NodeConfig) if f.name != "light"}


def _convert(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise UserError(f"config: {where} must be a list of strings")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UserError(f"config: {where} must be true or false")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(default):
        raise UserError(f"config: {where} must be of type {type(default).__name__}")
    return value


def _build(cls: Any, table: dict[str, Any], section: str) -> Any:
    defaults = cls()
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(table) - names
    if unknown:
        raise UserError(f"config: unknown option(s) in [{section}]: {', '.join(sorted(unknown))}")
    kwargs = {k: _convert(v, getattr(defaults, k), f"{section}.{k}") for k, v in table.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> NodeConfig:
    unknown = set(data) - set(_SECTIONS) - {"light"}
    if unknown:
        raise UserError(f"config: unknown section(s): {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    if "light" in data:
        kwargs["light"] = _convert(data["light"], False, "light")
    for name, f in _SECTIONS.items():
        if name in data:
            if not isinstance(data[name], dict):
                raise UserError(f"config: [{name}] must be a table")
            kwargs[name] = _build(f.default_factory, data[name], name)  # type: ignore[misc]
    return NodeConfig(**kwargs)


def load_config(path: Path | None) -> NodeConfig:
    """Read a config file; a missing file gives the defaults."""
    if path is None or not path.exists():
        return NodeConfig()
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config: {path}: {exc}") from None
    return config_from_dict(data)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def render_config(config: NodeConfig | None = None) -> str:
    """The config as TOML with a comment above every option."""
    config = config or NodeConfig()
    lines = ["# c0 node configuration. Every option has a default; delete what you keep.", ""]
    light = dataclasses.fields(NodeConfig)[0]
    lines += [f"# {light.metadata['doc']}", f"light = {_toml_value(config.light)}", ""]
    for name in _SECTIONS:
        section = getattr(config, name)
        lines.append(f"# {type(section).__doc__}")
        lines.append(f"[{name}]")
        for f in dataclasses.fields(section):
            lines.append(f"# {f.metadata['doc']}")
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
        lines.append("")
    return "\n".join(lines)
