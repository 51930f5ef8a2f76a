"""One instance of a small Django site whose cache and sessions live in sessmesh.

django_sessions.py starts each instance in its own process with `start`,
pointing its cache LOCATION at one node and one database, then calls `page`
(a request through Django's middleware, as a browser would make it) and
`cache_call` (the cache API) in that process.

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
"""

import django
from django.conf import settings
from django.http import JsonResponse
from django.urls import path

# The name of this instance ("A" or "B"), recorded in the sessions it touches.
INSTANCE = None


def start(name, location):
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
        CACHES={
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": location,
                "OPTIONS": {"socket_timeout": 10},
            }
        },
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
