"""Provisioning: a fleet CA, per-village bundles and their first-boot import (docs/provisioning.md)."""
