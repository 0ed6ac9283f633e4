"""The VM's boot config works: what the fake ARM received as customData, applied with wireguard-go in a
network namespace the way systemd-networkd would apply it, carries the delivered client config's traffic."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml

from bot.sessions.model import SessionState
from provisioner import bootconfig
from provisioner.wireguard import Secret, ServerConfig, ServerPeer
from tests.conftest import incoming
from tests.fake_arm import FakeArm
from tests.netns import SERVER_LAN, run
from tests.test_azure import azure, customdata_of, settle


def networkd_sections(text: str) -> list[tuple[str, dict[str, str]]]:
    """systemd unit syntax: repeated [Section]s of Key=Value lines."""
    sections: list[tuple[str, dict[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            sections.append((line[1:-1], {}))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1][1][key.strip()] = value.strip()
    return sections


def apply_like_networkd(lab, files: dict[str, str], tmp_path: Path) -> None:
    """What systemd-networkd does with the .netdev/.network and sysctl files, done with wg and ip."""
    netdev = networkd_sections(files[bootconfig.NETDEV])
    wireguard = next(values for name, values in netdev if name == "WireGuard")
    args = ["wg", "set", lab.server_if, "listen-port", wireguard["ListenPort"]]
    key_file = tmp_path / "server.key"
    key_file.write_text(files[wireguard["PrivateKeyFile"]])
    args += ["private-key", str(key_file)]
    for i, (name, peer) in enumerate(netdev):
        if name != "WireGuardPeer":
            continue
        args += ["peer", peer["PublicKey"], "allowed-ips", peer["AllowedIPs"].replace(" ", "")]
        if "PresharedKeyFile" in peer:
            psk = tmp_path / f"peer{i}.psk"
            psk.write_text(files[peer["PresharedKeyFile"]])
            args += ["preshared-key", str(psk)]
    run(*lab.in_server(*args))
    network = dict(networkd_sections(files[bootconfig.NETWORK]))["Network"]
    run("ip", "-n", lab.server_ns, "addr", "flush", "dev", lab.server_if)
    run("ip", "-n", lab.server_ns, "addr", "add", network["Address"], "dev", lab.server_if)
    key, value = files[bootconfig.SYSCTL].split("=")
    run(*lab.in_server("sysctl", "-w", f"{key.strip()}={value.strip()}"))


@pytest.mark.netns
async def test_boot_config_carries_the_delivered_clients_traffic(lab, make_runtime, channel, tmp_path):
    arm = await FakeArm(public_ip=SERVER_LAN).start()  # the "VM" is the server namespace
    try:
        async with make_runtime(provider=azure(arm)) as rt:
            await rt.dispatcher.handle(incoming("/vpn start"))
            await settle(rt)
            assert [s.state for s in await rt.store.sessions(list(SessionState))] == [SessionState.READY]
        cloud = yaml.safe_load(customdata_of(arm))
        files = {f["path"]: f["content"] for f in cloud["write_files"]}
        assert ["networkctl", "reload"] in cloud["runcmd"]
        apply_like_networkd(lab, files, tmp_path)
        conf = tmp_path / "vpn-azure.conf"
        conf.write_text(next(s for s in channel.sent if s.kind == "config").text)
        assert f"Endpoint = {SERVER_LAN}:51820" in conf.read_text()
        lab.apply_client_config(conf)
        assert lab.tcp_through_tunnel() == "echo:through the tunnel"
    finally:
        await arm.stop()


def _server() -> ServerConfig:
    return ServerConfig(Secret("S" * 43 + "="), "10.77.0.1/24", 51820, (ServerPeer("P" * 43 + "=", Secret("K" * 43 + "="), ("10.77.0.2/32",)),))


def test_cloud_config_is_yaml_cloud_init_reads():
    text = bootconfig.cloud_config(_server(), ready_url="https://bot.example.org/api/azure/ready/ab/cd")
    doc = yaml.safe_load(text)
    files = {f["path"]: f for f in doc["write_files"]}
    assert files[bootconfig.KEY]["content"] == "S" * 43 + "=\n"
    assert files[bootconfig.KEY]["permissions"] == "0640" and files[bootconfig.KEY]["owner"] == "root:systemd-network"
    assert "wireguard" not in doc  # cloud-init's own module may apt-install: not used
    assert doc["runcmd"][:2] == [["sysctl", "--system"], ["networkctl", "reload"]]
    assert "https://bot.example.org/api/azure/ready/ab/cd" in doc["runcmd"][-1][2]
    compile(doc["runcmd"][-1][2], "ready", "exec")  # the callback is valid Python


def test_ignition_for_flatcar():
    doc = json.loads(bootconfig.ignition(_server(), ready_url="https://bot.example.org/r"))
    assert doc["ignition"]["version"] == "3.3.0"
    files = {f["path"]: f for f in doc["storage"]["files"]}
    key = files[bootconfig.KEY]
    assert key["mode"] == 0o640 and key["group"] == {"name": "systemd-network"}
    assert base64.b64decode(key["contents"]["source"].split(",", 1)[1]).decode() == "S" * 43 + "=\n"
    assert "https://bot.example.org/r" in doc["systemd"]["units"][0]["contents"]


def test_custom_data_limit():
    assert base64.b64decode(bootconfig.custom_data("#cloud-config\n")) == b"#cloud-config\n"
    with pytest.raises(ValueError):
        bootconfig.custom_data("x" * 60_000)
