"""The job lifecycle across the swarm: client, worker and arbiter roles on a running Node."""

from node.lifecycle.service import Lifecycle
from node.lifecycle.settings import ChainInfo, LifecycleSettings

__all__ = ["ChainInfo", "Lifecycle", "LifecycleSettings"]
