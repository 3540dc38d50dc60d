"""ASGI entry point: HTTP through Django, websockets through Channels.

Websockets pass an exact Origin check (console/origins.py), session authentication and the temporary-password
rule (console/accounts/sockets.py) before routing; each consumer then checks its object with
console.permissions. The outermost layer lends live streams a look at how much their client has left unread
(console/socket_backlog.py).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
# No kept database connections here (Django's advice for ASGI): each request's sync work runs in a thread of its own,
# and a kept connection outlives its thread until garbage collection. 50 users held up to 74 PostgreSQL connections
# with the default 60 s (some requests refused: "too many clients already"), at most 14 without. Workers keep theirs.
os.environ.setdefault("DB_CONN_MAX_AGE", "0")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from console.accounts.sockets import PasswordChangeRequiredSocketMiddleware  # noqa: E402
from console.origins import ExactOriginValidator  # noqa: E402
from console.routing import websocket_urlpatterns  # noqa: E402
from console.socket_backlog import SocketBacklogMiddleware  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": SocketBacklogMiddleware(
            ExactOriginValidator(
                AuthMiddlewareStack(PasswordChangeRequiredSocketMiddleware(URLRouter(websocket_urlpatterns)))
            )
        ),
    }
)
