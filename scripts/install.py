"""`uv pip install` into this virtual environment, from the package sources pip is configured with.

    .venv/bin/python scripts/install.py -c constraints.txt -e ".[test]"

`make install` installs the locked set with uv: a clean clone's install took 29 s on a 2-core machine where
pip and compiling every module took 97 s (README "The two commands"). uv reads no pip configuration, so
what pip would use on this machine (pip.conf files and PIP_* variables, as `pip config list` reports them)
is passed on: index-url, extra-index-url, find-links, constraint, no-index, trusted-host, cert, client-cert,
proxy and timeout; other pip settings do not concern where packages come from or how they are reached.
Like pip, uv then takes the best version over all indexes (`unsafe-best-match`), so that it installs what
pip would. Nothing is compiled to bytecode here: Python compiles what a process imports, once, when it
first imports it.
"""

import ast
import os
import subprocess
import sys

# pip's option -> uv's, for the options that say where packages come from (a list: pip splits on spaces).
FLAGS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
    "trusted-host": "--allow-insecure-host",
}
# Sections in rising precedence for `pip install`: the global one, the command's own, then PIP_* variables.
SECTIONS = ("global", "install", ":env:")


def pip_settings() -> dict[str, str]:
    """pip's effective settings for `pip install`: `pip config list` prints `section.key='value'` lines."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    found: dict[tuple[str, str], str] = {}
    for line in listed.splitlines():
        name, _, value = line.partition("=")
        section, _, key = name.rpartition(".")
        found[(section, key)] = str(ast.literal_eval(value))
    settings: dict[str, str] = {}
    for section in SECTIONS:
        settings |= {key: value for (where, key), value in found.items() if where == section}
    return settings


def uv_command(settings: dict[str, str], args: list[str]) -> tuple[list[str], dict[str, str]]:
    uv = os.path.join(os.path.dirname(sys.executable), "uv")
    command = [uv, "pip", "install", "--python", sys.executable, "--index-strategy", "unsafe-best-match"]
    for key, flag in FLAGS.items():
        for value in settings.get(key, "").split():
            command += [flag, value]
    if settings.get("no-index", "").lower() in {"1", "true", "yes", "on"}:
        command.append("--no-index")
    env = dict(os.environ)
    if "cert" in settings:
        env.setdefault("SSL_CERT_FILE", settings["cert"])
    if "client-cert" in settings:  # one PEM file with the certificate and its key, for pip and uv alike
        env.setdefault("SSL_CLIENT_CERT", settings["client-cert"])
    if "proxy" in settings:  # pip's proxy serves both schemes; as with pip, one set in the environment wins
        for name in ("HTTP_PROXY", "HTTPS_PROXY"):
            if name not in env and name.lower() not in env:
                env[name] = settings["proxy"]
    for key in ("timeout", "default-timeout"):
        if key in settings:
            env.setdefault("UV_HTTP_TIMEOUT", settings[key])
    return [*command, *args], env


def main() -> None:
    command, env = uv_command(pip_settings(), sys.argv[1:])
    raise SystemExit(subprocess.run(command, env=env).returncode)


if __name__ == "__main__":
    main()
