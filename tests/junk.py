"""Pub/sub messages no release of the gateway ever sends: what a node must drop, count and survive."""

JUNK = [
    b"",  # an empty message
    b"not a packet",
    b"1700000000000-0\x1f",  # a truncated packet: no end of header
    b"\x1f\n{not json",  # a packet whose frame is not JSON
    b'\x1f\n["valid", "json", "of the wrong shape"]',
    b'\x1f\n{"type": 7}',
    b'1-1x\x1f\n{"type":"message"}',  # an id that is not a history id
    b'\x1f\n{"v": 99, "op": "revoke", "user": "bob"}',  # a control operation of a later version
    b'\x1f\n{"op": "reboot"}',  # an operation this release does not know
]
