"""A local MQTT broker for the fleet runner: Debian's mosquitto when it is installed (`make` installs it)."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


def mosquitto_binary() -> str | None:
    """The mosquitto executable (Debian keeps it in /usr/sbin, often off PATH), or None."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


@dataclass(frozen=True)
class BrokerTls:
    """A TLS listener: the broker's certificate, the CA of its clients, and the ACL by certificate CN."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    acl_file: Path


def mosquitto_config(port: int, data_dir: Path, log_path: Path, tls: BrokerTls | None = None) -> str:
    """A loopback listener with persistence, runnable as the current user.

    With `tls`, the listener is the K3s broker's: TLS 1.2+, a client certificate required, its CN the
    user name the ACL names (%u), no anonymous client.
    """
    if tls is None:
        listener = [f"listener {port} {HOST}", "allow_anonymous true"]
    else:
        listener = [
            "per_listener_settings true",
            f"listener {port} {HOST}",
            f"cafile {tls.ca_file}",
            f"certfile {tls.cert_file}",
            f"keyfile {tls.key_file}",
            "tls_version tlsv1.2",
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
            f"acl_file {tls.acl_file}",
        ]
    return "\n".join(
        [
            *listener,
            # Started as root, mosquitto would switch to user mosquitto and lose access to these folders.
            f"user {getpass.getuser()}",
            "persistence true",
            f"persistence_location {data_dir}/",
            "autosave_interval 1",
            # An offline session's queue; the default of 1000 would drop messages for a slow edge.
            "max_queued_messages 100000",
            # A client sending a larger packet is disconnected: the cloud's 8 MiB sample limit, plus headers.
            "max_packet_size 8389632",
            f"log_dest file {log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "",
        ]
    )


def start_mosquitto(folder: Path, port: int, timeout_s: float = 10.0) -> subprocess.Popen[bytes]:
    """mosquitto on loopback with persistence in `folder`; waits until it accepts connections."""
    binary = mosquitto_binary()
    if binary is None:
        raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
    (folder / "data").mkdir(parents=True, exist_ok=True)
    config = folder / "mosquitto.conf"
    config.write_text(mosquitto_config(port, folder / "data", folder / "mosquitto.log"))
    process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {process.returncode}; see {folder / 'mosquitto.log'}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise TimeoutError(f"mosquitto did not accept connections on {HOST}:{port} within {timeout_s} s")
