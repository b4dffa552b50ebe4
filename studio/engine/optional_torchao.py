"""torchao (the int8 base's library, an optional extra) kept out of programs that do not
quantize.

Where it is installed, transformers (modeling_utils -> quantizers.auto -> quantizer_torchao),
diffusers (quantizers.torchao), peft and accelerate import it as they load, whether or not
anything quantizes. That costs seconds and prints warnings the user did not cause (torch's
pytree on torchao's enums, diffusers' "Unable to import `torchao` Tensor objects"), and no
narrower import avoids it: every model load goes through transformers.modeling_utils. Each of
them asks importlib.util.find_spec("torchao") first, which answers None for a name that
sys.modules maps to None; so a program that knows at its start that it will not quantize
hides torchao from them.
"""
from __future__ import annotations

import sys

# They decide at import (or cache the answer) whether torchao is there: once one of them is
# loaded, hiding it would leave that one importing a module it cannot find.
_ASKERS = ("diffusers", "transformers", "peft", "accelerate")


def keep_out_unless(quantized: bool) -> bool:
    """At a program's start: hide torchao from this process unless it quantizes (with int8).
    Nothing is hidden once torchao or a library that looks for it is loaded. True if hidden."""
    if quantized or any(name in sys.modules for name in ("torchao", *_ASKERS)):
        return False
    sys.modules["torchao"] = None
    return True
