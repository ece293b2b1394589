#!/usr/bin/env python3
"""Runs request cases with Python's http.client or requests and prints one JSON result a line.

usage: client.py http.client|requests CASES.json

CASES.json is a list of cases (see clients/clients_test.go, type clientCase). For http.client,
cases run in order on one connection per distinct host:port, as a legacy service with one
persistent connection does; a case that hangs up closes it.
"""
import base64
import http.client
import json
import sys
import time
import urllib.parse


def now_ms():
    return time.time() * 1000.0


def body_of(case):
    if not case.get("body_file"):
        return None
    with open(case["body_file"], "rb") as f:
        return f.read()


def chunks_of(case, body):
    out, pos = [], 0
    for n in case.get("chunks") or []:
        out.append(body[pos:pos + n])
        pos += n
    if pos < len(body):
        out.append(body[pos:])
    return out


def result(case, status=0, headers=(), body=b"", **extra):
    r = {"id": case["id"], "status": status,
         "headers": [[k.lower(), v] for k, v in headers],
         "body_b64": base64.b64encode(body).decode()}
    r.update(extra)
    return r


def read_sse(case, read_line):
    events, data = [], []
    while True:
        line = read_line()
        if not line:
            break
        line = line.rstrip(b"\r\n")
        if line.startswith(b"data:"):
            data.append(line[5:].strip().decode())
        elif line == b"" and data:
            events.append({"t": now_ms(), "data": "\n".join(data)})
            data = []
    return events


class HTTPClientRunner:
    def __init__(self):
        self.conns = {}

    def conn(self, netloc):
        c = self.conns.get(netloc)
        if c is None:
            host, port = netloc.rsplit(":", 1)
            c = http.client.HTTPConnection(host, int(port), timeout=10)
            self.conns[netloc] = c
        return c

    def run(self, case):
        u = urllib.parse.urlsplit(case["url"])
        target = u.path + ("?" + u.query if u.query else "")
        c = self.conn(u.netloc)
        body = body_of(case)
        try:
            return self._run(case, c, target, body)
        except Exception as e:  # report, and start the next case on a new connection
            c.close()
            self.conns.pop(u.netloc, None)
            return result(case, error=repr(e))

    def _run(self, case, c, target, body):
        continues = 0
        c.putrequest(case["method"], target, skip_accept_encoding=True)
        for k, v in case.get("headers") or []:
            c.putheader(k, v)
        chunked = case.get("chunks") is not None and body is not None
        if body is not None:
            if chunked:
                c.putheader("Transfer-Encoding", "chunked")
            else:
                c.putheader("Content-Length", str(len(body)))
        if case.get("expect"):
            c.putheader("Expect", "100-continue")
        c.endheaders()
        if case.get("expect") and body is not None:
            # http.client has no Expect support: read the interim response by hand, a byte at a
            # time so that nothing after it is taken from the connection's buffer.
            c.sock.settimeout(5)
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                b = c.sock.recv(1)
                if not b:
                    raise ConnectionError("closed while waiting for 100 Continue")
                head += b
            if not head.startswith(b"HTTP/1.1 100"):
                raise ConnectionError("expected 100 Continue, got %r" % head[:40])
            continues += 1
            c.sock.settimeout(10)
        if body is not None:
            if chunked:
                for part in chunks_of(case, body):
                    c.send(b"%x\r\n%s\r\n" % (len(part), part))
                c.send(b"0\r\n\r\n")
            else:
                c.send(body)
        resp = c.getresponse()
        extra = {"continues": continues}
        read = case.get("read", "full")
        if read == "sse":
            extra["events"] = read_sse(case, resp.readline)
            data = b""
        elif read == "hangup":
            data = resp.read(case.get("hangup_after", 1))
            c.sock.shutdown(2)
            c.close()
            self.conns.clear()
        else:
            data = resp.read()
        return result(case, resp.status, resp.getheaders(), data, **extra)


class RequestsRunner:
    def __init__(self):
        import requests
        self.requests = requests
        self.session = requests.Session()

    def run(self, case):
        try:
            return self._run(case)
        except Exception as e:
            return result(case, error=repr(e))

    def _run(self, case):
        headers = {k: v for k, v in case.get("headers") or []}
        if case.get("expect"):
            headers["Expect"] = "100-continue"  # requests does not wait: the body follows at once
        body = body_of(case)
        data = body
        if body is not None and case.get("chunks") is not None:
            parts = chunks_of(case, body)
            data = (p for p in parts)  # a generator: requests sends it chunked
        read = case.get("read", "full")
        # requests re-quotes URLs it finds invalid; a PreparedRequest sends the URL as given.
        req = self.requests.Request(case["method"], case["url"], headers=headers, data=data)
        prep = self.session.prepare_request(req)
        prep.url = case["url"]
        resp = self.session.send(prep, stream=True, timeout=10, allow_redirects=False)
        extra = {"decoded": True}
        if read == "sse":
            events = []
            data_lines = []
            for line in resp.iter_lines(chunk_size=1):
                if line.startswith(b"data:"):
                    data_lines.append(line[5:].strip().decode())
                elif line == b"" and data_lines:
                    events.append({"t": now_ms(), "data": "\n".join(data_lines)})
                    data_lines = []
            extra["events"] = events
            content = b""
        elif read == "hangup":
            content = resp.raw.read(case.get("hangup_after", 1))
            resp.close()  # not read to the end: urllib3 closes the connection
        else:
            content = resp.content  # decoded, as requests users read it
        return result(case, resp.status_code, resp.raw.headers.items(), content, **extra)


def main():
    mode, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        cases = json.load(f)
    runner = HTTPClientRunner() if mode == "http.client" else RequestsRunner()
    for case in cases:
        start = now_ms()
        r = runner.run(case)
        r["ms"] = now_ms() - start
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
