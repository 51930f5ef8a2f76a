"""Spring Session's default Redis repository, command for command, on a sessmesh cluster.

    python3 spring_session.py 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7003

Run by tests/middlewares.rs. Spring itself is not here (no Maven), so this
replays what spring-session-data-redis 3.x's RedisSessionRepository sends
through Spring Data Redis, with redis-py over RESP3 as Lettuce speaks it:

  findById(id)      HGETALL spring:session:sessions:<id>
                    (DEL it if the hash says it has expired)
  save(session)     EXISTS <key of the id it was loaded with>   (not for a new session;
                                                                  absent: "Session was invalidated")
                    RENAME spring:session:sessions:<old> spring:session:sessions:<new>
                                                    (after changeSessionId, not for a new session)
                    HMSET spring:session:sessions:<id> <changed fields only>
                    PEXPIREAT spring:session:sessions:<id> <lastAccessedTime + maxInactiveInterval, ms>
  deleteById(id)    DEL spring:session:sessions:<id>

The hash's fields are creationTime and lastAccessedTime (java.lang.Long, ms),
maxInactiveInterval (java.lang.Integer, s) and sessionAttr:<name> per
attribute, each value in Java serialization (JdkSerializationRedisSerializer;
a removed attribute is written as an empty value). SessionRepositoryFilter
loads the session of each request, sets lastAccessedTime, and saves it when
the response is committed.

Two app instances, A with a connection to node 1 and B to node 2, serve
requests on the same sessions; redis-py on node 3 looks at the keys. Prints
each check and exits 1 if any failed.
"""

import sys
import time
import uuid

import redis

import checks

NAMESPACE = "spring:session:sessions:"
ATTRIBUTE = "sessionAttr:"


# --- Java serialization of the values Spring Session stores -------------------


class Long(int):
    """A java.lang.Long (Python's int stands for java.lang.Integer)."""


def _utf(text):
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


STREAM = b"\xac\xed\x00\x05"  # magic and version
# TC_CLASSDESC java.lang.Number, the superclass of both: no fields, no superclass.
NUMBER = b"\x72" + _utf("java.lang.Number") + (-8742448824652078965).to_bytes(8, "big", signed=True)
NUMBER += b"\x02\x00\x00\x78\x70"


def _boxed(class_name, serial_uid, type_code):
    """The bytes before the value of a boxed number: TC_OBJECT, its class, one field `value`."""
    head = STREAM + b"\x73\x72" + _utf(class_name) + serial_uid.to_bytes(8, "big", signed=True)
    return head + b"\x02\x00\x01" + type_code + _utf("value") + b"\x78" + NUMBER


LONG = _boxed("java.lang.Long", 4290774380558885855, b"J")
INTEGER = _boxed("java.lang.Integer", 1360826667806852920, b"I")


def java_bytes(value):
    """What JdkSerializationRedisSerializer writes for `value`."""
    if value is None:
        return b""
    if isinstance(value, Long):
        return LONG + value.to_bytes(8, "big", signed=True)
    if isinstance(value, int):
        return INTEGER + value.to_bytes(4, "big", signed=True)
    if isinstance(value, str):
        return STREAM + b"\x74" + _utf(value)  # TC_STRING
    raise TypeError(f"no Java form for {value!r}")


def java_value(data):
    """Reads back what java_bytes wrote."""
    if data == b"":
        return None
    if data.startswith(LONG):
        return Long(int.from_bytes(data[len(LONG) :], "big", signed=True))
    if data.startswith(INTEGER):
        return int.from_bytes(data[len(INTEGER) :], "big", signed=True)
    if data.startswith(STREAM + b"\x74"):
        return data[len(STREAM) + 3 :].decode()
    raise AssertionError(f"not a serialized Long, Integer or String: {data!r}")


# --- RedisSessionRepository -------------------------------------------------


def now_ms():
    return int(time.time() * 1000)


class SessionInvalidated(Exception):
    """RedisSessionRepository.save's IllegalStateException("Session was invalidated")."""


class Session:
    """RedisSessionRepository.RedisSession: the session and the fields changed since loading."""

    def __init__(self, sid, creation, last_accessed, max_inactive_s, attributes, is_new):
        self.id = self.original_id = sid
        self.creation = creation
        self.last_accessed = last_accessed
        self.max_inactive_s = max_inactive_s
        self.attributes = attributes
        self.is_new = is_new
        self.delta = {}
        if is_new:
            self.delta = {
                "creationTime": Long(creation),
                "maxInactiveInterval": max_inactive_s,
                "lastAccessedTime": Long(last_accessed),
            }
            self.delta.update({ATTRIBUTE + k: v for k, v in attributes.items()})

    def set_attribute(self, name, value):
        if value is None:
            self.attributes.pop(name, None)
        else:
            self.attributes[name] = value
        self.delta[ATTRIBUTE + name] = value

    def remove_attribute(self, name):
        self.set_attribute(name, None)

    def set_last_accessed(self, ms):
        self.last_accessed = ms
        self.delta["lastAccessedTime"] = Long(ms)

    def change_session_id(self):
        self.id = str(uuid.uuid4())
        return self.id


class SessionRepository:
    """RedisSessionRepository over one connection to one node."""

    def __init__(self, name, node):
        self.name = name
        host, port = node.rsplit(":", 1)
        self.redis = redis.Redis(host=host, port=int(port), protocol=3, socket_timeout=10)

    def create_session(self, max_inactive_s=1800):
        created = now_ms()
        return Session(str(uuid.uuid4()), created, created, max_inactive_s, {}, is_new=True)

    def save(self, session):
        if not session.is_new and not self.redis.exists(NAMESPACE + session.original_id):
            raise SessionInvalidated(session.original_id)
        if session.id != session.original_id:
            if not session.is_new:
                self.redis.rename(NAMESPACE + session.original_id, NAMESPACE + session.id)
            session.original_id = session.id
        if session.delta:
            key = NAMESPACE + session.id
            fields = []
            for field, value in session.delta.items():
                fields += [field, java_bytes(value)]
            assert self.redis.execute_command("HMSET", key, *fields) in (True, b"OK", "OK")
            self.redis.pexpireat(key, session.last_accessed + session.max_inactive_s * 1000)
            session.delta = {}
        session.is_new = False

    def find_by_id(self, sid):
        entries = self.redis.hgetall(NAMESPACE + sid)
        if not entries:
            return None
        values = {field.decode(): java_value(data) for field, data in entries.items()}
        attributes = {
            field[len(ATTRIBUTE) :]: value
            for field, value in values.items()
            if field.startswith(ATTRIBUTE) and value is not None
        }
        session = Session(
            sid,
            values["creationTime"],
            values["lastAccessedTime"],
            values["maxInactiveInterval"],
            attributes,
            is_new=False,
        )
        if now_ms() >= session.last_accessed + session.max_inactive_s * 1000:
            self.delete_by_id(sid)
            return None
        return session

    def delete_by_id(self, sid):
        self.redis.delete(NAMESPACE + sid)

    def request(self, sid, handle=lambda session: None, max_inactive_s=1800):
        """One request through SessionRepositoryFilter; returns the session's id after it."""
        session = self.find_by_id(sid) if sid else None
        if session is None:
            session = self.create_session(max_inactive_s)
        else:
            session.set_last_accessed(now_ms())
        handle(session)
        self.save(session)
        return session.id


# --- the checks ---------------------------------------------------------------


def stored(observer, sid):
    """The session's hash as node 3 has it, decoded."""
    return {f.decode(): java_value(v) for f, v in observer.hgetall(NAMESPACE + sid).items()}


def assert_ttl_near(observer, sid, seconds):
    pttl = observer.pttl(NAMESPACE + sid)
    assert seconds * 1000 - 10_000 <= pttl <= seconds * 1000, f"PTTL {pttl}, expected about {seconds} s"


def created_on_a_changed_on_b(a, b, observer):
    sid = a.request(None, lambda s: s.set_attribute("user", "Zoë"))
    first = stored(observer, sid)
    fields = {"creationTime", "lastAccessedTime", "maxInactiveInterval", "sessionAttr:user"}
    assert set(first) == fields, first
    assert isinstance(first["creationTime"], Long) and first["creationTime"] == first["lastAccessedTime"]
    assert first["maxInactiveInterval"] == 1800 and first["sessionAttr:user"] == "Zoë", first
    assert_ttl_near(observer, sid, 1800)

    def on_b(session):
        assert session.attributes == {"user": "Zoë"}, session.attributes
        session.set_attribute("cart", 3)

    assert b.request(sid, on_b) == sid

    def on_a(session):
        assert session.attributes == {"user": "Zoë", "cart": 3}, session.attributes

    a.request(sid, on_a)
    last = stored(observer, sid)
    assert last["creationTime"] == first["creationTime"], "creationTime changed"
    assert last["lastAccessedTime"] >= first["lastAccessedTime"]
    assert_ttl_near(observer, sid, 1800)


def attributes_set_on_both_at_once_both_stay(a, b, observer):
    sid = a.request(None, lambda s: s.set_attribute("user", "ada"))
    # Both instances load the session, then each saves its own change.
    on_a, on_b = a.find_by_id(sid), b.find_by_id(sid)
    on_a.set_attribute("theme", "dark")
    on_b.set_attribute("lang", "fr")
    a.save(on_a)
    b.save(on_b)
    both = stored(observer, sid)
    assert both["sessionAttr:theme"] == "dark" and both["sessionAttr:lang"] == "fr", both
    seen = a.find_by_id(sid).attributes
    assert seen == {"user": "ada", "theme": "dark", "lang": "fr"}, seen
    # Removing an attribute writes it empty; the mapper then leaves it out.
    b.request(sid, lambda s: s.remove_attribute("theme"))
    assert observer.hget(NAMESPACE + sid, ATTRIBUTE + "theme") == b""
    seen = a.find_by_id(sid).attributes
    assert seen == {"user": "ada", "lang": "fr"}, seen


def changed_id_renames_the_key(a, b, observer):
    old = a.request(None, lambda s: s.set_attribute("user", "ada"))

    def login(session):
        session.change_session_id()  # session fixation protection at login
        session.set_attribute("role", "admin")

    new = a.request(old, login)
    assert new != old
    assert observer.exists(NAMESPACE + old) == 0, "RENAME left the old key"
    assert b.find_by_id(old) is None
    found = b.find_by_id(new)
    assert found is not None, "the renamed session is not on node 2"
    assert found.attributes == {"user": "ada", "role": "admin"}, found.attributes
    assert_ttl_near(observer, new, 1800)
    # B goes on with it under the new id.
    b.request(new, lambda s: s.set_attribute("cart", 1))
    assert a.find_by_id(new).attributes == {"user": "ada", "role": "admin", "cart": 1}


def idle_session_expires(a, b, observer):
    sid = a.request(None, lambda s: s.set_attribute("user", "ada"), max_inactive_s=1)
    pttl = observer.pttl(NAMESPACE + sid)
    assert 0 < pttl <= 1000, pttl
    checks.wait_for("the idle session to expire on node 2", lambda: b.redis.exists(NAMESPACE + sid) == 0)
    assert b.find_by_id(sid) is None
    assert observer.exists(NAMESPACE + sid) == 0


def invalidated_on_a_gone_on_b(a, b, observer):
    sid = a.request(None, lambda s: s.set_attribute("user", "ada"))
    loaded_on_b = b.find_by_id(sid)
    assert loaded_on_b is not None
    a.delete_by_id(sid)  # logout: session.invalidate()
    assert observer.exists(NAMESPACE + sid) == 0
    assert b.find_by_id(sid) is None
    # A request B was serving on the session cannot bring it back.
    loaded_on_b.set_attribute("cart", 2)
    try:
        b.save(loaded_on_b)
        raise AssertionError("saving an invalidated session must fail")
    except SessionInvalidated:
        pass
    assert observer.exists(NAMESPACE + sid) == 0, "the invalidated session came back"


def main():
    nodes = sys.argv[1:]
    assert len(nodes) == 3, "usage: spring_session.py NODE1 NODE2 NODE3"
    a, b = SessionRepository("A", nodes[0]), SessionRepository("B", nodes[1])
    host, port = nodes[2].rsplit(":", 1)
    observer = redis.Redis(host=host, port=int(port), socket_timeout=10)
    named = [
        (
            "a session created on A (HMSET, PEXPIREAT) is read (HGETALL) and changed on B",
            created_on_a_changed_on_b,
        ),
        (
            "attributes saved on A and B at once both stay; a removed one is written empty",
            attributes_set_on_both_at_once_both_stay,
        ),
        (
            "changeSessionId on A: RENAME, and B finds it only under the new id",
            changed_id_renames_the_key,
        ),
        ("an idle session expires by its PEXPIREAT, seen from B", idle_session_expires),
        (
            "deleteById on A (DEL): B finds nothing, and B's save fails with EXISTS",
            invalidated_on_a_gone_on_b,
        ),
    ]
    checks.run(
        "spring session",
        [(name, lambda check=check: check(a, b, observer)) for name, check in named],
    )

if __name__ == "__main__":
    main()
