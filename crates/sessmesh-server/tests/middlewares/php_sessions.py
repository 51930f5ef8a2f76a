"""phpredis's session handler, with locking, on a sessmesh cluster.

    python3 php_sessions.py http://127.0.0.1:8001 http://127.0.0.1:8002 \\
        127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7003

Run by tests/middlewares.rs, which starts the two app instances, PHP's
built-in web server running php/app.php: A with session.save_path on node 1,
B on node 2, both with redis.session.locking_enabled=1 (php/app.php says
what phpredis sends). This script requests them and looks at the keys with
redis-py on all three nodes:

1. consecutive requests on one session, alternating between A and B, each
   see the last one's write, each held the lock, and once a request has
   answered its lock key is gone from every node;
2. concurrent requests on one session, half on A and half on B, never hold
   the lock together: each counts itself in a key of its own while inside
   and none saw another there; no update is lost;
3. the control: without the lock, two requests are inside together, so the
   counting in 2 would see it.

Prints each check and exits 1 if any failed.
"""

import http.client
import json
import sys
import threading
import time
import urllib.parse

import redis

import checks

# phpredis's lock release, by hash then by text (redis_session.c).
RELEASE_SHA = "b70c2384248f88e6b75b9f89241a180f856ad852"
RELEASE_LUA = (
    'if redis.call("get",KEYS[1]) == ARGV[1] then return redis.call("del",KEYS[1]) '
    "else return 0 end"
)


class App:
    """One app instance, a `php -S` serving php/app.php."""

    def __init__(self, name, url):
        self.name = name
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname, parsed.port

    def get(self, sid=None, **query):
        """Requests the page with session cookie `sid`; returns its JSON and the cookie it set."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            headers = {"Cookie": f"PHPSESSID={sid}"} if sid else {}
            connection.request("GET", "/?" + urllib.parse.urlencode(query), headers=headers)
            response = connection.getresponse()
            body = response.read().decode()
            assert response.status == 200, f"{self.name}: HTTP {response.status}: {body}"
            cookie = None
            for name, value in response.getheaders():
                if name.lower() == "set-cookie" and value.startswith("PHPSESSID="):
                    cookie = value.split(";", 1)[0].split("=", 1)[1]
            try:
                return json.loads(body), cookie
            except ValueError:
                raise AssertionError(f"{self.name} did not answer JSON: {body}") from None
        finally:
            connection.close()


def lock_key(sid):
    return f"PHPREDIS_SESSION:{sid}_LOCK"


def release_replies(node):
    """What the node answers to phpredis's lock release, on a key of no session."""
    replies = []
    for command in (("EVALSHA", RELEASE_SHA), ("EVAL", RELEASE_LUA)):
        try:
            reply = node.execute_command(*command, 1, "release-probe_LOCK", "nobody|0")
            replies.append(f"{command[0]} -> {reply!r}")
        except redis.ResponseError as e:
            replies.append(f"{command[0]} -> error {e}")
    return "; ".join(replies)


def assert_lock_gone(nodes, sid, after, notices):
    for i, node in enumerate(nodes, start=1):
        value = node.get(lock_key(sid))
        assert value is None, (
            f"after {after} answered, {lock_key(sid)} is still on node {i} (value {value!r}); "
            f"the request's PHP notices: {notices}; the node answers the release with: "
            f"{release_replies(node)}"
        )


def consecutive_requests_alternate(apps, nodes):
    sid = None
    for i in range(1, 9):
        app = apps[(i - 1) % 2]
        page, cookie = app.get(sid, mode="count")
        if sid is None:
            assert cookie, "a new session set no PHPSESSID cookie"
            sid = cookie
        assert page["sid"] == sid, page
        # Each request sees the last one's write, made through the other node.
        assert page["n"] == i, f"request {i} on {app.name} read n={page['n']}"
        assert page["by"] == ["AB"[k % 2] for k in range(i)], page["by"]
        assert page["held"], (
            f"request {i} on {app.name} did not hold the lock: its value was "
            f"{page['lock_value']!r}, notices {page['notices']}"
        )
        assert_lock_gone(nodes, sid, f"request {i} on {app.name}", page["notices"])
        assert page["written"] is True, f"session_write_close failed: {page['notices']}"
        assert page["notices"] == [], page["notices"]
        # The session itself, as PHP serialized it, with SETEX's TTL.
        stored = nodes[2].get(f"PHPREDIS_SESSION:{sid}")
        assert stored is not None and f"n|i:{i};" in stored, stored
        ttl = nodes[2].ttl(f"PHPREDIS_SESSION:{sid}")
        assert page["gc_maxlifetime"] - 10 <= ttl <= page["gc_maxlifetime"], ttl


def concurrently(calls):
    """Runs `calls` in threads released together; returns (start, end, result or exception) of each."""
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def run(k):
        barrier.wait()
        started = time.monotonic()
        try:
            result = calls[k]()
        except Exception as e:  # noqa: BLE001 - the caller reports it
            result = e
        results[k] = (started, time.monotonic(), result)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a request did not finish in 120 s"
    return results


def concurrent_requests_never_share_the_lock(apps, nodes):
    first, sid = apps[0].get(mode="count")
    assert first["n"] == 1 and sid
    count = 12
    results = concurrently(
        [lambda k=k: apps[k % 2].get(sid, mode="overlap", hold_ms=100)[0] for k in range(count)]
    )
    # The requests were in flight together (else this shows nothing).
    spans = sorted((start, end) for start, end, _ in results)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), "no two requests were in flight together"
    failed = sorted({str(r) for _, _, r in results if isinstance(r, Exception)})
    pages = [r for _, _, r in results if not isinstance(r, Exception)]
    problems = []
    for page in pages:
        if not page["held"]:
            problems.append(
                f"a request on {page['instance']} (pid {page['pid']}) did not hold the lock: "
                f"its value was {page['lock_value']!r}, notices {page['notices']}"
            )
        if page["inside"] != 1:
            problems.append(f"a request on {page['instance']} found {page['inside']} requests inside")
        if page["written"] is not True:
            problems.append(f"a request on {page['instance']} did not write: {page['notices']}")
    # Their times inside the session, by the same clock, do not overlap.
    inside = sorted((page["in_at"], page["out_at"]) for page in pages)
    for a, b in zip(inside, inside[1:]):
        if b[0] < a[1]:
            problems.append(f"two requests were inside together: {a} and {b}")
    assert not failed and not problems, (
        f"{count - len(pages)} of {count} requests failed ({failed}); "
        f"among the {len(pages)} that answered: {problems or 'no overlap'}"
    )
    # No update was lost: each request read the one before it.
    assert sorted(page["n"] for page in pages) == list(range(2, count + 2)), sorted(p["n"] for p in pages)
    last, _ = apps[1].get(sid, mode="count")
    assert last["n"] == count + 2, last["n"]
    assert_lock_gone(nodes, sid, "the last request", last["notices"])
    for node in nodes:
        assert node.get(f"inside:{sid}") == "0"


def without_the_lock_requests_overlap(apps, nodes):
    _, sid = apps[0].get(mode="count")
    results = concurrently(
        [lambda app=app: app.get(sid, mode="rendezvous", lock="0")[0] for app in apps]
    )
    for _, _, page in results:
        if isinstance(page, Exception):
            raise page
        assert page["inside"] == 2, (
            f"without the lock, a request on {page['instance']} saw {page['inside']} inside"
        )


def main():
    assert len(sys.argv) == 6, "usage: php_sessions.py URL_A URL_B NODE1 NODE2 NODE3"
    apps = [App("A", sys.argv[1]), App("B", sys.argv[2])]
    nodes = []
    for node in sys.argv[3:]:
        host, port = node.rsplit(":", 1)
        nodes.append(redis.Redis(host=host, port=int(port), decode_responses=True, socket_timeout=10))
    checks.run(
        "phpredis sessions",
        [
            (
                "consecutive requests alternate between A and B, see each other's writes, leave no lock",
                lambda: consecutive_requests_alternate(apps, nodes),
            ),
            (
                "concurrent requests on one session, on A and B, never hold the lock together",
                lambda: concurrent_requests_never_share_the_lock(apps, nodes),
            ),
            (
                "the control: without the lock, two requests are inside together",
                lambda: without_the_lock_requests_overlap(apps, nodes),
            ),
        ],
    )


if __name__ == "__main__":
    main()
