"""Pool workers end with their parent, even when it is killed with SIGKILL."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from process_tree import descendants, wait_gone

from ptxseg.util.processes import alive

PARENT = textwrap.dedent(
    """
    import os, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from ptxseg.util.processes import die_with_parent

    def pid(_):
        time.sleep(0.2)
        return os.getpid()

    if __name__ == "__main__":
        with_guard = sys.argv[1] == "guard"
        kwargs = {"initializer": die_with_parent, "initargs": (os.getpid(),)} if with_guard else {}
        pool = ProcessPoolExecutor(2, **kwargs)
        print(sorted(set(pool.map(pid, range(4)))), flush=True)
        time.sleep(60)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("guard", [True, False])
def test_pool_workers_die_with_a_parent_killed_by_sigkill(tmp_path, guard):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen(
        [sys.executable, str(script), "guard" if guard else "plain"],
        stdout=subprocess.PIPE,
        text=True,
    )
    workers = eval(parent.stdout.readline())  # noqa: S307 - our own script's list of pids
    assert len(workers) == 2 and set(workers) <= set(descendants(parent.pid))
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    try:
        if guard:
            assert wait_gone(workers, timeout=10), "workers outlived their parent"
        else:  # without the guard they stay: the test shows what the guard fixes
            time.sleep(1)
            assert all(alive(pid) for pid in workers)
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
