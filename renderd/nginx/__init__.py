"""The nginx side of the stack.

- ``conf``: nginx.conf and the Debian site file from the templates in
  ``nginx/``, and writing them with their support files;
- ``runtime_json``: the runtime JSON (what the Lua front reads) and TileJSON;
- ``user``: which user nginx's workers run as when it starts as root;
- ``router``: ``nginx-conf --router``, an nginx sending each metatile to
  one cache node;
- ``addresses``: listen lines, the broker's and Redis's addresses, free and
  loopback checks.
"""

from .addresses import (broker_address, check_port_free, is_loopback, metrics_listen, nginx_listen,
                        public_url, redis_settings, resolver_directive, split_hostport)
from .conf import (Paths, default_prefix, fill, http_block, nginx_size, render_conf, render_site,
                   share_dir, write_conf, write_site, write_support)
from .router import parse_nodes, render_router, write_router
from .runtime_json import (BASE_PLACEHOLDER, DICTS, FRONT_OPTIONS, RUNTIME_JSON, front_options, layer_runtime,
                           layers_index, runtime, tilejson)
from .user import WORKER_USERS, worker_user

__all__ = [
    "BASE_PLACEHOLDER", "DICTS", "FRONT_OPTIONS", "RUNTIME_JSON", "WORKER_USERS", "Paths", "broker_address",
    "check_port_free", "default_prefix", "fill", "front_options", "http_block", "is_loopback", "layer_runtime",
    "layers_index", "metrics_listen", "nginx_listen", "nginx_size", "public_url", "redis_settings",
    "render_conf", "render_site", "resolver_directive", "runtime", "share_dir", "split_hostport",
    "tilejson", "worker_user", "write_conf", "write_site", "write_support", "parse_nodes",
    "render_router", "write_router",
]
