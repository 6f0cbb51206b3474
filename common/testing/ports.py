"""Free ports: voxa.common.ports is the one implementation (the demo uses it too); re-exported here so
that a harness finds all its tools in the kit."""

from voxa.common.ports import ANY, LOOPBACK, TCP, TCP_AND_UDP, UDP, free_port

__all__ = ["ANY", "LOOPBACK", "TCP", "TCP_AND_UDP", "UDP", "free_port"]
