"""The build machine's pip settings that a container build can use, as one pip.conf.

Usage: python3 pip_settings.py OUT.conf  -- writes OUT.conf, prints the CA bundle pip trusts (or
nothing). build.sh passes both to the build as secrets, so neither ends up in the image.

pip reads its settings from config files and PIP_* variables (`pip config list` shows both); for
`pip install` a variable beats an [install] entry, which beats a [global] one. Inside the build only
network sources make sense: local folders and file:// indexes of this machine are left out (the
image's pip falls back to PyPI), and so are settings naming local files (constraints, the CA
bundle: that one goes in as its own secret).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

KEPT = ("index-url", "extra-index-url", "find-links", "trusted-host", "proxy", "timeout", "default-timeout",
        "retries")
URL_LISTS = ("index-url", "extra-index-url", "find-links")
PRECEDENCE = ("global", "install", ":env:")  # lowest first
CA_VARIABLES = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def parse_config_list(text: str) -> dict[str, str]:
    """`pip config list` lines (`section.key='value'`) -> the value pip install uses for each key."""
    found: dict[tuple[str, str], str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        section, dot, key = name.rpartition(".")
        if sep and dot:
            found[(section, key)] = ast.literal_eval(value)
    effective = {}
    for section in PRECEDENCE:
        effective.update({key: value for (where, key), value in found.items() if where == section})
    return effective


def remote_only(values: str) -> str:
    return " ".join(v for v in values.split() if v.startswith(("http://", "https://")))


def build_settings(effective: dict[str, str], environ: dict[str, str]) -> dict[str, str]:
    """The settings worth passing into a build: network sources and connection settings."""
    settings = {key: effective[key] for key in KEPT if key in effective}
    for key in URL_LISTS:
        if key in settings:
            settings[key] = remote_only(settings[key])
    proxy = environ.get("HTTPS_PROXY") or environ.get("https_proxy")
    if proxy and "proxy" not in settings:
        settings["proxy"] = proxy
    return {key: value for key, value in settings.items() if value.strip()}


def ca_bundle(effective: dict[str, str], environ: dict[str, str]) -> str:
    for candidate in (effective.get("cert"), *(environ.get(v) for v in CA_VARIABLES),
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.isfile(candidate):
            return candidate
    return ""


def pip_conf_text(settings: dict[str, str]) -> str:
    return "[global]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items())


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: pip_settings.py OUT.conf", file=sys.stderr)
        return 2
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    effective = parse_config_list(listed.stdout) if listed.returncode == 0 else {}
    with open(argv[0], "w", encoding="utf-8") as handle:
        handle.write(pip_conf_text(build_settings(effective, dict(os.environ))))
    print(ca_bundle(effective, dict(os.environ)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
