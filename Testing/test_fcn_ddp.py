"""Training runs under torchrun with two CPU processes (DistributedDataParallel, gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from fcn_helpers import write_blob_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_torchrun_training_on_cpu(tmp_path):
    write_blob_dataset(tmp_path / "data", 6, (32, 32), 1.5, seed=3)
    arch = json.dumps({"stem_channels": 4, "stage_channels": [8, 8], "stage_blocks": [1, 1],
                       "pool_before": [True, True], "head_channels": 8})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "landmarkloc", "train-fcn", str(tmp_path / "data"), "-o", str(tmp_path / "model"),
           "--intensity", "ct", "--iterations", "6", "--validate-every", "3", "--batch-size", "2",
           "--crop-size", "32", "--global-arch", arch, "--local-arch", '{"stage_channels": [4, 8], "head_channels": 8}',
           "--device", "cpu", "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["training"]["world_size"] == 2
    assert meta["kind"] == "fcn" and (tmp_path / "model.safetensors").is_file()
    log = (tmp_path / "model.log").read_text()
    assert "world size 2" in log and "iteration 6" in log
    # resume continues from the saved state (single process), with more iterations
    cmd = [sys.executable, "-m", "landmarkloc", "train-fcn", str(tmp_path / "data"), "-o", str(tmp_path / "model"),
           "--intensity", "ct", "--iterations", "8", "--validate-every", "2", "--batch-size", "2",
           "--crop-size", "32", "--global-arch", arch, "--local-arch", '{"stage_channels": [4, 8], "head_channels": 8}',
           "--device", "cpu", "-q", "--resume"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "iteration 8" in (tmp_path / "model.log").read_text()
