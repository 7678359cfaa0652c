from collections import Counter
import socket, time
from tests.xds.test_parity_envoy import *

def raw_get(sock, host, path):
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    hdrs = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    n = int(hdrs.get("content-length", 0))
    while len(body) < n:
        body += sock.recv(65536)
    return hdrs.get("x-upstream")

def test_speed(fresh):
    publish(fresh, [xr.route(prefix="/split", weighted=[("a", 80), ("b", 20)])])
    s = socket.create_connection(("127.0.0.1", fresh.envoy_port))
    t=time.monotonic()
    seen = Counter(raw_get(s, REVIEWS, "/split") for _ in range(2000))
    print("envoy raw", seen, (time.monotonic()-t)/2, "ms/req")
    s = socket.create_connection(("127.0.0.1", fresh.sidecar.outbound))
    t=time.monotonic()
    seen = Counter(raw_get(s, REVIEWS, f"http://{REVIEWS}/split") for _ in range(2000))
    print("sidecar raw", seen, (time.monotonic()-t)/2, "ms/req")
    # direct upstream
    s = socket.create_connection(("127.0.0.1", fresh.upstreams["a"].port))
    t=time.monotonic()
    seen = Counter(raw_get(s, REVIEWS, "/split") for _ in range(2000))
    print("upstream raw", seen, (time.monotonic()-t)/2, "ms/req")
    t=time.monotonic()
    seen = Counter(fresh.in_process.get(REVIEWS, "/split").upstream for _ in range(2000))
    print("meshlib", seen, (time.monotonic()-t)/2, "ms/req")
