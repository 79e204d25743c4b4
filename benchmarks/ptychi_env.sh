#!/usr/bin/env bash
# Build the throwaway virtual environment in which benchmarks/solvers.py runs pty-chi.
#
# pty-chi 2.2 (PyPI `ptychi`) on CPU torch 2.13.0 (the CPU wheel on this machine).
# torchvision: the only build for torch 2.13 here is the CUDA one, whose compiled
# operators do not load on CPU torch, and its __init__ then fails registering their
# meta kernels. pty-chi only uses torchvision.transforms.GaussianBlur (pure torch),
# so the two registration imports are made tolerant of the missing operators.
set -euo pipefail
VENV=${1:-.venv-ptychi}
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q --no-deps ptychi==2.2.0 torchvision==0.28.0
"$VENV/bin/pip" install -q numpy scipy h5py pandas "pydantic>=2,<3" scikit-image scikit-learn \
    tqdm matplotlib
TV=$("$VENV/bin/python" -c 'import importlib.util as u; print(u.find_spec("torchvision").submodule_search_locations[0])')
"$VENV/bin/python" - "$TV/__init__.py" <<'PY'
import sys
path = sys.argv[1]
src = open(path).read()
old = "    _autograd_registrations,\n    _meta_registrations,\n"
if old in src:
    src = src.replace(old, "")
    src += (
        "\ntry:  # CPU torch: the CUDA build's operators are absent (benchmarks/ptychi_env.sh)\n"
        "    from torchvision import _autograd_registrations, _meta_registrations  # noqa: F401\n"
        "except RuntimeError:\n"
        "    pass\n"
    )
    open(path, "w").write(src)
PY
"$VENV/bin/python" -c "import ptychi; from torchvision.transforms import GaussianBlur; print('pty-chi', ptychi.__name__, 'ready')"
