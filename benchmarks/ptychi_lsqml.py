"""pty-chi's LSQML on a CXI file, for benchmarks/solvers.py (runs in the pty-chi venv).

Usage: python ptychi_lsqml.py IN.cxi START.npz OUT.npz EPOCHS THREADS
START.npz holds the starting probe and the view corners (row, column px) on the
object grid of the given shape that our solvers use, so both start alike; the
positions are handed to pty-chi as probe centres relative to the object's centre.
"""

import sys
import time

import h5py
import numpy as np
import ptychi.api as api
import torch
from ptychi.api.task import PtychographyTask


def main() -> None:
    cxi, start, out, epochs, threads = sys.argv[1:6]
    torch.set_num_threads(int(threads))
    with h5py.File(cxi, "r") as f:
        data = np.asarray(f["entry_1/data_1/data"][()], np.float32)
    s = np.load(start)
    probe = s["probe"].astype(np.complex64)
    h, w = probe.shape[-2:]
    ny, nx = (int(v) for v in s["object_shape"])
    corners = s["corners"]
    pos_y = corners[:, 0] + h / 2 - ny / 2
    pos_x = corners[:, 1] + w / 2 - nx / 2

    o = api.LSQMLOptions()
    o.data_options.data = data
    o.object_options.initial_guess = torch.ones((1, ny, nx), dtype=torch.complex64)
    o.object_options.pixel_size_m = 1.0
    o.object_options.optimizable = True
    o.object_options.optimizer = api.Optimizers.SGD
    o.object_options.step_size = 1
    o.probe_options.initial_guess = torch.as_tensor(probe.reshape(1, 1, h, w))
    o.probe_options.optimizable = True
    o.probe_options.optimizer = api.Optimizers.SGD
    o.probe_options.step_size = 1
    o.probe_position_options.position_x_px = pos_x
    o.probe_position_options.position_y_px = pos_y
    o.probe_position_options.optimizable = False
    o.reconstructor_options.batch_size = 64
    o.reconstructor_options.noise_model = api.NoiseModels.GAUSSIAN
    o.reconstructor_options.num_epochs = int(epochs)
    task = PtychographyTask(o)
    t0 = time.perf_counter()
    task.run()
    seconds = time.perf_counter() - t0
    obj = task.get_data_to_cpu("object", as_numpy=True)
    np.savez(out, object=np.asarray(obj).reshape(-1, ny, nx)[0], seconds=seconds)
    print(f"pty-chi LSQML: {epochs} epochs in {seconds:.1f} s")


if __name__ == "__main__":
    main()
