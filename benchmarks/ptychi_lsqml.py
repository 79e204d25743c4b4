"""pty-chi's LSQML on a CXI file, for benchmarks/solvers.py (runs in the pty-chi venv).

Usage: python ptychi_lsqml.py IN.cxi START.npz OUT.npz EPOCHS THREADS
START.npz holds the starting probe (H, W) or (M, H, W), the view corners (row,
column px) on the object grid of the given shape that our solvers use, so both
start alike, the frames to use (``keep``, optional: all), and ``positions``
(1: pty-chi's own position correction on, from epoch ``position_start``). The
positions are handed to pty-chi as probe centres relative to the object's
centre. OUT.npz gets the object, the refined corners, the seconds spent
iterating, and the object after every ``record_every``-th epoch (``record_every``
in START.npz, 0: none) with the time at which it was reached (the copies are
made outside the timed part).
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
    s = np.load(start)
    with h5py.File(cxi, "r") as f:
        data = np.asarray(f["entry_1/data_1/data"][()], np.float32)
    keep = s["keep"] if "keep" in s else np.ones(len(data), bool)
    data = data[keep]
    probe = s["probe"].astype(np.complex64)
    probe = probe.reshape(-1, *probe.shape[-2:])
    m, h, w = probe.shape
    ny, nx = (int(v) for v in s["object_shape"])
    corners = s["corners"][keep]
    pos_y = corners[:, 0] + h / 2 - ny / 2
    pos_x = corners[:, 1] + w / 2 - nx / 2
    refine = bool(s["positions"]) if "positions" in s else False
    record = int(s["record_every"]) if "record_every" in s else 0

    o = api.LSQMLOptions()
    o.data_options.data = data
    o.object_options.initial_guess = torch.ones((1, ny, nx), dtype=torch.complex64)
    o.object_options.pixel_size_m = 1.0
    o.object_options.optimizable = True
    o.object_options.optimizer = api.Optimizers.SGD
    o.object_options.step_size = 1
    o.probe_options.initial_guess = torch.as_tensor(probe.reshape(1, m, h, w))
    o.probe_options.optimizable = True
    o.probe_options.optimizer = api.Optimizers.SGD
    o.probe_options.step_size = 1
    o.probe_position_options.position_x_px = pos_x
    o.probe_position_options.position_y_px = pos_y
    o.probe_position_options.optimizable = refine
    if refine:
        o.probe_position_options.optimizer = api.Optimizers.SGD
        o.probe_position_options.step_size = 0.3
        o.probe_position_options.optimization_plan.start = int(s["position_start"])
    o.reconstructor_options.batch_size = 64
    o.reconstructor_options.noise_model = api.NoiseModels.GAUSSIAN
    o.reconstructor_options.num_epochs = int(epochs)
    task = PtychographyTask(o)
    objects, times = [], []
    spent = 0.0
    done = 0
    step = record if record else int(epochs)
    while done < int(epochs):
        n = min(step, int(epochs) - done)
        t0 = time.perf_counter()
        task.run(n)
        spent += time.perf_counter() - t0
        done += n
        if record:
            obj = task.get_data_to_cpu("object", as_numpy=True)
            objects.append(np.asarray(obj).reshape(-1, ny, nx)[0].astype(np.complex64))
            times.append(spent)
    obj = np.asarray(task.get_data_to_cpu("object", as_numpy=True)).reshape(-1, ny, nx)[0]
    pos = task.get_data_to_cpu("probe_positions", as_numpy=True)
    pos = np.asarray(pos).reshape(-1, 2)
    refined = np.stack([pos[:, 0] - h / 2 + ny / 2, pos[:, 1] - w / 2 + nx / 2], 1)
    np.savez(
        out,
        object=obj,
        corners=refined,
        seconds=spent,
        objects=np.asarray(objects) if objects else np.zeros((0, ny, nx), np.complex64),
        times=np.asarray(times),
    )
    print(f"pty-chi LSQML: {epochs} epochs in {spent:.1f} s")


if __name__ == "__main__":
    main()
