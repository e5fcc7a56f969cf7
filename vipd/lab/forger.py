"""A hostile host on the lab segment: forged VRRP adverts written as whole Ethernet frames (any
source address, any TTL, any checksum), paced at a given rate for a given time.

    python -m vipd.lab.forger --interface eth0 --rate 2000 --duration 5 \\
        --kind 'dst=224.0.0.18,vrid=200,count=255' --kind 'dst=224.0.0.18,vrid=51,checksum=bad,src=random'

Each --kind is one stream of comma-separated fields: src (an address, or "random" for a source
spoofed anew per frame from 198.18.0.128/25), dst, dst_mac (default: the IPv4 multicast MAC for a
multicast dst, else broadcast), ttl (255), vrid (51), priority (100), interval (centiseconds, 10),
count (addresses carried, 1), checksum (good|bad). The rate is shared by the streams in turn.
Prints one JSON line at the end: frames sent and the achieved rate.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import random
import socket
import struct
import sys
import time

from vipd.vrrp import packet

FRAME_POOL = 256   # random sources: frames built ahead, so sending costs one syscall each


def _ipv4_header(src: str, dst: str, ttl: int, payload_len: int) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + payload_len, 0, 0, ttl, packet.IPPROTO_VRRP, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    checksum = ~packet._ones_complement_sum(header) & 0xFFFF
    return header[:10] + struct.pack("!H", checksum) + header[12:]


def _mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


def _dst_mac(dst: str) -> bytes:
    ip = ipaddress.IPv4Address(dst)
    if ip.is_multicast:
        return bytes([0x01, 0x00, 0x5E]) + (int(ip) & 0x7FFFFF).to_bytes(3, "big")
    return b"\xff" * 6


def build_frame(fields: dict[str, str], src_mac: bytes, rng: random.Random) -> bytes:
    src = fields.get("src", "198.18.0.66")
    if src == "random":
        src = f"198.18.0.{rng.randrange(128, 255)}"
    dst = fields.get("dst", str(packet.VRRP_GROUPS[4]))
    count = int(fields.get("count", 1))
    advert = packet.Advert(3, int(fields.get("vrid", 51)), int(fields.get("priority", 100)),
                           int(fields.get("interval", 10)),
                           tuple(ipaddress.IPv4Address(0xC6120000 + 1000 + i) for i in range(count)))
    message = packet.encode(advert, src=src, dst=dst)
    if fields.get("checksum", "good") == "bad":
        message = message[:6] + bytes([message[6] ^ 0x5A, message[7] ^ 0xA5]) + message[8:]
    dst_mac = _mac(fields["dst_mac"]) if "dst_mac" in fields else _dst_mac(dst)
    ethernet = dst_mac + src_mac + struct.pack("!H", 0x0800)
    return ethernet + _ipv4_header(src, dst, int(fields.get("ttl", 255)), len(message)) + message


def parse_kind(text: str) -> dict[str, str]:
    fields = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--kind: expected key=value, got {item!r}")
        fields[key.strip()] = value.strip()
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interface", default="eth0")
    parser.add_argument("--rate", type=float, default=100.0, help="frames per second, all streams together")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--kind", action="append", required=True, help="one stream of forged adverts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (0 < args.rate <= 1_000_000 and 0 < args.duration <= 3600):
        raise SystemExit("--rate must be in (0, 1e6], --duration in (0, 3600]")
    rng = random.Random(args.seed)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((args.interface, 0))
    with open(f"/sys/class/net/{args.interface}/address") as f:
        src_mac = _mac(f.read().strip())
    streams = []
    for text in args.kind:
        fields = parse_kind(text)
        pool = FRAME_POOL if fields.get("src") == "random" else 1
        streams.append([build_frame(fields, src_mac, rng) for _ in range(pool)])
    sent = errors = 0
    start = time.monotonic()
    end = start + args.duration
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - start) * args.rate) + 1
        while sent + errors < due:
            stream = streams[(sent + errors) % len(streams)]
            try:
                sock.send(stream[(sent + errors) // len(streams) % len(stream)])
                sent += 1
            except OSError:
                errors += 1
        time.sleep(0.001)
    elapsed = time.monotonic() - start
    print(json.dumps({"sent": sent, "errors": errors, "seconds": round(elapsed, 3),
                      "rate": round(sent / elapsed, 1)}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
