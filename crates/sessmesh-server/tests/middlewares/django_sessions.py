"""Django's Redis caches and cache sessions on a sessmesh cluster, from two app instances.

    python3 django_sessions.py 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7003

Run by tests/middlewares.rs against three `sessmesh serve` processes. For
each of two cache backends, Django's own (django.core.cache.backends.redis)
and django-redis (django_redis.cache.RedisCache), and each of databases 0
and 1, it starts two instances of django_app.py, each in its own process
with its own settings: A with its cache LOCATION on node 1
(redis://node1/<db>), B on node 2. A session started on A is read and
changed on B and back, the cache API is used across the two, and redis-py
on node 3 checks what landed in which database, that keys of database 1 are
not in database 0, and that cache.clear() (FLUSHDB) empties one database
only. With django-redis the two instances also use its own API: incr and
decr by script (also from both instances at once), ttl, persist, expire,
keys, iter_keys and delete_pattern (SCAN), and a lock one instance holds
while the other waits for it; what each call sent is checked too
(django_app.SENT), so a node that refused a script is not hidden by
django-redis's fallback. Prints each check and exits 1 if any failed.
"""

import multiprocessing
import sys
import uuid

import redis
from redis.exceptions import LockNotOwnedError

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

    def __init__(self, name, node, db, backend="django"):
        context = multiprocessing.get_context("spawn")
        self.pool = context.Pool(
            1, initializer=django_app.start, initargs=(name, f"redis://{node}/{db}", backend)
        )

    def page(self, url, session_key=None):
        return self.pool.apply(django_app.page, (url, session_key))

    def cache(self, method, *args, **kwargs):
        return self.pool.apply(django_app.cache_call, (method, *args), kwargs)

    def sent(self, method, *args, **kwargs):
        """The cache call's result and the commands it sent (django-redis only)."""
        return self.pool.apply(django_app.sent, (method, *args), kwargs)

    def call(self, function, *args):
        """Runs django_app.<function>(*args) in this instance's process."""
        return self.pool.apply(getattr(django_app, function), args)

    def begin(self, function, *args):
        """Starts django_app.<function>(*args) in this instance's process; answers
        a multiprocessing AsyncResult to .get() its result from."""
        return self.pool.apply_async(getattr(django_app, function), args)

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


# django-redis. Its keys are named "dr-..." so that they are apart from
# those of the checks of Django's own backend above.


def expect(got, want):
    """Asserts got == want: a call's (result, what it sent), shown if it differs."""
    assert got == want, f"answered and sent {got}, not {want}"


def ran_script(sent, what):
    """Asserts that `sent` ran a script by EVALSHA and met no error but NOSCRIPT.

    A node that has not seen a script answers EVALSHA with NOSCRIPT, and
    redis-py then sends SCRIPT LOAD and EVALSHA again.
    """
    errors = [s for s in sent if s.startswith("error:") and "NoScriptError" not in s]
    assert not errors and sent[-1:] == ["EVALSHA"], f"{what} sent {sent}"


def redis_cache_api_across_instances(apps, raw, db):
    a, b = apps
    # set_many: a MULTI of SET k v PX t; get_many: MGET.
    data = {key("dr-a"): 1, key("dr-b"): "two", key("dr-c"): [3, "drei"]}
    expect(a.sent("set_many", data, 100), (None, ["MULTI", "SET", "SET", "SET", "EXEC"]))
    names = [key("dr-a"), key("dr-b"), key("dr-c"), key("dr-none")]
    expect(b.sent("get_many", names), (data, ["MGET"]))
    assert raw.get(stored("dr-a")) == b"1", "django-redis stores integers unpickled"
    for name in ("dr-a", "dr-b", "dr-c"):
        assert 99 <= raw.ttl(stored(name)) <= 100, (name, raw.ttl(stored(name)))
    # add: SET NX PX, refused when the key exists.
    expect(a.sent("add", key("dr-b"), "other"), (False, ["SET"]))
    assert b.cache("get", key("dr-b")) == "two"
    expect(b.sent("add", key("dr-new"), {"x": 1}, 60), (True, ["SET"]))
    assert a.cache("get", key("dr-new")) == {"x": 1}
    assert 59 <= raw.ttl(stored("dr-new")) <= 60, raw.ttl(stored("dr-new"))
    # touch: PEXPIRE in milliseconds, or PERSIST for no timeout.
    expect(a.sent("touch", key("dr-new"), 500), (True, ["PEXPIRE"]))
    assert 499 <= raw.ttl(stored("dr-new")) <= 500, raw.ttl(stored("dr-new"))
    expect(b.sent("touch", key("dr-new"), None), (True, ["PERSIST"]))
    assert raw.ttl(stored("dr-new")) == -1
    assert a.cache("touch", key("dr-none"), 10) is False
    # ttl: EXISTS, then TTL; None for no expiry, 0 for no key.
    ttl, sent = b.sent("ttl", key("dr-a"))
    assert 99 <= ttl <= 100 and sent == ["EXISTS", "TTL"], (ttl, sent)
    assert a.cache("ttl", key("dr-new")) is None
    assert a.cache("ttl", key("dr-none")) == 0
    # expire: EXPIRE in seconds; persist: PERSIST.
    expect(b.sent("expire", key("dr-new"), 30), (True, ["EXPIRE"]))
    assert 29 <= raw.ttl(stored("dr-new")) <= 30, raw.ttl(stored("dr-new"))
    assert 29 <= a.cache("ttl", key("dr-new")) <= 30
    expect(a.sent("persist", key("dr-new")), (True, ["PERSIST"]))
    assert raw.ttl(stored("dr-new")) == -1
    assert b.cache("ttl", key("dr-new")) is None
    assert b.cache("persist", key("dr-none")) is False
    assert b.cache("expire", key("dr-none"), 30) is False
    # has_key: EXISTS; delete: DEL, True only if something was deleted.
    assert a.cache("has_key", key("dr-b")) is True
    assert b.cache("has_key", key("dr-none")) is False
    expect(b.sent("delete", key("dr-new")), (True, ["DEL"]))
    assert a.cache("get", key("dr-new")) is None
    assert a.cache("delete", key("dr-new")) is False


def redis_incr_by_script(apps, raw):
    a, b = apps
    # incr and decr are one EVAL each: EXISTS, then INCRBY, in the script.
    assert a.cache("set", key("dr-n"), 1, 100) is True
    expect(b.sent("incr", key("dr-n"), 41), (42, ["EVAL"]))
    assert raw.get(stored("dr-n")) == b"42"
    assert 99 <= raw.ttl(stored("dr-n")) <= 100, "INCRBY in the script lost the TTL"
    expect(a.sent("decr", key("dr-n"), 2), (40, ["EVAL"]))
    assert b.cache("get", key("dr-n")) == 40
    # The script answers false (nil) for a missing key: ValueError, and no key.
    try:
        a.cache("incr", key("dr-none"))
        raise AssertionError("incr of a missing key must raise ValueError")
    except ValueError:
        pass
    assert raw.exists(stored("dr-none")) == 0, "incr of a missing key created it"
    # ignore_key_check=True: the script is INCRBY alone, creating the key.
    expect(b.sent("incr", key("dr-fresh"), 5, ignore_key_check=True), (5, ["EVAL"]))
    assert raw.ttl(stored("dr-fresh")) == -1


def redis_incr_from_both_at_once(apps, raw):
    # 25 incr on each instance at once, from 40: every one a single EVAL
    # answered with its value, none lost or counted twice. A contended
    # consensus write may, rarely, be answered UNCERTAIN (it may or may not
    # have taken effect; docs/consistency.md); django-redis then falls back
    # to EXISTS, TTL, GET and a plain SET of the value plus one, which is
    # not atomic. So: exact when no answer was uncertain; otherwise each
    # uncertain answer is followed by that fallback, and the count is off
    # by at most one per uncertain answer.
    a, b = apps
    assert a.cache("set", key("dr-both"), 40, 100) is True
    runs = [app.begin("incr_times", key("dr-both"), 25) for app in (a, b)]
    results = [run.get(timeout=120) for run in runs]
    others = [s for _, sent in results for s in sent]
    uncertain = [s for s in others if s.startswith("error:")]
    assert all("UNCERTAIN" in s for s in uncertain), f"besides EVAL, incr sent {others}"
    fallback = [s for s in others if not s.startswith("error:")]
    assert fallback == ["EXISTS", "TTL", "GET", "SET"] * len(uncertain), others
    values = sorted(v for run, _ in results for v in run)
    final = int(raw.get(stored("dr-both")))
    if not uncertain:
        assert values == list(range(41, 91)), values
        assert final == 90, final
    else:
        print(f"         ({len(uncertain)} of 50 incr answered UNCERTAIN; final count {final})")
        assert abs(final - 90) <= len(uncertain), (final, others)
    assert 0 < raw.ttl(stored("dr-both")) <= 100


def redis_keys_scan_and_delete_pattern(apps, raws):
    (a0, b0), (a1, b1) = apps
    # Four keys in db 0, six in db 1, and one of the same name in both.
    names = {db: [f"dr-scan-{db}-{i}" for i in range(n)] for db, n in ((0, 4), (1, 6))}
    for db, a in ((0, a0), (1, a1)):
        a.cache("set_many", {key(n): n for n in names[db] + ["dr-scan-both"]}, 100)
        assert raws[db].get(stored("dr-scan-both")) is not None
    for db, b in ((0, b0), (1, b1)):
        want = sorted(key(n) for n in names[db] + ["dr-scan-both"])
        # keys: KEYS ":1:<pattern>", only this database's keys.
        found, sent = b.sent("keys", key("dr-scan-*"))
        assert sorted(found) == want and sent == ["KEYS"], (db, found, sent)
        # iter_keys: SCAN ... MATCH ":1:<pattern>" COUNT 2 until the cursor is 0.
        found, sent = b.call("iter_keys", key("dr-scan-*"))
        assert found == want, (db, found)
        assert sent and set(sent) == {"SCAN"}, sent
        # Glob classes and ? reach the node as they are.
        assert b.call("iter_keys", key(f"dr-scan-{db}-[13]"))[0] == [
            key(f"dr-scan-{db}-1"),
            key(f"dr-scan-{db}-3"),
        ]
        assert sorted(b.cache("keys", key("dr-scan-?-2"))) == [key(f"dr-scan-{db}-2")]
    # delete_pattern on B of db 1: the SCANs, then a MULTI of DELs.
    count, sent = b1.sent("delete_pattern", key("dr-scan-*"))
    assert count == len(names[1]) + 1, (count, sent)
    scans = sent.index("MULTI") if "MULTI" in sent else len(sent)
    assert scans > 0 and set(sent[:scans]) == {"SCAN"}, sent
    assert sent[scans:] == ["MULTI"] + ["DEL"] * count + ["EXEC"], sent
    assert a1.cache("keys", key("dr-scan-*")) == []
    assert list(raws[1].scan_iter(match=stored("dr-scan-*"))) == []
    # Database 0 kept its keys; a pattern deletes only what it matches.
    assert len(a0.cache("keys", key("dr-scan-*"))) == len(names[0]) + 1
    assert b0.cache("delete_pattern", key("dr-scan-0-*")) == len(names[0])
    assert a0.cache("keys", key("dr-scan-*")) == [key("dr-scan-both")]
    assert a0.cache("get", key("dr-scan-both")) == "dr-scan-both"
    assert b0.cache("delete_pattern", key("dr-scan-0-*")) == 0


def redis_lock_between_instances(apps, raw, db):
    a, b = apps
    name = key("dr-lock")
    # A takes the lock for 30 s: SET key token NX PX 30000.
    token = a.call("lock_acquire", name, 30)
    assert token, "A could not take a free lock"
    assert raw.get(stored("dr-lock")) == token.encode()
    assert 29_000 < raw.pttl(stored("dr-lock")) <= 30_000, raw.pttl(stored("dr-lock"))
    # B cannot take it while A holds it, at once or waiting 0.3 s.
    assert b.call("lock_acquire", name, 30) is None, "B took a lock A holds"
    assert b.call("lock_acquire", name, 30, 0.3) is None, "B took a lock A holds"
    assert b.call("lock_locked", name) is True
    expect(a.call("lock_call", name, "owned"), (True, ["GET"]))
    # extend: the extend script on A's node (GET, compare, PTTL, PEXPIRE).
    extended, sent = a.call("lock_call", name, "extend", 10)
    ran_script(sent, "extend")
    assert extended is True
    assert 35_000 < raw.pttl(stored("dr-lock")) <= 40_000, raw.pttl(stored("dr-lock"))
    # B waits for it; A releases it (the release script: GET, compare, DEL);
    # B then has it.
    waiting = b.begin("lock_acquire", name, 30, 20)
    _, sent = a.call("lock_call", name, "release")
    ran_script(sent, "release")
    b_token = waiting.get(timeout=30)
    assert b_token and b_token != token, (b_token, token)
    assert raw.get(stored("dr-lock")) == b_token.encode()
    assert a.call("lock_acquire", name, 30) is None, "A took the lock B now holds"
    _, sent = b.call("lock_call", name, "release")
    ran_script(sent, "release on B")
    assert raw.exists(stored("dr-lock")) == 0, "release left the lock's key"
    # A lock that expired and was taken by B: A's release must leave B's
    # lock alone (the script compares the token) and raise.
    assert a.call("lock_acquire", name, 0.3), "A could not take the lock again"
    checks.wait_for("A's lock to expire", lambda: raw.exists(stored("dr-lock")) == 0)
    b_token = b.call("lock_acquire", name, 30)
    assert b_token, "B could not take an expired lock"
    try:
        a.call("lock_call", name, "release")
        raise AssertionError("releasing a lock B took over must raise LockNotOwnedError")
    except LockNotOwnedError:
        pass
    assert raw.get(stored("dr-lock")) == b_token.encode(), "A's release removed B's lock"
    b.call("lock_call", name, "release")
    # Both at once, one try each: exactly one takes it.
    race = key(f"dr-race-{db}")
    tokens = [run.get(timeout=30) for run in [app.begin("lock_acquire", race, 30) for app in apps]]
    assert len([t for t in tokens if t]) == 1, tokens
    winner = next(app for app, t in zip(apps, tokens) if t)
    winner.call("lock_call", race, "release")
    assert raw.exists(stored(f"dr-race-{db}")) == 0


def redis_clear_empties_one_database(apps, raws):
    (a0, b0), (a1, b1) = apps
    _, live0 = a0.page("/count/")
    _, live1 = a1.page("/count/")
    a0.cache("set", key("dr-kept"), "zero", 100)
    a1.cache("set", key("dr-gone"), "one", 100)
    assert b1.cache("get", key("dr-gone")) == "one"
    # clear() on A in db 1: FLUSHDB.
    expect(a1.sent("clear"), (None, ["FLUSHDB"]))
    assert b1.cache("get", key("dr-gone")) is None
    assert b1.page("/peek/", live1)[0] == {}, "db 1's session outlived FLUSHDB"
    assert raws[1].dbsize() == 0, raws[1].dbsize()
    # Database 0 is untouched, until its own clear().
    assert b0.cache("get", key("dr-kept")) == "zero"
    assert b0.page("/peek/", live0)[0]["n"] == 1, "db 0's session went with db 1's FLUSHDB"
    expect(b0.sent("clear"), (None, ["FLUSHDB"]))
    assert a0.cache("get", key("dr-kept")) is None
    assert a0.page("/peek/", live0)[0] == {}
    assert raws[0].dbsize() == 0, raws[0].dbsize()


def main():
    nodes = sys.argv[1:]
    assert len(nodes) == 3, "usage: django_sessions.py NODE1 NODE2 NODE3"
    host, port = nodes[2].rsplit(":", 1)
    raws = [redis.Redis(host=host, port=int(port), db=db, socket_timeout=10) for db in (0, 1)]
    apps = [(Instance("A", nodes[0], db), Instance("B", nodes[1], db)) for db in (0, 1)]
    rapps = [
        (Instance("A", nodes[0], db, "django-redis"), Instance("B", nodes[1], db, "django-redis"))
        for db in (0, 1)
    ]
    try:
        import django
        import django_redis

        print(
            f"Django {django.__version__}, django-redis {django_redis.__version__}, "
            f"redis-py {redis.__version__}",
            flush=True,
        )
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
            ]
            + [
                check
                for db in (0, 1)
                for check in [
                    (
                        f"django-redis db {db}: a session moves between the two instances",
                        lambda db=db: session_moves_between_instances(
                            rapps[db], raws[db], raws[1 - db], db
                        ),
                    ),
                    (
                        f"django-redis db {db}: set_many, get_many, add, touch, ttl, expire,"
                        " persist, delete across the two",
                        lambda db=db: redis_cache_api_across_instances(rapps[db], raws[db], db),
                    ),
                    (
                        f"django-redis db {db}: incr and decr by script across the two",
                        lambda db=db: redis_incr_by_script(rapps[db], raws[db]),
                    ),
                    (
                        f"django-redis db {db}: incr from both instances at once",
                        lambda db=db: redis_incr_from_both_at_once(rapps[db], raws[db]),
                    ),
                    (
                        f"django-redis db {db}: lock() held by one instance, then the other",
                        lambda db=db: redis_lock_between_instances(rapps[db], raws[db], db),
                    ),
                ]
            ]
            + [
                (
                    "django-redis: keys, iter_keys, delete_pattern (SCAN) in each database",
                    lambda: redis_keys_scan_and_delete_pattern(rapps, raws),
                ),
                (
                    "django-redis: clear() (FLUSHDB) on A empties one database for B",
                    lambda: redis_clear_empties_one_database(rapps, raws),
                ),
            ],
        )
    finally:
        for pair in apps + rapps:
            for app in pair:
                app.close()

if __name__ == "__main__":
    main()
