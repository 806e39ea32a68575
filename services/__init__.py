"""Platform services every env may use: the HTTP client and process of a service node, owned scratch dirs
and idempotent requests."""
