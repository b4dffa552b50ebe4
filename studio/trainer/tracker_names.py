"""The experiment trackers --report_to can name, and whether each one's library is installed.
No tracker is imported here (the job manager checks a run's choice at submit with this)."""
from __future__ import annotations

import importlib.util

# --report_to value -> the modules that can serve it (accelerate's TensorBoard tracker takes
# tensorboardX where tensorboard is missing), and what to install.
LIBRARIES = {"tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
             "wandb": (("wandb",), "wandb"),
             "mlflow": (("mlflow",), "mlflow"),
             "trackio": (("trackio",), "trackio")}
TRACKERS = ("none", *LIBRARIES)


def tracker_problem(name: str) -> str | None:
    """Why --report_to NAME cannot run here, if it cannot."""
    if name == "none":
        return None
    modules, package = LIBRARIES[name]
    if any(importlib.util.find_spec(m) is not None for m in modules):
        return None
    return (f"--report_to {name} needs the {package} library, which is not installed here: "
            f"pip install {package} (requirements-trackers.txt lists the trackers), or choose "
            f"another tracker, or none")
