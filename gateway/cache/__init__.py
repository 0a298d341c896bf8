"""Government-services reverse-proxy cache: HTTP caching rules and the disk store."""
