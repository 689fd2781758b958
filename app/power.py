"""Is this computer running on battery? (for "pause indexing while on battery"). No Qt here."""

from __future__ import annotations

import sys
from pathlib import Path

POWER_SUPPLY = Path("/sys/class/power_supply")


def on_battery() -> bool | None:
    """True on battery, False on mains, None when the platform does not say."""
    if sys.platform.startswith("linux"):
        mains = [
            p for p in POWER_SUPPLY.glob("*") if (p / "type").exists() and (p / "type").read_text().strip() == "Mains"
        ]
        if not mains:
            return None
        return not any((p / "online").read_text().strip() == "1" for p in mains if (p / "online").exists())
    if sys.platform == "win32":
        import ctypes

        class _Status(ctypes.Structure):
            _fields_ = [
                ("ACLineStatus", ctypes.c_byte),
                ("BatteryFlag", ctypes.c_byte),
                ("BatteryLifePercent", ctypes.c_byte),
                ("SystemStatusFlag", ctypes.c_byte),
                ("BatteryLifeTime", ctypes.c_ulong),
                ("BatteryFullLifeTime", ctypes.c_ulong),
            ]

        status = _Status()
        if not ctypes.windll.kernel32.GetSystemPowerStatus(ctypes.byref(status)):
            return None
        return {0: True, 1: False}.get(status.ACLineStatus)
    return None
