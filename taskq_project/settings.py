"""Settings for taskq, read from the environment.

One file for every deployment: behaviour differs only by environment variables,
all of which are listed in `.env.example`. PostgreSQL is the only database.
"""

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from taskq_project.env import env_bool, env_int, env_list, env_str, local_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DJANGO_DEBUG", default=False)

# Without DJANGO_SECRET_KEY, a random key is made once and kept in
# var/secret_key (mode 0600, never in the repository), so a local install is
# safe by default and every process of it (web, worker, commands) agrees.
SECRET_KEY = env_str("DJANGO_SECRET_KEY") or local_secret_key(BASE_DIR / "var" / "secret_key")

# Behind a TLS-terminating proxy (the production layout): trust its
# X-Forwarded-Proto, redirect plain HTTP, secure the cookies, send HSTS.
BEHIND_TLS_PROXY = env_bool("TASKQ_BEHIND_TLS_PROXY", default=False)
if BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    # Health checks come from the load balancer over plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("TASKQ_HSTS_SECONDS", default=31_536_000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("TASKQ_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env_bool("TASKQ_HSTS_PRELOAD", default=False)
    if not SECURE_HSTS_PRELOAD:
        # Joining the browsers' preload list is a deliberate, hard-to-undo
        # choice per domain; without it the deploy check's reminder is noise.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# Where the admin lives (a less guessable path keeps scanners off its login).
ADMIN_URL = env_str("TASKQ_ADMIN_URL", "admin/").strip("/") + "/"

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "taskq_project.apps.TaskqConfig",
    "taskq_project.apps.TaskqAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "apikeys_app",
    "namespaces_app",
    "tasks_app",
]

MIDDLEWARE = [
    # First, so the counts see every answer the others give.
    "taskq_project.http_metrics.RouteMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it locks out repeated failed admin logins.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Five failed logins for one username from one address lock that pair out.
AXES_FAILURE_LIMIT = env_int("TASKQ_ADMIN_LOGIN_FAILURES", default=5, minimum=1)
AXES_COOLOFF_TIME = env_int("TASKQ_ADMIN_LOCKOUT_MINUTES", default=15, minimum=1) / 60
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# A login's address, on which the lockout is keyed. Behind the proxy every
# request comes from the proxy's address, so one stranger's failures would
# lock the administrator out too. Each of TASKQ_PROXY_COUNT proxies appends
# the address it saw to X-Forwarded-For, so the client is that many entries
# from the right; anything further left was sent by the client (forged, or
# added by its own office proxy) and is ignored. Non-strict, django-ipware
# still counts from the right when the client added entries, instead of
# dropping the header and keying the client on nothing. Only the header:
# REMOTE_ADDR as a fallback would outrank a private client address whenever
# the proxy's is public, and a request without the header did not come
# through the proxies. Without the proxy the header is never read: any
# client could forge it.
TASKQ_PROXY_COUNT = env_int("TASKQ_PROXY_COUNT", default=1, minimum=1)
if BEHIND_TLS_PROXY:
    AXES_IPWARE_META_PRECEDENCE_ORDER = ("HTTP_X_FORWARDED_FOR",)
    # ipware counts the proxies listed in the header: all but the nearest.
    AXES_IPWARE_PROXY_COUNT = TASKQ_PROXY_COUNT - 1
    IPWARE_STRICT = False
else:
    AXES_IPWARE_META_PRECEDENCE_ORDER = ("REMOTE_ADDR",)

# The API answers with and without a trailing slash itself; a redirect would
# turn a PUT into a GET in many clients.
APPEND_SLASH = False

ROOT_URLCONF = "taskq_project.urls"
WSGI_APPLICATION = "taskq_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: DATABASE_URL when set, otherwise the embedded PostgreSQL under
# var/, for development: `make run`, `make test`, and `manage.py` from another
# terminal. It is started by the first connection (taskq_project.
# embedded_backend), never by importing these settings. A deployment (one
# that sets its own DJANGO_SECRET_KEY) must name its database: running on an
# empty local one by mistake would look like lost data.
DATABASE_URL = env_str("DATABASE_URL")
EMBEDDED_DATABASE = not DATABASE_URL
if EMBEDDED_DATABASE and env_str("DJANGO_SECRET_KEY"):
    raise ImproperlyConfigured(
        "DATABASE_URL is not set. The embedded PostgreSQL under var/ is for development "
        "only, and DJANGO_SECRET_KEY is set, which marks a deployment: set DATABASE_URL "
        "(postgres://user:password@host:5432/taskq)."
    )

DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL or "postgres://postgres@/postgres",
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", default=60, minimum=0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured("taskq runs on PostgreSQL only; DATABASE_URL must be postgres://...")
if EMBEDDED_DATABASE:
    DATABASES["default"]["ENGINE"] = "taskq_project.embedded_backend"
# Transactions are owned by the services and kept to the statement that needs
# them; a request-wide transaction would hold row locks while rendering.
DATABASES["default"]["ATOMIC_REQUESTS"] = False
# Behind a connection pooler in transaction mode (PgBouncer's
# pool_mode = transaction), TASKQ_DB_POOLER=transaction: consecutive
# transactions of one client may run on different server sessions, so no
# session state may be relied on. Prepared statements are then off, and the
# timeouts are not sent as startup options (PgBouncer refuses them): they are
# the role's defaults instead, set once by `manage.py set_database_timeouts`,
# and each new connection checks that they hold (taskq_project.db_settings).
TASKQ_DB_POOLER = env_str("TASKQ_DB_POOLER").strip().lower()
if TASKQ_DB_POOLER not in ("", "session", "transaction"):
    raise ImproperlyConfigured(
        f"TASKQ_DB_POOLER must be empty, 'session' or 'transaction', got {TASKQ_DB_POOLER!r}"
    )
# No statement or idle transaction may hold locks for long; import, export and
# migrations lift the statement limit for themselves.
TASKQ_DB_STATEMENT_TIMEOUT_MS = env_int("TASKQ_DB_STATEMENT_TIMEOUT_MS", 30_000, minimum=0)
TASKQ_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS = env_int(
    "TASKQ_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", 60_000, minimum=0
)
# Server-side parameter binding lets psycopg prepare the statements a process
# runs again and again (capture, release): PostgreSQL then skips parsing and
# planning them on every call. TASKQ_DB_PREPARE_THRESHOLD=0 turns them off.
_PREPARE_THRESHOLD = (
    0
    if TASKQ_DB_POOLER == "transaction"
    else env_int("TASKQ_DB_PREPARE_THRESHOLD", default=5, minimum=0)
)
DATABASES["default"].setdefault("OPTIONS", {}).update(
    {
        "server_side_binding": _PREPARE_THRESHOLD > 0,
        "prepare_threshold": _PREPARE_THRESHOLD or None,
        # Without it a connection attempt to a server that does not answer
        # (paused, or a host that drops packets) waits for the kernel's TCP
        # timeout, minutes; with it the request answers 503 in seconds.
        "connect_timeout": env_int("TASKQ_DB_CONNECT_TIMEOUT", default=5, minimum=1),
    }
)
if TASKQ_DB_POOLER != "transaction":
    DATABASES["default"]["OPTIONS"]["options"] = (
        f"-c statement_timeout={TASKQ_DB_STATEMENT_TIMEOUT_MS} "
        f"-c idle_in_transaction_session_timeout={TASKQ_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS}"
    )

# Long polling (tasks_app.waiting) LISTENs on a session of its own, which a
# pooler in transaction mode cannot keep: behind PgBouncer, point this at
# PostgreSQL itself. Unset: the database the app uses.
_LISTEN_URL = env_str("TASKQ_LISTEN_DATABASE_URL")
TASKQ_LISTEN_DATABASE: dict[str, object] | None = None
if _LISTEN_URL:
    _listen = dj_database_url.parse(_LISTEN_URL)
    TASKQ_LISTEN_DATABASE = {
        key: value
        for key, value in {
            "host": _listen["HOST"],
            "port": _listen["PORT"],
            "dbname": _listen["NAME"],
            "user": _listen["USER"],
            "password": _listen["PASSWORD"],
        }.items()
        if value
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
# Times to the second with their zone on every page (taskq_project/formats).
FORMAT_MODULE_PATH = ["taskq_project.formats"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "staticfiles"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["apikeys_app.authentication.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "apikeys_app.permissions.TokenRole",
    ],
    "DEFAULT_RENDERER_CLASSES": ["taskq_project.api.FastJSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["taskq_project.parsers.StrictJSONParser"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_THROTTLE_CLASSES": ["apikeys_app.throttling.TokenRateThrottle"],
    "EXCEPTION_HANDLER": "taskq_project.api.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_METADATA_CLASS": "taskq_project.metadata.BasicMetadata",
    # `?format=` would answer 404 for any renderer but JSON; JSON is all there is.
    "URL_FORMAT_OVERRIDE": None,
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "taskq API",
    "DESCRIPTION": "Lease tasks over REST: register namespaces and tasks, capture batches "
    "of tasks, release them as done, failed or idle.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # Swagger UI and ReDoc from local static files: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "TaskStatusEnum": ["idle", "in_progress", "done", "failed"],
        "LeaseProblemEnum": ["not_found", "not_in_progress", "stale_lease"],
        "ReleaseStatusEnum": ["done", "failed", "idle"],
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "taskq_project.schema.seed_paths",
        "taskq_project.schema.strict_request_bodies",
    ],
}

# How long a web process trusts a token it has checked (revocation reaches
# every process within this).
TASKQ_TOKEN_CACHE_SECONDS = env_int("TASKQ_TOKEN_CACHE_SECONDS", default=5, minimum=0)

# Requests per token, by role ("none" for no limit). Counted in the cache
# below, so shared by every web process when that is Redis.
TASKQ_THROTTLE_RATES = {
    "read-only": env_str("TASKQ_THROTTLE_READ_ONLY", "1200/min"),
    "worker": env_str("TASKQ_THROTTLE_WORKER", "100000/min"),
    "operator": env_str("TASKQ_THROTTLE_OPERATOR", "20000/min"),
}

# Redis when TASKQ_CACHE_URL is set (shared by every process: throttling
# counts across web servers); otherwise a per-process local cache.
TASKQ_CACHE_URL = env_str("TASKQ_CACHE_URL")
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": TASKQ_CACHE_URL}
        if TASKQ_CACHE_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# Request bodies: the largest legitimate one is a release of 1,000 ids of 255
# characters; anything far beyond that is refused before it is parsed.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("TASKQ_MAX_BODY_BYTES", default=2 * 1024 * 1024, minimum=1024)

# --- Celery: the lease sweeper and retention -------------------------------
# Unset, a broker that needs no server: kombu's filesystem transport under
# var/, enough for one machine running `make run`. Production sets Redis or
# RabbitMQ here.
# The folder is made by the Celery processes that use it (taskq_project.celery).
_BROKER_DIR = BASE_DIR / "var" / "celery-broker"
# "localhost" only so that kombu does not warn of a missing host name.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or "filesystem://localhost"
if CELERY_BROKER_URL == "filesystem://localhost":
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_BROKER_DIR),
        "data_folder_out": str(_BROKER_DIR),
        "control_folder": str(_BROKER_DIR),
    }
CELERY_TASK_DEFAULT_QUEUE = env_str("TASKQ_CELERY_QUEUE", "taskq")
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"

# Refuse the seed's unfenced release (`task_ids`), so that every release
# names the lease it ends (`leases` with their tokens).
TASKQ_REQUIRE_LEASE_TOKEN = env_bool("TASKQ_REQUIRE_LEASE_TOKEN", default=False)

# How often beat runs the lease sweeper, in seconds.
TASKQ_SWEEP_SECONDS = env_int("TASKQ_SWEEP_SECONDS", default=5, minimum=1)
# GET /metrics (Prometheus): open when unset, else only for this bearer token.
TASKQ_METRICS_TOKEN = env_str("TASKQ_METRICS_TOKEN")
# Done tasks older than this many days are deleted; unset keeps them forever.
TASKQ_DONE_RETENTION_DAYS: int | None = (
    env_int("TASKQ_DONE_RETENTION_DAYS", default=0, minimum=1)
    if env_str("TASKQ_DONE_RETENTION_DAYS").strip()
    else None
)
# How often beat runs retention, in seconds.
TASKQ_PURGE_SECONDS = env_int("TASKQ_PURGE_SECONDS", default=3600, minimum=1)

CELERY_BEAT_SCHEDULE = {
    "reclaim-expired-leases": {
        "task": "tasks_app.reclaim_expired_leases",
        "schedule": float(TASKQ_SWEEP_SECONDS),
        # A sweep queued while no worker ran is stale once the next is due:
        # drop it rather than let a backlog of sweeps pile up.
        "options": {"expires": float(TASKQ_SWEEP_SECONDS)},
    },
    "purge-done-tasks": {
        "task": "tasks_app.purge_done_tasks",
        "schedule": float(TASKQ_PURGE_SECONDS),
        "options": {"expires": float(TASKQ_PURGE_SECONDS)},
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("TASKQ_LOG_LEVEL", "INFO")},
    "loggers": {
        "pgserver": {"level": "WARNING"},
        # django-axes announces its version at INFO in every process.
        "axes.apps": {"level": "WARNING"},
    },
}
