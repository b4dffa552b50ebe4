"""The Ascend environment for NPU training subprocesses: CANN's set_env.sh plus the recipe's
variables.

The defaults are the reference recipe's, Ascend/MindSpeed-MM
examples/diffsynth/qwen_image_edit/train_qwen_image_edit_lora.sh (commits 7c1a539 and
37ccda3; the later one sources /usr/local/Ascend/cann/set_env.sh, the CANN 8.5+ location,
the earlier one /usr/local/Ascend/ascend-toolkit/set_env.sh). DiffSynth-Studio's own NPU
example (examples/qwen_image/model_training/special/npu_training/) sets only
PYTORCH_NPU_ALLOC_CONF and CPU_AFFINITY_CONF, both included.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Mapping

RECIPE_ENV: dict[str, str] = {
    "ASCEND_SLOG_PRINT_TO_STDOUT": "0",  # CANN logs to files, not the training log
    "ASCEND_GLOBAL_LOG_LEVEL": "3",  # errors only
    "ASCEND_GLOBAL_EVENT_ENABLE": "0",
    "TASK_QUEUE_ENABLE": "2",  # level-2 operator dispatch pipeline
    "COMBINED_ENABLE": "1",  # fuse non-contiguous-view copies
    "HCCL_WHITELIST_DISABLE": "1",
    "HCCL_CONNECT_TIMEOUT": "1200",  # seconds for ranks to find each other
    "ACLNN_CACHE_LIMIT": "100000",
    "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "CPU_AFFINITY_CONF": "1",  # bind each rank's threads to its NPU's cores
    "HCCL_DETERMINISTIC": "True",  # reproducible reductions (the recipe's choice, at some speed)
}

# The recipe leaves these to CANN; listed so a settings form can offer them.
OPTIONAL_ENV: dict[str, str] = {
    # Seconds one collective may wait (CANN default 1836). Other ranks wait in a barrier while
    # rank 0 encodes the dataset cache: raise it for large first runs.
    "HCCL_EXEC_TIMEOUT": "1836",
    "HCCL_SOCKET_IFNAME": "",  # several nodes: the network interface HCCL's host side uses
    "ASCEND_RT_VISIBLE_DEVICES": "",  # which NPUs this node uses, e.g. 0,1,2,3
}

SET_ENV_CANDIDATES = (
    "/usr/local/Ascend/ascend-toolkit/set_env.sh",
    "/usr/local/Ascend/cann/set_env.sh",
)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def npu_env(overrides: Mapping[str, object] | None = None) -> dict[str, str]:
    """The recipe's Ascend variables with `overrides` applied: a value replaces or adds a
    variable, None (or "") drops it from this set (the subprocess then inherits whatever
    the launching environment has)."""
    env = dict(RECIPE_ENV)
    for name, value in (overrides or {}).items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{name!r} is not an environment variable name")
        if value is None or value == "":
            env.pop(name, None)
        else:
            env[name] = str(value)
    return env


def find_set_env(path: str | Path | None = None,
                 candidates: tuple[str, ...] = SET_ENV_CANDIDATES) -> Path | None:
    """The CANN set_env.sh to source: `path` when given (it must exist: a configured path
    that is missing is a mistake worth saying), else the first default location present."""
    if path:
        script = Path(path).expanduser()
        if not script.is_file():
            raise FileNotFoundError(f"CANN set_env.sh not found at {script}")
        return script
    return next((Path(c) for c in candidates if Path(c).is_file()), None)


def sourced_env(script: str | Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment after `source script` in bash, starting from `base` (default: ours)."""
    # The script's own output goes to stderr so that stdout carries only `env -0`.
    done = subprocess.run(["bash", "-c", 'source "$0" 1>&2 && env -0', str(script)],
                          env=dict(os.environ if base is None else base),
                          capture_output=True, check=False)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip()[-500:]
        raise RuntimeError(f"sourcing {script} failed (exit {done.returncode}): {tail}")
    env = {}
    for entry in done.stdout.split(b"\0"):
        name, sep, value = entry.decode(errors="surrogateescape").partition("=")
        if sep and name not in ("_", "SHLVL"):  # bash's own bookkeeping
            env[name] = value
    return env


def training_env(base: Mapping[str, str] | None = None,
                 overrides: Mapping[str, object] | None = None,
                 set_env_path: str | Path | None = None,
                 candidates: tuple[str, ...] = SET_ENV_CANDIDATES) -> dict[str, str]:
    """The full environment for an NPU training subprocess: `base` (default os.environ),
    CANN's set_env.sh sourced when present, then `npu_env(overrides)` on top."""
    env = dict(os.environ if base is None else base)
    script = find_set_env(set_env_path, candidates)
    if script is not None:
        env = sourced_env(script, env)
    env.update(npu_env(overrides))
    return env
