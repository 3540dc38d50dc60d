"""The channel layer the live streams use: channels_redis's, with shorter waits for messages."""

from __future__ import annotations

from channels_redis.core import RedisChannelLayer


class ConsoleChannelLayer(RedisChannelLayer):
    # A subscriber waits for messages in blocking BZPOPMIN calls of `brpop_timeout` seconds. redis-py 8 gives up on a
    # read after its default socket timeout of 5 s, so channels_redis's 5 s wait failed every socket that heard
    # nothing for 5 s (daphne closed it with 1011 and the page reconnected). A 2 s wait ends well inside that.
    brpop_timeout = 2
