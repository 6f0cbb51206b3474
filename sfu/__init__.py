"""Voxa SFU: forwards RTP between WebRTC peers without decoding, on aiortc's ICE/DTLS/SRTP transports.

Vocabulary (mediasoup's): a Router is one voice channel on this SFU; a Peer is one client (one
BUNDLEd ICE/DTLS transport); a Producer is a track a peer sends; a Consumer is one producer forwarded
to one other peer.
"""
