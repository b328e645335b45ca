"""What every benchmark records: where the results go and the machine they were measured on."""
from __future__ import annotations

import datetime
import os
import pathlib
import platform

import torch

from nblib.core.runtime import source_hash

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.machine()}",
        "date": datetime.date.today().isoformat(),
        "nblib_hash": source_hash(),          # the code measured: results on other code are stale
    }


class TwoLayerReLU(torch.nn.Module):
    """f(x) = Σ_i c_i σ(a_i x + b_i) + a0·x + b0 as Linear layers (the same function as nblib's)."""

    def __init__(self, params):
        super().__init__()
        W = params["a"].numel()
        self.hidden = torch.nn.Linear(1, W)
        self.outer, self.skip = torch.nn.Linear(W, 1, bias=False), torch.nn.Linear(1, 1)
        with torch.no_grad():
            self.hidden.weight.copy_(params["a"][:, None]), self.hidden.bias.copy_(params["b"])
            self.outer.weight.copy_(params["c"][None])
            self.skip.weight.fill_(params["a0"]), self.skip.bias.fill_(params["b0"])

    def forward(self, x):
        return self.outer(torch.relu(self.hidden(x))) + self.skip(x)
