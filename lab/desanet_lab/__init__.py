"""The virtual village: network namespaces for the demo, training and tests.

Public API::

    from desanet_lab import LabSpec, lab_up, lab_down, lab_status, run_in, client_ns
"""

from desanet_lab.api import (
    ClientInfo,
    Lab,
    LabInfo,
    lab_device_cert,
    lab_dhcp,
    lab_down,
    lab_status,
    lab_up,
    run_in,
)
from desanet_lab.plan import LabPlan, LabSpec, client_ns, plan_lab, topology_commands

__all__ = [
    "ClientInfo",
    "Lab",
    "LabInfo",
    "LabPlan",
    "LabSpec",
    "client_ns",
    "lab_device_cert",
    "lab_dhcp",
    "lab_down",
    "lab_status",
    "lab_up",
    "plan_lab",
    "run_in",
    "topology_commands",
]
