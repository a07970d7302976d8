# SPDX-License-Identifier: GPL-3.0-or-later
"""Where an installed backend lives, which one is current, and whether it fits this add-on.
Pure standard library: no bpy.

One folder (the extension's user folder, ``<root>``) holds::

    <root>/envs/env-<stamp>/      a virtual environment per install (the newest good one is used)
    <root>/current.json           {"env": "env-<stamp>", ...}: the environment in use
    <root>/envs/env-<stamp>/pointwear-install.json   what the install found (version, protocol, torch)
    <root>/install.log            the last install's log (pip's output, each step's command)
    <root>/doctor.json            the last ``pointwear doctor --json`` report

An install builds a new ``env-<stamp>`` next to the current one and, only once it is complete and
checked, replaces ``current.json`` in one ``os.replace``: a failed or cancelled install leaves the
previous environment in use. Environments are never moved (a moved venv's scripts break).
"""

import json
import os
import shutil
import sys
import time

POINTER = "current.json"
ENVS = "envs"
INFO = "pointwear-install.json"
LOG = "install.log"
DOCTOR = "doctor.json"
ENV_PREFIX = "env-"


def venv_python(env_dir):
    """The Python executable of a virtual environment folder."""
    if sys.platform == "win32":
        return os.path.join(env_dir, "Scripts", "python.exe")
    return os.path.join(env_dir, "bin", "python")


def _write_json_atomic(path, data):
    tmp = "{}.tmp-{}".format(path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path):
    """A JSON object from ``path``, or None when missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class EnvLayout:
    """The backend environments under one root folder (see the module docstring)."""

    def __init__(self, root):
        self.root = os.path.abspath(root)

    @property
    def envs_dir(self):
        return os.path.join(self.root, ENVS)

    @property
    def log_path(self):
        return os.path.join(self.root, LOG)

    @property
    def doctor_path(self):
        return os.path.join(self.root, DOCTOR)

    def new_env_dir(self):
        """A fresh, not yet existing environment folder (named after the time)."""
        os.makedirs(self.envs_dir, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for n in range(1000):
            path = os.path.join(self.envs_dir, "{}{}{}".format(ENV_PREFIX, stamp,
                                                               "-{}".format(n) if n else ""))
            if not os.path.exists(path):
                return path
        raise OSError("no free environment name in " + self.envs_dir)

    def current_env(self):
        """The folder of the environment in use, or "" when none is installed (or it is gone)."""
        pointer = read_json(os.path.join(self.root, POINTER)) or {}
        name = str(pointer.get("env") or "")
        if not name or os.sep in name or "/" in name or name.startswith("."):
            return ""
        path = os.path.join(self.envs_dir, name)
        return path if os.path.isfile(venv_python(path)) else ""

    def current_python(self):
        env = self.current_env()
        return venv_python(env) if env else ""

    def current_info(self):
        """What the install of the current environment recorded (dict), or None."""
        env = self.current_env()
        return read_json(os.path.join(env, INFO)) if env else None

    def write_info(self, env_dir, info):
        _write_json_atomic(os.path.join(env_dir, INFO), info)

    def switch_to(self, env_dir):
        """Make ``env_dir`` (under envs/) the environment in use, in one atomic replace."""
        name = os.path.basename(os.path.normpath(env_dir))
        if os.path.dirname(os.path.abspath(env_dir)) != self.envs_dir:
            raise ValueError("not an environment of {}: {}".format(self.root, env_dir))
        _write_json_atomic(os.path.join(self.root, POINTER), {"env": name, "since": time.time()})

    def remove_others(self):
        """Delete every environment folder but the current one; returns the names that could not
        be deleted (files in use, e.g. on Windows while a backend runs from them)."""
        keep = os.path.basename(self.current_env()) if self.current_env() else None
        left = []
        for name in sorted(os.listdir(self.envs_dir)) if os.path.isdir(self.envs_dir) else ():
            if name != keep:
                shutil.rmtree(os.path.join(self.envs_dir, name), ignore_errors=True)
                if os.path.exists(os.path.join(self.envs_dir, name)):
                    left.append(name)
        return left

    def remove_all(self):
        """Delete every environment and the pointer (the log and doctor report stay)."""
        try:
            os.remove(os.path.join(self.root, POINTER))
        except FileNotFoundError:
            pass
        shutil.rmtree(self.envs_dir, ignore_errors=True)
        return not os.path.exists(self.envs_dir)

    def log_tail(self, lines=12):
        """The last lines of the install log ([] when there is none)."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                text = fh.read()[-64 * 1024:]
        except OSError:
            return []
        return text.rstrip("\n").splitlines()[-lines:]


# -- does the installed backend fit this add-on? -----------------------------------------------

FITS = "fits"
UPDATE_BACKEND = "update_backend"
UPDATE_ADDON = "update_addon"
VERSION_DIFFERS = "version_differs"   # same protocol, other version: works, updating advised


def compatibility(info, addon_version, addon_protocol):
    """(verdict, message) for an installed backend's ``info`` (``version``, ``protocol``) against
    this add-on's version and protocol. Verdicts: FITS, VERSION_DIFFERS (it works),
    UPDATE_BACKEND, UPDATE_ADDON (it cannot work: the panel says which side to update)."""
    version, protocol = str(info.get("version") or "?"), info.get("protocol")
    if not isinstance(protocol, int) or isinstance(protocol, bool):
        return UPDATE_BACKEND, ("The installed backend ({}) does not say its protocol: "
                                "Update Backend".format(version))
    if protocol < addon_protocol:
        return UPDATE_BACKEND, ("The installed backend {} speaks protocol {}, this add-on {} speaks "
                                "{}: Update Backend".format(version, protocol, addon_version,
                                                            addon_protocol))
    if protocol > addon_protocol:
        return UPDATE_ADDON, ("The installed backend {} speaks protocol {}, this add-on {} only {}: "
                              "update the add-on (install the Pointwear {} extension)".format(
                                  version, protocol, addon_version, addon_protocol, version))
    if version != addon_version:
        return VERSION_DIFFERS, ("Backend {} with add-on {} (both protocol {}): they work together; "
                                 "Update Backend to match".format(version, addon_version, protocol))
    return FITS, "Backend {} matches the add-on".format(version)
