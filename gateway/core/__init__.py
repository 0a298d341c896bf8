"""The core: services, the facade, the event bus, the reconcile loop and the state tables.

Imports no transport and no adapter; it depends on the ports in ``gateway/ports.py``.
"""
