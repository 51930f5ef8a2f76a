"""Django's Redis cache and cache sessions on a sessmesh cluster, from two app instances.

    python3 django_sessions.py 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7003

Run by tests/middlewares.rs against three `sessmesh serve` processes. For
each of databases 0 and 1 it starts two instances of django_app.py, each in
its own process with its own settings: A with its cache LOCATION on node 1
(redis://node1/<db>), B on node 2. A session started on A is read and
changed on B and back, the cache API is used across the two, and redis-py
on node 3 checks what landed in which database, that keys of database 1 are
not in database 0, and that cache.clear() (FLUSHDB) empties one database
only. Prints each check and exits 1 if any failed.
"""

import multiprocessing
import sys
import uuid

import redis

import checks
import django_app

SESSION_PREFIX = ":1:django.contrib.sessions.cache"
# Django's SESSION_COOKIE_AGE (two weeks): the TTL of a session's key.
COOKIE_AGE = 1209600
RUN = uuid.uuid4().hex[:8]


def key(name):
    """A cache key of this run, as given to the cache API."""
    return f"{RUN}:{name}"


def stored(name):
    """The Redis key Django stores cache key `name` under."""
    return f":1:{key(name)}"


class Instance:
    """One app instance: its own process, running django_app with its own settings."""

    def __init__(self, name, node, db):
        context = multiprocessing.get_context("spawn")
        self.pool = context.Pool(
            1, initializer=django_app.start, initargs=(name, f"redis://{node}/{db}")
        )

    def page(self, url, session_key=None):
        return self.pool.apply(django_app.page, (url, session_key))

    def cache(self, method, *args, **kwargs):
        return self.pool.apply(django_app.cache_call, (method, *args), kwargs)

    def close(self):
        self.pool.terminate()
        self.pool.join()


def session_moves_between_instances(apps, raw, other_raw, db):
    a, b = apps
    # A new session: SessionMiddleware saves it with cache.add (SET NX EX).
    body, sid = a.page("/count/")
    assert body == {"n": 1, "seen": ["A"]}, body
    assert sid, "A set no session cookie"
    assert raw.exists(SESSION_PREFIX + sid) == 1, f"no session key in db {db}"
    ttl = raw.ttl(SESSION_PREFIX + sid)
    assert COOKIE_AGE - 10 <= ttl <= COOKIE_AGE, ttl
    assert other_raw.exists(SESSION_PREFIX + sid) == 0, f"db {db}'s session is in db {1 - db}"
    # Read and changed on B (GET, then GET and SET EX), then on A again.
    body, again = b.page("/count/", sid)
    assert body == {"n": 2, "seen": ["A", "B"]}, body
    assert again == sid, (again, sid)
    body, _ = a.page("/count/", sid)
    assert body == {"n": 3, "seen": ["A", "B", "A"]}, body
    # Login on B: cycle_key adds the data under a new key, then deletes the old one.
    body, new = b.page("/login/", sid)
    assert new and new != sid, (new, sid)
    assert body == {"n": 3, "seen": ["A", "B", "A"], "user": "ada"}, body
    assert raw.exists(SESSION_PREFIX + sid) == 0, "cycle_key left the old key"
    assert raw.exists(SESSION_PREFIX + new) == 1, "cycle_key wrote no new key"
    body, _ = a.page("/count/", new)
    assert body == {"n": 4, "seen": ["A", "B", "A", "A"]}, body
    assert a.page("/peek/", new)[0]["user"] == "ada"
    # The old session key is worth nothing on either instance.
    assert a.page("/peek/", sid)[0] == {}
    assert b.page("/peek/", sid)[0] == {}
    # Logout on A (DEL); B then finds no session.
    body, cleared = a.page("/logout/", new)
    assert cleared == "", f"logout did not clear the cookie: {cleared!r}"
    assert raw.exists(SESSION_PREFIX + new) == 0, "logout left the session key"
    assert b.page("/peek/", new)[0] == {}


def cache_api_across_instances(apps, raw, db):
    a, b = apps
    # set_many: MULTI, MSET, EXPIRE per key, EXEC.
    assert a.cache("set_many", {key("a"): 1, key("b"): "two", key("c"): [3, "drei"]}, 100) == []
    got = b.cache("get_many", [key("a"), key("b"), key("c"), key("none")])
    assert got == {key("a"): 1, key("b"): "two", key("c"): [3, "drei"]}, got
    assert raw.get(stored("a")) == b"1", "Django stores integers unpickled"
    for name in "abc":
        assert 99 <= raw.ttl(stored(name)) <= 100, (name, raw.ttl(stored(name)))
    # incr: EXISTS, then INCRBY; decr is incr by minus the delta.
    assert b.cache("incr", key("a"), 41) == 42
    assert a.cache("get", key("a")) == 42
    assert a.cache("decr", key("a"), 2) == 40
    assert b.cache("get", key("a")) == 40
    try:
        a.cache("incr", key("none"))
        raise AssertionError("incr of a missing key must raise ValueError")
    except ValueError:
        pass
    # add: SET NX EX, refused when the key exists.
    assert a.cache("add", key("b"), "other") is False
    assert b.cache("get", key("b")) == "two"
    assert b.cache("add", key("new"), {"x": 1}, 60) is True
    assert a.cache("get", key("new")) == {"x": 1}
    assert 59 <= raw.ttl(stored("new")) <= 60
    # touch: EXPIRE, or PERSIST for no timeout.
    assert a.cache("touch", key("new"), 500) is True
    assert 499 <= raw.ttl(stored("new")) <= 500
    assert b.cache("touch", key("new"), None) is True
    assert raw.ttl(stored("new")) == -1
    assert a.cache("touch", key("none"), 10) is False
    assert a.cache("has_key", key("b")) is True
    assert b.cache("has_key", key("none")) is False
    # delete: DEL, True only if something was deleted.
    assert b.cache("delete", key("new")) is True
    assert a.cache("get", key("new")) is None
    assert a.cache("delete", key("new")) is False
    # A value of this database, kept without expiry, for the checks below.
    a.cache("set", key("where"), f"db {db}", None)
    assert b.cache("get", key("where")) == f"db {db}"
    assert raw.ttl(stored("where")) == -1


def databases_are_separate(apps, raws):
    # Both databases hold key("where"), each its own value.
    assert apps[0][1].cache("get", key("where")) == "db 0"
    assert apps[1][1].cache("get", key("where")) == "db 1"
    apps[1][0].cache("set", key("only-in-1"), "x", 100)
    assert raws[1].exists(stored("only-in-1")) == 1
    assert raws[0].exists(stored("only-in-1")) == 0, "a key of db 1 is visible in db 0"
    assert apps[0][1].cache("get", key("only-in-1")) is None
    assert list(raws[0].scan_iter(match=stored("only-*"))) == []
    # SELECT on one connection moves it between the two.
    node3 = raws[0]
    assert node3.execute_command("SELECT", 1) in (True, b"OK")
    assert node3.exists(stored("only-in-1")) == 1
    assert node3.execute_command("SELECT", 0) in (True, b"OK")
    assert node3.exists(stored("only-in-1")) == 0


def clear_empties_one_database(apps, raws):
    (a0, b0), (a1, b1) = apps
    # A live session and the values of checks above in each database.
    _, live0 = a0.page("/count/")
    _, live1 = a1.page("/count/")
    a0.cache("set_many", {key("kept"): "zero"}, 100)
    a1.cache("set_many", {key("gone"): "one"}, 100)
    assert b1.cache("get", key("gone")) == "one"
    # cache.clear() on A, in db 1: FLUSHDB.
    assert a1.cache("clear") is True
    assert b1.cache("get_many", [key("gone"), key("where"), key("only-in-1")]) == {}
    assert b1.page("/peek/", live1)[0] == {}, "db 1's session outlived FLUSHDB"
    assert raws[1].dbsize() == 0, raws[1].dbsize()
    # Database 0 is untouched.
    assert b0.cache("get", key("kept")) == "zero"
    assert b0.cache("get", key("where")) == "db 0"
    assert b0.page("/peek/", live0)[0]["n"] == 1, "db 0's session went with db 1's FLUSHDB"
    # And clear() in db 0 empties it too.
    assert a0.cache("clear") is True
    assert b0.cache("get_many", [key("kept"), key("where")]) == {}
    assert b0.page("/peek/", live0)[0] == {}
    assert raws[0].dbsize() == 0, raws[0].dbsize()


def main():
    nodes = sys.argv[1:]
    assert len(nodes) == 3, "usage: django_sessions.py NODE1 NODE2 NODE3"
    host, port = nodes[2].rsplit(":", 1)
    raws = [redis.Redis(host=host, port=int(port), db=db, socket_timeout=10) for db in (0, 1)]
    apps = [(Instance("A", nodes[0], db), Instance("B", nodes[1], db)) for db in (0, 1)]
    try:
        import django

        print(f"Django {django.__version__}, redis-py {redis.__version__}", flush=True)
        checks.run(
            "django",
            [
                (
                    f"db {db}: a session moves between the two instances",
                    lambda db=db: session_moves_between_instances(
                        apps[db], raws[db], raws[1 - db], db
                    ),
                )
                for db in (0, 1)
            ]
            + [
                (
                    f"db {db}: set_many, get_many, incr, add, touch, delete across the two",
                    lambda db=db: cache_api_across_instances(apps[db], raws[db], db),
                )
                for db in (0, 1)
            ]
            + [
                ("db 1's keys are not in db 0", lambda: databases_are_separate(apps, raws)),
                (
                    "clear() (FLUSHDB) on A empties one database for B",
                    lambda: clear_empties_one_database(apps, raws),
                ),
            ],
        )
    finally:
        for pair in apps:
            for app in pair:
                app.close()


if __name__ == "__main__":
    main()
