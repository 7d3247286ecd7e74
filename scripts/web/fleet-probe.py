#!/usr/bin/env python3
"""Polls every host's page during a deploy and records when each first serves the new release.

    fleet-probe.py --want TEXT --ready FILE --timeout SECS [--settle SECS] [--interval SECS] URL...

One thread per URL, each on its own keep-alive connection, polls with --interval (default 1 ms)
between an answer and the next request: a pause short against any spread worth measuring, long
enough that eight pollers leave the deploy tool the CPU of a 2-core machine. Once every URL has answered, FILE is created (the deploy may
start). A URL is done when it has served TEXT for --settle seconds; the probe stops when all are
done or after --timeout. Prints one line:

    PROBE hosts=N switched=N spread_ms=X resolution_ms=R non200=N errors=N flaps=N polls=N

spread_ms: max - min of the first-new-response instants (the wall clock of the moment the
request that first saw TEXT was sent); resolution_ms: the largest gap between a host's last old
answer and its first new one (the spread is known to within it); flaps: an old answer after a new
one. Exit 0 when every URL switched, 1 when one did not (the line says how many).
"""
import argparse
import http.client
import os
import sys
import threading
import time
import urllib.parse


class Host:
    def __init__(self, url):
        self.url = urllib.parse.urlsplit(url)
        self.first_new = None  # send time of the first request answered with the new release
        self.last_old = None  # send time of the last request answered with another one
        self.answered = False
        self.non200 = 0
        self.errors = 0
        self.flaps = 0
        self.polls = 0
        self.done = False


def poll(host, want, settle, interval, stop):
    conn = None
    path = host.url.path or "/"
    while not stop.is_set() and not host.done:
        if conn is None:
            conn = http.client.HTTPConnection(host.url.hostname, host.url.port, timeout=5)
        sent = time.time()
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace").strip()
        except (OSError, http.client.HTTPException):
            # A keep-alive connection closed by the server between requests is not a failed
            # request: reconnect once; a second failure in a row counts.
            conn.close()
            conn = http.client.HTTPConnection(host.url.hostname, host.url.port, timeout=5)
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read().decode(errors="replace").strip()
            except (OSError, http.client.HTTPException):
                host.errors += 1
                conn.close()
                conn = None
                time.sleep(0.01)
                continue
        host.polls += 1
        host.answered = True
        time.sleep(interval)
        if resp.status != 200:
            host.non200 += 1
            continue
        if body == want:
            if host.first_new is None:
                host.first_new = sent
            elif sent - host.first_new >= settle:
                host.done = True
        else:
            if host.first_new is not None:
                host.flaps += 1
            host.last_old = sent
    if conn is not None:
        conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--want", required=True)
    ap.add_argument("--ready", required=True)
    ap.add_argument("--timeout", type=float, required=True)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--interval", type=float, default=0.001)
    ap.add_argument("urls", nargs="+")
    args = ap.parse_args()
    hosts = [Host(u) for u in args.urls]
    stop = threading.Event()
    threads = [threading.Thread(target=poll, args=(h, args.want, args.settle, args.interval, stop), daemon=True)
               for h in hosts]
    for t in threads:
        t.start()
    deadline = time.monotonic() + args.timeout
    ready = False
    while time.monotonic() < deadline and not all(h.done for h in hosts):
        if not ready and all(h.answered for h in hosts):
            with open(args.ready, "w") as f:
                f.write("ready\n")
            ready = True
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    firsts = [h.first_new for h in hosts if h.first_new is not None]
    spread = (max(firsts) - min(firsts)) * 1000 if len(firsts) == len(hosts) else -1
    gaps = [(h.first_new - h.last_old) * 1000 for h in hosts
            if h.first_new is not None and h.last_old is not None]
    print("PROBE hosts=%d switched=%d spread_ms=%.3f resolution_ms=%.3f non200=%d errors=%d "
          "flaps=%d polls=%d" % (
              len(hosts), len(firsts), spread, max(gaps) if gaps else -1,
              sum(h.non200 for h in hosts), sum(h.errors for h in hosts),
              sum(h.flaps for h in hosts), sum(h.polls for h in hosts)))
    for h in hosts:
        print("HOST %s first_new=%s last_old=%s non200=%d errors=%d polls=%d" % (
            h.url.netloc, "%.6f" % h.first_new if h.first_new else "-",
            "%.6f" % h.last_old if h.last_old else "-", h.non200, h.errors, h.polls))
    sys.stdout.flush()
    return 0 if len(firsts) == len(hosts) else 1


if __name__ == "__main__":
    sys.exit(main())
