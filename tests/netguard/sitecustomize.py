"""Start-up hook of test subprocesses: install the network guard when the test run asks for it."""

import os
import sys

if os.environ.get("NETGUARD_LOG"):  # set by tests/conftest.py for the whole pytest run
    import netguard

    record = netguard.file_recorder(os.environ["NETGUARD_LOG"])
    netguard.install(record)
    for network in filter(None, os.environ.get(netguard.ALLOW_ENV, "").split(",")):
        try:
            netguard.allow(network)  # a multi-host test's own subnet (see netguard.py)
        except ValueError as exc:  # recorded, so the test run fails; the guard stays installed
            record(f"{netguard.ALLOW_ENV} {network!r} refused")
            print(exc, file=sys.stderr)
