from gateway.store.sqlite import Store

__all__ = ["Store"]
