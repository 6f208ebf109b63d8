#!/usr/bin/env python3
"""Sequential FastCGI load loop: N requests, one at a time, like nginx does
per upstream connection.

usage: fcgi_bench.py SOCKET SCRIPT_FILENAME [-n N] [--keep] [--warm W]

Without --keep every request opens a new connection (nginx's default, no
FCGI_KEEP_CONN); with --keep all requests share one connection. Params mimic
nginx's fastcgi_params so the worker does realistic work. Prints requests/s
and latency percentiles.
"""
import argparse, socket, struct, time

def rec(t, rid, content=b''):
    pad = (8 - len(content) % 8) % 8
    return struct.pack('>BBHHBB', 1, t, rid, len(content), pad, 0) + content + b'\0' * pad

def pairs(d):
    out = b''
    for k, v in d.items():
        k, v = k.encode(), v.encode()
        for n in (len(k), len(v)):
            out += bytes([n]) if n < 128 else struct.pack('>I', n | 0x80000000)
        out += k + v
    return out

def nginx_params(script):
    name = '/' + script.rsplit('/', 1)[-1]
    return {
        'QUERY_STRING': '', 'REQUEST_METHOD': 'GET', 'CONTENT_TYPE': '', 'CONTENT_LENGTH': '',
        'SCRIPT_NAME': name, 'REQUEST_URI': name, 'DOCUMENT_URI': name,
        'DOCUMENT_ROOT': script.rsplit('/', 1)[0], 'SERVER_PROTOCOL': 'HTTP/1.1',
        'REQUEST_SCHEME': 'http', 'GATEWAY_INTERFACE': 'CGI/1.1', 'SERVER_SOFTWARE': 'nginx/1.22.1',
        'REMOTE_ADDR': '127.0.0.1', 'REMOTE_PORT': '51234', 'SERVER_ADDR': '127.0.0.1',
        'SERVER_PORT': '80', 'SERVER_NAME': 'localhost', 'REDIRECT_STATUS': '200',
        'SCRIPT_FILENAME': script, 'HTTP_HOST': 'localhost', 'HTTP_USER_AGENT': 'wrk',
        'HTTP_ACCEPT': '*/*',
    }

def request_bytes(script, keep, rid=1):
    p = pairs(nginx_params(script))
    return (rec(1, rid, struct.pack('>HB5x', 1, 1 if keep else 0)) + rec(4, rid, p) + rec(4, rid)
            + rec(5, rid))

def read_until_end(s, buf):
    """Read records until END_REQUEST; returns leftover bytes."""
    while True:
        while len(buf) >= 8:
            _, t, _, clen, plen, _ = struct.unpack('>BBHHBB', buf[:8])
            if len(buf) < 8 + clen + plen:
                break
            buf = buf[8 + clen + plen:]
            if t == 3:
                return buf
        chunk = s.recv(262144)
        if not chunk:
            raise RuntimeError('connection closed before END_REQUEST')
        buf += chunk

def run(sock, script, n, keep):
    req = request_bytes(script, keep)
    lat = []
    t0 = time.perf_counter()
    s = None
    buf = b''
    for _ in range(n):
        t = time.perf_counter()
        if s is None:
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock)
        s.sendall(req)
        buf = read_until_end(s, buf)
        if not keep:
            s.close()
            s = None
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    if s is not None:
        s.close()
    lat.sort()
    return n / total, lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6

if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('socket'); ap.add_argument('script')
    ap.add_argument('-n', type=int, default=20000)
    ap.add_argument('--keep', action='store_true')
    ap.add_argument('--warm', type=int, default=500)
    a = ap.parse_args()
    run(a.socket, a.script, a.warm, a.keep)
    rps, p50, p99 = run(a.socket, a.script, a.n, a.keep)
    print(f'{rps:.0f} req/s  p50 {p50:.0f} us  p99 {p99:.0f} us  ({a.n} requests, '
          f'{"keep-alive" if a.keep else "new connection each"})')
