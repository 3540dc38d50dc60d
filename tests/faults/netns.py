"""A network of the test's own for an agent: a network namespace joined to this machine by a veth pair, with
relays (socat) on this machine's end of the pair to the suite's PostgreSQL and Redis, which listen on loopback
only. Cutting the link (`ip link set ... down`) is what a host that loses the network sees: packets stop, open
connections hang until their own timeouts, nothing answers "refused".

The approach of tests/workers/test_dataset_fetch_netns.py; needs root (ip netns, veth). A machine that cannot do
this fails the test loudly, it does not skip it."""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode:
        raise RuntimeError(f"`ip {' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _free_subnet() -> int:
    """The third octet of a 10.214.x.0/30 no interface on this machine uses (parallel runs pick their own)."""
    taken = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for _ in range(100):
        octet = random.randrange(256)
        if f"10.214.{octet}." not in taken:
            return octet
    raise RuntimeError("no free 10.214.x.0/30 subnet for the agent's veth pair")


@dataclass
class AgentNetwork:
    namespace: str
    console_if: str
    console_ip: str
    agent_ip: str
    relays: list[subprocess.Popen] = field(default_factory=list)

    def command(self, *args: str) -> list[str]:
        """`args` run inside the agent's namespace."""
        return ["ip", "netns", "exec", self.namespace, *args]

    def relay(self, target_port: int) -> int:
        """A port on this machine's end of the link that forwards to 127.0.0.1:`target_port`."""
        with socket.socket() as probe:
            probe.bind((self.console_ip, 0))
            port = probe.getsockname()[1]
        socat = shutil.which("socat")
        assert socat, "socat relays the agent's connections (apt-get install socat)"
        listen = f"TCP-LISTEN:{port},bind={self.console_ip},fork,reuseaddr"
        process = subprocess.Popen(
            [socat, listen, f"TCP:127.0.0.1:{target_port}"], stdin=subprocess.DEVNULL, start_new_session=True
        )
        self.relays.append(process)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex((self.console_ip, port)) == 0:
                    return port
            time.sleep(0.05)
        raise RuntimeError(f"socat did not listen on {self.console_ip}:{port}")

    def cut(self) -> None:
        ip("link", "set", self.console_if, "down")  # the peer loses its carrier too

    def restore(self) -> None:
        ip("link", "set", self.console_if, "up")


@contextlib.contextmanager
def agent_network() -> Iterator[AgentNetwork]:
    """The namespace, the veth pair and the relays; all gone afterwards whatever happens."""
    tag = f"{os.getpid() % 10_000:04d}{secrets.token_hex(2)}"  # interface names are at most 15 characters
    namespace, console_if, agent_if = f"lld-agent-{tag}", f"lnc{tag}", f"lna{tag}"
    octet = _free_subnet()
    network = AgentNetwork(namespace, console_if, f"10.214.{octet}.1", f"10.214.{octet}.2")
    try:
        ip("netns", "add", namespace)
        ip("link", "add", console_if, "type", "veth", "peer", "name", agent_if, "netns", namespace)
        ip("addr", "add", f"{network.console_ip}/30", "dev", console_if)
        ip("link", "set", console_if, "up")
        ip("-n", namespace, "addr", "add", f"{network.agent_ip}/30", "dev", agent_if)
        ip("-n", namespace, "link", "set", agent_if, "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        yield network
    finally:
        for relay in network.relays:  # socat forks a child per connection, in the relay's own session
            with contextlib.suppress(ProcessLookupError):
                os.killpg(relay.pid, signal.SIGKILL)
            relay.wait()
        ip("link", "del", console_if, check=False)  # takes its peer with it
        ip("netns", "del", namespace, check=False)
