"""Deprecated: the kernel worker moved to :mod:`gateway.kernel` (``KernelWorker``)."""

from gateway.kernel import KernelWorker as NetlinkThread

__all__ = ["NetlinkThread"]
