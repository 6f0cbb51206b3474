"""Types of the native data plane's Python module (sfu/dataplane/src/py.rs), for mypy.

maturin ships this file in the wheel (as voxa_dataplane/__init__.pyi, with py.typed); keep it in step
with py.rs: tests/unit/sfu/test_dataplane_module.py fails when the module's public names and these
differ.
"""

from typing import Final, Literal

__version__: Final[str]

class SrtpSession:
    """One peer's SRTP session (both directions), keyed from DTLS-SRTP exporter output (RFC 5764
    §4.2: client write key, server write key, client salt, server salt). `is_client` is true when
    this side was the DTLS client. Every method raises ValueError on a rejected packet."""

    def __init__(self, profile: int, keying_material: bytes, is_client: bool) -> None: ...
    def protect_rtp(self, packet: bytes) -> bytes: ...
    def unprotect_rtp(self, packet: bytes) -> bytes: ...
    def protect_rtcp(self, packet: bytes) -> bytes: ...
    def unprotect_rtcp(self, packet: bytes) -> bytes: ...

def srtp_keying_material_len(profile: int) -> int:
    """Bytes of DTLS exporter output the protection profile needs; ValueError if unsupported."""

def classify(data: bytes) -> Literal["stun", "dtls", "rtp", "rtcp", "other"]:
    """What a datagram of the shared media port is (RFC 7983)."""
