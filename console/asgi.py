"""ASGI entry point: HTTP through Django, websockets through Channels.

Websockets pass an exact Origin check (console/origins.py), session authentication and the temporary-password
rule (console/accounts/sockets.py) before routing; each consumer then checks its object with
console.permissions.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from console.accounts.sockets import PasswordChangeRequiredSocketMiddleware  # noqa: E402
from console.origins import ExactOriginValidator  # noqa: E402
from console.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": ExactOriginValidator(
            AuthMiddlewareStack(PasswordChangeRequiredSocketMiddleware(URLRouter(websocket_urlpatterns)))
        ),
    }
)
