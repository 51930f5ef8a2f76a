"""One instance of a small Django site whose cache and sessions live in sessmesh.

django_sessions.py starts each instance in its own process with `start`,
pointing its cache LOCATION at one node and one database and choosing the
cache backend (Django's own or django-redis), then calls `page` (a request
through Django's middleware, as a browser would make it), `cache_call` (the
cache API) and the `lock_*` functions in that process.

What Django sends (django.core.cache.backends.redis.RedisCache over redis-py):
  on connect          SELECT <db>, when the URL names a database other than 0
  cache.get/get_many  GET, MGET
  cache.set           SET key value EX timeout
  cache.add           SET key value EX timeout NX
  cache.set_many      MULTI, MSET k1 v1 k2 v2 ..., EXPIRE k1 t, EXPIRE k2 t ..., EXEC
  cache.incr          EXISTS key, then INCRBY key delta (ValueError when absent)
  cache.touch         EXPIRE key t, or PERSIST key for timeout=None
  cache.delete        DEL key
  cache.has_key       EXISTS key
  cache.clear         FLUSHDB
Keys are ":1:<key>" (empty KEY_PREFIX, version 1); integers are stored as
plain numbers so INCRBY works, everything else pickled.

The cache session backend (SESSION_ENGINE "django.contrib.sessions.backends.cache")
keeps a session under ":1:django.contrib.sessions.cache<session key>":
  a new session        cache.add (SET NX EX), retried with another key if taken
  a changed session    cache.get, then cache.set (SET EX SESSION_COOKIE_AGE)
  loading a session    cache.get
  cycle_key (login)    cache.add of a new key, then cache.delete of the old one
  flush (logout)       cache.delete

What django-redis sends (django_redis.cache.RedisCache, DefaultClient over
redis-py; from django_redis/client/default.py):
  on connect          SELECT <db>, when the URL names a database other than 0
  cache.get/get_many  GET, MGET
  cache.set           SET key value PX timeout*1000
  cache.add           SET key value PX timeout*1000 NX
  cache.set_many      MULTI, SET k v PX t for each key, EXEC (a redis-py pipeline)
  cache.incr/decr     EVAL of one script, KEYS[1] the key, ARGV[1] the delta:
                        local exists = redis.call('EXISTS', KEYS[1])
                        if (exists == 1) then
                            return redis.call('INCRBY', KEYS[1], ARGV[1])
                        else return false end
                      (false, nil to redis-py, is its ValueError); with
                      ignore_key_check=True the script is the INCRBY alone.
                      If the node answers the EVAL with any error,
                      django-redis falls back to EXISTS, TTL, GET, then SET
                      of the value plus the delta with PX the TTL: not
                      atomic, so `sent` is how the test tells the script ran.
  cache.touch         PEXPIRE key timeout*1000, or PERSIST key for timeout=None
  cache.ttl           EXISTS key, then TTL key (0 if absent, None if no expiry)
  cache.persist       PERSIST key
  cache.expire        EXPIRE key seconds
  cache.delete        DEL key
  cache.has_key       EXISTS key
  cache.keys          KEYS ":1:<pattern>"
  cache.iter_keys     SCAN cursor MATCH ":1:<pattern>" COUNT n until cursor 0
  cache.delete_pattern  the SCANs of iter_keys, then MULTI, DEL per key found,
                      EXEC (nothing when none was found)
  cache.clear         FLUSHDB
  cache.lock(key)     a redis.lock.Lock on ":1:<key>":
                        acquire  SET key token NX PX timeout*1000, retried
                                 every `sleep` seconds while blocking
                        owned, locked  GET key
                        release  EVALSHA of redis-py's release script
                                 (GET, compare the token, DEL), after a
                                 NOSCRIPT reply SCRIPT LOAD and EVALSHA again
                        extend   EVALSHA of the extend script (GET, PTTL,
                                 PEXPIRE), the same NOSCRIPT fallback
Integers are stored as plain numbers, everything else pickled. Keys and the
cache session backend's keys are as for Django's own backend above.
"""

import django
import redis
from django.conf import settings
from django.http import JsonResponse
from django.urls import path

# The name of this instance ("A" or "B"), recorded in the sessions it touches.
INSTANCE = None

# What this process's django-redis connections sent since `sent`,
# `iter_keys`, `incr_times` or `lock_call` last emptied it: each command's
# name (with the subcommand of SCRIPT and CLIENT), and "error: <redis-py's
# exception>: <the node's reply>" for each error reply. The handshake of a
# new connection (HELLO, CLIENT SETINFO, SELECT) is left out.
SENT = []


def _name(args):
    """A command's name, with its subcommand for SCRIPT and CLIENT."""
    words = [a.decode() if isinstance(a, bytes) else str(a) for a in args[:2]]
    if words[0].upper() in ("SCRIPT", "CLIENT") and len(words) > 1:
        return f"{words[0]} {words[1]}".upper()
    return words[0].upper()


class RecordingConnection(redis.connection.Connection):
    """A redis-py connection that notes in SENT what it sends and the errors it reads."""

    handshake = False

    def connect(self):
        self.handshake = True
        try:
            return super().connect()
        finally:
            self.handshake = False

    def note(self, entry):
        if not self.handshake:
            SENT.append(entry)

    def send_command(self, *args, **kwargs):
        self.note(_name(args))
        return super().send_command(*args, **kwargs)

    def pack_commands(self, commands):
        for command in commands:
            self.note(_name(command))
        return super().pack_commands(commands)

    def read_response(self, *args, **kwargs):
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as e:
            self.note(f"error: {type(e).__name__}: {e}")
            raise


def cache_settings(backend, location):
    """The CACHES entry for `backend`: "django" (Django's own) or "django-redis"."""
    if backend == "django":
        return {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": location,
            "OPTIONS": {"socket_timeout": 10},
        }
    assert backend == "django-redis", backend
    return {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": location,
        "OPTIONS": {
            "SOCKET_TIMEOUT": 10,
            "CONNECTION_POOL_KWARGS": {"connection_class": RecordingConnection},
        },
    }


def start(name, location, backend="django"):
    """Configures this process as app instance `name` using the cache at `location`."""
    global INSTANCE
    INSTANCE = name
    settings.configure(
        DEBUG=False,
        SECRET_KEY="sessmesh-middleware-test",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["django.contrib.sessions"],
        MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"],
        SESSION_ENGINE="django.contrib.sessions.backends.cache",
        CACHES={"default": cache_settings(backend, location)},
    )
    django.setup()


def count(request):
    """Adds one to the session's counter and notes which instance did it."""
    n = request.session.get("n", 0) + 1
    request.session["n"] = n
    request.session["seen"] = request.session.get("seen", []) + [INSTANCE]
    return JsonResponse({"n": n, "seen": request.session["seen"]})


def login(request):
    """Gives the session a new key, as django.contrib.auth.login does, and a user."""
    request.session.cycle_key()
    request.session["user"] = "ada"
    return JsonResponse(dict(request.session.items()))


def logout(request):
    """Deletes the session, as django.contrib.auth.logout does."""
    request.session.flush()
    return JsonResponse({})


def peek(request):
    """Shows the session without changing it."""
    return JsonResponse(dict(request.session.items()))


urlpatterns = [
    path("count/", count),
    path("login/", login),
    path("logout/", logout),
    path("peek/", peek),
]


def page(url, session_key):
    """GETs `url` through the middleware with the session cookie `session_key`.

    Returns (the JSON body, the session cookie the response set or None).
    """
    from django.test import Client

    client = Client()
    if session_key:
        client.cookies[settings.SESSION_COOKIE_NAME] = session_key
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code, response.content)
    cookie = response.cookies.get(settings.SESSION_COOKIE_NAME)
    return response.json(), (cookie.value if cookie is not None else None)


def cache_call(method, *args, **kwargs):
    """Calls django.core.cache.cache.<method>; exceptions reach the caller."""
    from django.core.cache import cache

    return getattr(cache, method)(*args, **kwargs)


def sent(method, *args, **kwargs):
    """Like `cache_call`, but answers (the result, what django-redis sent for it)."""
    SENT.clear()
    result = cache_call(method, *args, **kwargs)
    return result, list(SENT)


def iter_keys(pattern):
    """cache.iter_keys(pattern) (django-redis) to its end, two keys a SCAN.

    Answers (the keys found, sorted; what was sent for them).
    """
    from django.core.cache import cache

    SENT.clear()
    found = sorted(cache.iter_keys(pattern, itersize=2))
    return found, list(SENT)


def incr_times(key, times):
    """cache.incr(key) `times` times.

    Answers (the values it returned, what was sent other than EVAL).
    """
    from django.core.cache import cache

    SENT.clear()
    values = [cache.incr(key) for _ in range(times)]
    return values, [s for s in SENT if s != "EVAL"]


# The locks this instance holds, by name. A redis-py Lock lives in the
# process that took it (its token is kept thread-local, in this process's
# one worker thread), so the test drives it through these functions.
LOCKS = {}


def lock_acquire(name, timeout, blocking_timeout=None):
    """Takes cache.lock(name, timeout) (django-redis) for this instance.

    Without blocking_timeout one try, else tries until then (SET NX PX
    every 50 ms). Answers the lock's token, or None if it was not taken.
    """
    from django.core.cache import cache

    lock = cache.lock(name, timeout=timeout, sleep=0.05)
    if not lock.acquire(blocking=blocking_timeout is not None, blocking_timeout=blocking_timeout):
        return None
    LOCKS[name] = lock
    return lock.local.token.decode()


def lock_call(name, method, *args):
    """Calls `method` (release, extend, owned) of the lock `name` this instance took.

    Answers (the result, what was sent for it); the lock is forgotten on a
    release, even one that raises because the lock was no longer owned.
    """
    lock = LOCKS[name] if method != "release" else LOCKS.pop(name)
    SENT.clear()
    result = getattr(lock, method)(*args)
    return result, list(SENT)


def lock_locked(name):
    """Whether anyone holds the lock `name` (a GET through a fresh cache.lock)."""
    from django.core.cache import cache

    return cache.lock(name).locked()
