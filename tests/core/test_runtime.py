"""Process setup under torchrun."""

import os
import subprocess
import sys
import textwrap

import pytest

LEAVES_THE_GROUP = textwrap.dedent("""
    import atexit, os
    import torch.distributed as dist
    # atexit runs handlers last-registered first, so this one runs after anything init_distributed registers
    atexit.register(lambda: os.write(1, f"AT EXIT initialized={dist.is_initialized()}\\n".encode()))
    from mhtag.core.runtime import init_distributed
    info = init_distributed()
    dist.barrier()
    os.write(1, f"RANK {info.rank} of {info.world_size} initialized={dist.is_initialized()}\\n".encode())
""")


@pytest.mark.slow  # three processes that each import torch
def test_a_process_group_joined_under_torchrun_is_left_before_the_interpreter_exits(tmp_path):
    """Left to interpreter teardown, a Gloo group can abort a finished rank (SIGABRT) and fail the run."""
    script = tmp_path / "join.py"
    script.write_text(LEAVES_THE_GROUP)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert sorted(line for line in lines if line.startswith("RANK")) == [
        "RANK 0 of 2 initialized=True", "RANK 1 of 2 initialized=True"]
    assert [line for line in lines if line.startswith("AT EXIT")] == ["AT EXIT initialized=False"] * 2
