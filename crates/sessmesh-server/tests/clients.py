"""Checks a running sessmesh cluster through redis-py.

    python3 clients.py --protocol 3 127.0.0.1:6379 127.0.0.1:6380 127.0.0.1:6381

Run by tests/real_clients.rs against three `sessmesh serve` processes, once
with RESP2 and once with RESP3. Exits non-zero, saying what failed, on the
first check that does not hold.
"""

import argparse
import sys
import time
import uuid

import redis


def wait_for(what, condition, within=15.0):
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", type=int, choices=[2, 3], required=True)
    parser.add_argument("--password")
    parser.add_argument("--tls-ca", help="connect over TLS, trusting this CA")
    parser.add_argument("nodes", nargs=3, help="three nodes, or one given three times")
    args = parser.parse_args()

    def connect(node):
        host, port = node.rsplit(":", 1)
        return redis.Redis(
            host=host,
            port=int(port),
            protocol=args.protocol,
            password=args.password,
            decode_responses=True,
            socket_timeout=10,
            ssl=args.tls_ca is not None,
            ssl_ca_certs=args.tls_ca,
            ssl_check_hostname=args.tls_ca is not None,
        )

    clients = [connect(node) for node in args.nodes]
    a, b, c = clients
    run = uuid.uuid4().hex[:8]

    for client in clients:
        assert client.ping() is True

    # A session written via one node is read via another.
    key = f"py{args.protocol}:{run}:session"
    assert a.set(key, "logged-in") is True
    assert b.get(key) == "logged-in", "written on node 1, read on node 2"
    assert c.get(key) == "logged-in", "written on node 1, read on node 3"

    # Hash fields written on two nodes merge.
    cart = f"py{args.protocol}:{run}:cart"
    assert a.hset(cart, mapping={"user": "ada", "items": "1"}) == 2
    assert b.hset(cart, "theme", "dark") == 1
    assert c.hgetall(cart) == {"user": "ada", "items": "1", "theme": "dark"}
    assert c.hget(cart, "theme") == "dark"
    assert c.hmget(cart, ["user", "nope"]) == ["ada", None]
    assert c.hincrby(cart, "items", 2) == 3
    assert a.hlen(cart) == 3
    assert sorted(b.hkeys(cart)) == ["items", "theme", "user"]
    assert b.hdel(cart, "theme") == 1
    assert a.hexists(cart, "theme") is False

    # Wrong types are refused as Redis refuses them.
    try:
        a.get(cart)
        raise AssertionError("GET of a hash must fail")
    except redis.ResponseError as e:
        assert str(e).startswith("WRONGTYPE"), e

    # DEL on one node removes it everywhere.
    assert c.delete(key) == 1
    for client in clients:
        assert client.get(key) is None, "deleted on node 3"
        assert client.exists(key) == 0

    # TTLs are honoured.
    short = f"py{args.protocol}:{run}:short"
    assert a.set(short, "v", px=800) is True
    ttl = b.pttl(short)
    assert 0 < ttl <= 800, ttl
    wait_for("the short-lived session to expire", lambda: c.get(short) is None)
    assert a.ttl(short) == -2
    long = f"py{args.protocol}:{run}:long"
    assert a.set(long, "v", ex=100)
    assert 99 <= b.ttl(long) <= 100
    assert c.persist(long) is True
    assert a.ttl(long) == -1
    assert b.expire(long, 50) is True
    assert 49 <= c.ttl(long) <= 50

    # Pipelines work, in order.
    pipe = a.pipeline(transaction=False)
    for i in range(100):
        pipe.set(f"py{args.protocol}:{run}:p{i}", i)
    for i in range(100):
        pipe.get(f"py{args.protocol}:{run}:p{i}")
    results = pipe.execute()
    assert results[:100] == [True] * 100
    assert results[100:] == [str(i) for i in range(100)]
    assert b.mget([f"py{args.protocol}:{run}:p{i}" for i in (0, 99)]) == ["0", "99"]
    twice = f"py{args.protocol}:{run}:twice"
    assert a.execute_command("MSET", twice, "1", twice + ":b", "b", twice, "2")
    assert c.mget([twice, twice + ":b", twice + ":none"]) == ["2", "b", None]
    assert b.exists(twice, twice, twice + ":none") == 2

    # Reads next to each other in a pipeline run together, but never ahead
    # of the writes before them nor behind the writes after them.
    key = f"py{args.protocol}:{run}:mixed"
    pipe = a.pipeline(transaction=False)
    pipe.get(key)
    pipe.set(key, "1")
    pipe.get(key)
    pipe.exists(key)
    pipe.hset(key + ":h", "f", "x")
    pipe.hget(key + ":h", "f")
    pipe.hgetall(key + ":h")
    pipe.set(key, "2", ex=100)
    pipe.get(key)
    pipe.ttl(key)
    pipe.delete(key)
    pipe.get(key)
    pipe.exists(key)
    results = pipe.execute()
    ttl = results.pop(9)
    assert 99 <= ttl <= 100, ttl
    assert results == [None, True, "1", 1, 1, "x", {"f": "x"}, True, "2", 1, None, 0], results

    # Transactions: a MULTI/EXEC pipeline, as Django's set_many sends one.
    tx = f"py{args.protocol}:{run}:tx"
    pipe = a.pipeline(transaction=True)
    pipe.mset({tx + ":a": "1", tx + ":b": "2"})
    pipe.expire(tx + ":a", 100)
    pipe.incr(tx + ":b")
    pipe.get(tx + ":b")
    assert pipe.execute() == [True, True, 3, "3"]
    assert b.mget([tx + ":a", tx + ":b"]) == ["1", "3"]
    assert 99 <= c.ttl(tx + ":a") <= 100
    # A command refused while queuing discards the transaction.
    pipe = a.pipeline(transaction=True)
    pipe.set(tx + ":c", "no")
    pipe.execute_command("SET", tx + ":c")
    try:
        pipe.execute()
        raise AssertionError("EXEC must abort")
    except redis.ResponseError as e:
        assert "EXECABORT" in str(e) or "wrong number" in str(e), e
    assert b.get(tx + ":c") is None
    # WATCH: a change by another client makes EXEC answer nil (WatchError).
    with a.pipeline() as pipe:
        pipe.watch(tx + ":a")
        b.set(tx + ":a", "changed")
        pipe.multi()
        pipe.set(tx + ":a", "mine")
        try:
            pipe.execute()
            raise AssertionError("a watched key changed: EXEC must fail")
        except redis.WatchError:
            pass
    assert c.get(tx + ":a") == "changed"
    # The retry idiom: read, compute, write, under WATCH.
    def add_one(pipe):
        value = int(pipe.get(tx + ":b"))
        pipe.multi()
        pipe.set(tx + ":b", value + 1)
    a.transaction(add_one, tx + ":b")
    assert b.get(tx + ":b") == "4"

    # Scripts: redis-py's Script sends EVALSHA, then EVAL on NOSCRIPT; node
    # 2 has not seen it when node 1 loaded it.
    release = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
    lock = f"py{args.protocol}:{run}:lock"
    assert a.set(lock, "token-1", nx=True, px=30000) is True
    assert a.register_script(release)(keys=[lock], args=["token-2"]) == 0
    assert b.register_script(release)(keys=[lock], args=["token-1"]) == 1
    assert c.get(lock) is None
    assert a.eval("return {KEYS[1], ARGV[1], 3.7, false}", 1, lock, "x") == [lock, "x", 3, None]

    # Keys of one hash tag: a transaction and a script over them are
    # all-or-nothing; keys of two tags in one script are CROSSSLOT.
    tag = f"{{py{args.protocol}{run}}}"
    with a.pipeline(transaction=True) as pipe:
        pipe.set(tag + ":a", "1")
        pipe.incr(tag + ":b")
        pipe.mget(tag + ":a", tag + ":b")
        assert pipe.execute() == [True, 1, ["1", "1"]]
    move = "return {redis.call('decr', KEYS[1]), redis.call('incr', KEYS[2])}"
    assert b.eval(move, 2, tag + ":a", tag + ":b") == [0, 2]
    assert c.mget(tag + ":a", tag + ":b") == ["0", "2"]
    try:
        a.eval("return 1", 2, f"{{x{run}}}:1", f"{{y{run}}}:1")
        raise AssertionError("a script over two hash tags must fail")
    except redis.exceptions.ClusterCrossSlotError:
        # redis-py knows the reply as Redis Cluster's CROSSSLOT.
        pass

    # MONITOR shows what another connection to the same node sends.
    other = connect(args.nodes[0])
    watched = f"py{args.protocol}:{run}:monitored"
    with a.monitor() as monitor:
        other.set(watched, "seen")
        deadline = time.monotonic() + 10
        while True:
            command = monitor.next_command()
            if command["command"] == f"SET {watched} seen":
                break
            assert time.monotonic() < deadline, "MONITOR never showed the SET"
    assert int(command["client_port"]) > 0 and command["db"] == 0, command
    other.close()

    # What Spring Session sets at start.
    assert a.config_set("notify-keyspace-events", "Egx") is True
    assert a.config_get("notify-keyspace-events") == {"notify-keyspace-events": "Egx"}

    # SCAN sees the keys (each node holds every key at rf=3 with 3 nodes).
    found = set(c.scan_iter(match=f"py{args.protocol}:{run}:p*", count=100))
    assert len(found) == 100, len(found)

    # Unknown commands are errors, and the connection goes on.
    try:
        a.execute_command("NOSUCHCOMMAND", "x")
        raise AssertionError("an unknown command must fail")
    except redis.ResponseError as e:
        assert "unknown command" in str(e), e
    assert a.ping() is True

    print(f"redis-py {redis.__version__}, RESP{args.protocol}: all checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e!r}", file=sys.stderr)
        raise
