"""Start-up hook of test subprocesses: install the network guard when the test run asks for it."""

import os

if os.environ.get("NETGUARD_LOG"):  # set by tests/conftest.py for the whole pytest run
    import netguard

    netguard.install(netguard.file_recorder(os.environ["NETGUARD_LOG"]))
