"""The boot environment: a Debian kernel + initrd (built with mmdebstrap) that runs the fleetcast agent.

The API the network boot and the lab use::

    env = fleetcast.bootenv.ensure(BootEnvOptions(), cache_dir=None, progress=print)
    env.kernel, env.initrd, env.key
    env.cmdline("http://10.0.0.1:8080", token, boot_mac="52:54:00:12:34:56")

Built once per set of inputs and cached outside the checkout (``/var/cache/fleetcast/bootenv/<key>/``).
See docs/boot-environment.md.

The names below are imported on first use: the boot environment's own init (``python3 -m
fleetcast.bootenv.init``, run on the client at every boot) imports this package and must not pay for
the build's modules (importlib.metadata, compileall, tempfile ...) under the client's CPU.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleetcast.bootenv.build import DEFAULT_CACHE, BootEnv, ensure
    from fleetcast.bootenv.options import BASE_PACKAGES, BootEnvOptions

__all__ = ["BASE_PACKAGES", "DEFAULT_CACHE", "BootEnv", "BootEnvOptions", "ensure"]
_MODULE_OF = {
    "BASE_PACKAGES": "options",
    "BootEnvOptions": "options",
    "DEFAULT_CACHE": "build",
    "BootEnv": "build",
    "ensure": "build",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'fleetcast.bootenv' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fleetcast.bootenv.{module}"), name)
