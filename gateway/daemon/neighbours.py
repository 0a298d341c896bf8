"""Moved to gateway.netinfo.neighbours (re-exported until the daemon stops importing it)."""

from gateway.netinfo.neighbours import Neighbours as Neighbours
