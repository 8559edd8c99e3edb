"""An emulated skill backend: a real loopback HTTP server speaking the
OpenAI chat/completions API (vLLM-style batched ``/v1/completions``) and the
``http`` skill contract, with configurable latency, failures and limits.

Users, the demo, the benchmarks and the tests run skills against it::

    async with Emulator(EmulatorConfig(models={"gpt-4o": ModelProfile(latency_ms=2000)},
                                       latency_scale=0.01)) as emu:
        ...  # point an implementation's url at emu.url

or standalone: ``python -m router.emulator --port 8081 --config emulator.yaml``.
"""

from router.emulator._config import EmulatorConfig, InvalidProfile, ModelProfile
from router.emulator._server import Emulator, ModelStats, ReceivedRequest

__all__ = [
    "Emulator",
    "EmulatorConfig",
    "InvalidProfile",
    "ModelProfile",
    "ModelStats",
    "ReceivedRequest",
]
