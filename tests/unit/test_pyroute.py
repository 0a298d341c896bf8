"""gateway.pyroute: the daemon's pyroute2 parts load without all of pyroute2, and
nothing of pyroute2's package is lost to code that wants it whole."""

from __future__ import annotations

import json
import subprocess
import sys

# what the daemon imports, the way it imports it (tc.py, conntrack.py, kernel.py)
DAEMON_USES = (
    "from gateway.kernel import netlink_errors\n"
    "netlink_errors()\n"
    "from gateway.pyroute import lean\n"
    "lean()\n"
    "from pyroute2.iproute import IPRoute\n"
    "from pyroute2.conntrack import Conntrack, NFCTAttrTuple\n"
    "from pyroute2.netlink import NLM_F_ACK\n"
    "from pyroute2.netlink.nfnetlink.nfctsocket import IPCTNL_MSG_CT_DELETE, nfct_msg\n")


def run(code: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_daemons_pyroute2_parts_skip_the_rest_of_pyroute2() -> None:
    out = run(DAEMON_USES + "import json, sys\n"
              "print(json.dumps({'ndb': 'pyroute2.ndb' in sys.modules,"
              " 'ipdb': 'pyroute2.ipdb' in sys.modules,"
              " 'plan9': 'pyroute2.plan9' in sys.modules}))")
    assert out == {"ndb": False, "ipdb": False, "plan9": False}


def test_the_whole_package_is_still_there_for_whoever_asks() -> None:
    # positive control: the first read of a package-level name runs pyroute2's __init__,
    # after which its names are the very classes the submodules gave the daemon
    out = run(DAEMON_USES + "import json, sys\nimport pyroute2\n"
              "from pyroute2 import IPRoute as I2, NDB\n"
              "print(json.dumps({'same': I2 is IPRoute and pyroute2.Conntrack is Conntrack,"
              " 'ndb': 'pyroute2.ndb' in sys.modules, 'version': pyroute2.__version__}))")
    assert out["same"] is True and out["ndb"] is True and out["version"]


def test_lean_after_a_full_import_changes_nothing() -> None:
    out = run("import pyroute2, sys, json\nfrom gateway.pyroute import lean\nlean()\n"
              "print(json.dumps({'same': sys.modules['pyroute2'] is pyroute2,"
              " 'ndb': hasattr(pyroute2, 'NDB')}))")
    assert out == {"same": True, "ndb": True}
