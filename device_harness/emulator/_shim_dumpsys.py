"""``dumpsys`` for the emulated device (run as ``python -I -S _shim_dumpsys.py STATE_DIR ARGS``).

Standalone on purpose: it runs in the sandboxed shell with an isolated interpreter, so it may
import nothing from the project. Services:

* ``thermalservice`` -- ``Thermal Status: N`` from the profile (or the live override file),
* ``meminfo PID|NAME`` -- real figures for a process on this host, from /proc/PID/smaps_rollup
  (``TOTAL`` row: PSS first, as on Android; ``TOTAL PSS:`` in the App Summary),
* ``meminfo`` -- Total/Free RAM from /proc/meminfo.
"""
import json
import os
import sys

_TYPES = {"cpu": 0, "gpu": 1, "battery": 2, "skin": 3}


def _thermal(state):
    with open(os.path.join(state, "device.json"), encoding="utf-8") as fh:
        device = json.load(fh)
    try:
        with open(os.path.join(state, "thermal_status"), encoding="utf-8") as fh:
            status = int(fh.read().strip())
    except (OSError, ValueError):
        status = device["thermal_status"]
    temps = "".join(
        "\tTemperature{mValue=%.1f, mType=%d, mName=%s, mStatus=%d}\n"
        % (value, next((t for p, t in _TYPES.items() if name.startswith(p)), -1), name, status)
        for name, value in device["temperatures_c"].items())
    listeners = "\tcallbacks: 0\n\tkilled: false\n\tbroadcasts count: -1\n"
    sys.stdout.write(
        "IsStatusOverride: false\nThermalEventListeners:\n" + listeners
        + "ThermalStatusListeners:\n" + listeners + "Thermal Status: %d\n" % status
        + "Cached temperatures:\n" + temps + "HAL Ready: true\nHAL connection:\n"
        + "\tThermalHAL: deepcompress emulated device (profile)\n"
        + "Current temperatures from HAL:\n" + temps)
    return 0


def _find_pid(name):
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as fh:
                argv0 = fh.read().split(b"\0", 1)[0].decode("utf-8", "replace")
            with open("/proc/%s/comm" % entry, encoding="utf-8") as fh:
                comm = fh.read().strip()
        except OSError:
            continue
        if name in (argv0, os.path.basename(argv0), comm):
            return entry
    return None


def _rollup(pid):
    fields = {}
    with open("/proc/%s/smaps_rollup" % pid, encoding="utf-8") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1])
    return fields


def _process_name(pid):
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as fh:
            name = fh.read().split(b"\0", 1)[0].decode("utf-8", "replace")
        if not name:
            with open("/proc/%s/comm" % pid, encoding="utf-8") as fh:
                name = fh.read().strip()
        return name
    except OSError:
        return "?"


def _meminfo_process(arg):
    pid = arg if arg.isdigit() else _find_pid(arg)
    try:
        f = _rollup(pid) if pid else None
    except OSError:
        f = None
    if not f:
        sys.stdout.write("No process found for: %s\n" % arg)
        return 0
    pss, rss = f.get("Pss", 0), f.get("Rss", 0)
    dirty, clean, swap = f.get("Private_Dirty", 0), f.get("Private_Clean", 0), f.get("SwapPss", 0)
    with open("/proc/uptime", encoding="utf-8") as fh:
        uptime_ms = int(float(fh.read().split()[0]) * 1000)
    row = "%13s %8d %8d %8d %8d %8d\n"
    sys.stdout.write(
        "Applications Memory Usage (in Kilobytes):\nUptime: %d Realtime: %d\n\n" % (uptime_ms, uptime_ms)
        + "** MEMINFO in pid %s [%s] **\n" % (pid, _process_name(pid))
        + "                   Pss  Private  Private  SwapPss      Rss\n"
        + "                 Total    Dirty    Clean    Dirty    Total\n"
        + "                ------   ------   ------   ------   ------\n"
        + row % ("TOTAL", pss, dirty, clean, swap, rss)
        + "\n App Summary\n                       Pss(KB)                        Rss(KB)\n"
        + "                        ------                         ------\n"
        + "       Private Other: %8d\n" % (dirty + clean)
        + "              System: %8d\n\n" % max(pss - dirty - clean, 0)
        + "           TOTAL PSS: %8d            TOTAL RSS: %8d       TOTAL SWAP PSS: %8d\n"
        % (pss, rss, swap))
    return 0


def _meminfo_summary():
    info = {}
    with open("/proc/meminfo", encoding="utf-8") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0]) if rest.split() else 0
    free = info.get("MemAvailable", info.get("MemFree", 0))
    sys.stdout.write("Total RAM: %d K (status normal)\n Free RAM: %d K\n Used RAM: %d K\n"
                     % (info.get("MemTotal", 0), free, info.get("MemTotal", 0) - free))
    return 0


def main(argv):
    state, args = argv[0], argv[1:]
    if not args or args[0] == "-l":
        sys.stdout.write("Currently running services:\n  meminfo\n  thermalservice\n")
        return 0
    if args[0] == "thermalservice":
        return _thermal(state)
    if args[0] == "meminfo":
        rest = [a for a in args[1:] if not a.startswith("-")]
        return _meminfo_process(rest[0]) if rest else _meminfo_summary()
    sys.stderr.write("Can't find service: %s\n" % args[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
