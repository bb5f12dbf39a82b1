"""The boot environment: a Debian kernel + initrd (built with mmdebstrap) that runs the fleetcast agent.

The API the network boot and the lab use::

    env = fleetcast.bootenv.ensure(BootEnvOptions(), cache_dir=None, progress=print)
    env.kernel, env.initrd, env.key
    env.cmdline("http://10.0.0.1:8080", token, boot_mac="52:54:00:12:34:56")

Built once per set of inputs and cached outside the checkout (``/var/cache/fleetcast/bootenv/<key>/``).
See docs/boot-environment.md.
"""

from __future__ import annotations

from fleetcast.bootenv.build import DEFAULT_CACHE, BootEnv, ensure
from fleetcast.bootenv.options import BASE_PACKAGES, BootEnvOptions

__all__ = ["BASE_PACKAGES", "DEFAULT_CACHE", "BootEnv", "BootEnvOptions", "ensure"]
