"""A fake Azure Resource Manager on 127.0.0.1 for the real async Azure SDK clients.

Implements exactly what provisioner/azure.py calls, with ARM's long-running-operation behaviour:
PUT answers 201 + Azure-AsyncOperation (polled InProgress, then Succeeded); DELETE answers 202 +
Location (202 while running, then 200); a missing resource is 404 on GET and 204 on DELETE.
Deleting a VM removes its NIC, public IP and disk when their deleteOption is Delete. Every request
is recorded; faults (status bursts, ARM error codes) and per-call latency can be injected.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.loopback import serve_on_loopback

from provisioner.wireguard import Secret

_RESOURCE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/(?P<ns>Microsoft\.\w+)/(?P<type>\w+)(?:/(?P<name>[^/]+))?$",
    re.I,
)


@dataclass
class Fault:
    method: str
    rtype: str  # e.g. "publicIPAddresses"
    status: int
    code: str = ""
    times: int = 1


@dataclass
class Recorded:
    method: str
    path: str
    query: dict
    body: Any


class FakeCredential:
    """An async credential that never leaves this process (DefaultAzureCredential would probe IMDS)."""

    async def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken
        import time

        return AccessToken("fake-token", int(time.time()) + 3600)

    async def get_token_info(self, *scopes, options=None):
        from azure.core.credentials import AccessTokenInfo
        import time

        return AccessTokenInfo("fake-token", int(time.time()) + 3600)

    async def close(self):
        return None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return None


@dataclass
class FakeArm:
    public_ip: str = "203.0.113.10"  # TEST-NET-3; tests that need traffic set a namespace address
    polls_before_done: int = 1
    latency: dict[str, float] = field(default_factory=dict)  # "PUT virtualMachines" -> seconds
    vm_agent_ready: bool = True
    op_seconds: dict[str, float] = field(default_factory=dict)  # "PUT virtualMachines" -> how long the LRO runs
    boot_seconds: float = 0.0  # after the VM PUT completes, until its agent reports Ready
    resources: dict[str, dict] = field(default_factory=dict)  # lower-case id -> resource JSON
    requests: list[Recorded] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ops: dict[str, dict] = {}
        self._ip_counter = itertools.count(10)
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    # ----- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> "FakeArm":
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, self.base_url = await serve_on_loopback(app)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # ----- views for tests ------------------------------------------------------------------------
    def of_type(self, rtype: str) -> list[dict]:
        return [r for r in self.resources.values() if r["type"].lower().endswith("/" + rtype.lower())]

    def session_resources(self, session_id: str) -> list[dict]:
        return [r for r in self.resources.values() if (r.get("tags") or {}).get("vpn-session") == session_id]

    def puts(self, rtype: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == "PUT" and f"/{rtype.lower()}/" in r.path.lower()]

    # ----- the wire ---------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = None
        if request.can_read_body:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        path = request.path
        self.requests.append(Recorded(request.method, path, dict(request.query), body))
        if path.startswith("/fakearm/operations/"):
            return self._operation(path.rsplit("/", 1)[1])
        m = _RESOURCE.match(path)
        if not m:
            return _error(404, "InvalidResourceType", f"fake ARM does not serve {path}")
        rtype = m["type"]
        delay = self.latency.get(f"{request.method} {rtype}", 0.0)
        if delay:
            await asyncio.sleep(delay)
        for fault in self.faults:
            if fault.times > 0 and fault.method == request.method and fault.rtype.lower() == rtype.lower():
                fault.times -= 1
                return _error(fault.status, fault.code or "Fault", f"injected {fault.status}")
        rid = path
        key = rid.lower()
        if m["name"] is None:
            if request.method != "GET":
                return _error(405, "MethodNotAllowed", "collection")
            prefix = key + "/"
            listed = [r for k, r in self.resources.items() if k.startswith(prefix) and k.count("/") == prefix.count("/")]
            return web.json_response({"value": [{k: v for k, v in r.items() if not k.startswith("_")} for r in listed]})
        if request.method == "GET":
            res = self.resources.get(key)
            if res is None:
                return _error(404, "ResourceNotFound", f"{m['name']} not found")
            out = json.loads(json.dumps({k: v for k, v in res.items() if not k.startswith("_")}))
            if rtype.lower() == "virtualmachines" and request.query.get("$expand") == "instanceView":
                out["properties"]["instanceView"] = self._instance_view(self._now() >= res.get("_booted_at", 0.0))
            return web.json_response(out)
        if request.method == "PUT":
            res = self._materialise(rid, m, body or {})
            self.resources[key] = res
            op = uuid.uuid4().hex
            self._ops[op] = {"left": self.polls_before_done, "final": "Succeeded", "until": self._now() + self.op_seconds.get(f"PUT {rtype}", 0.0)}
            if rtype.lower() == "virtualmachines":
                res["_booted_at"] = self._ops[op]["until"] + self.boot_seconds
            shown = json.loads(json.dumps({k: v for k, v in res.items() if not k.startswith("_")}))
            shown["properties"]["provisioningState"] = "Creating"
            return web.json_response(shown, status=201, headers={"Azure-AsyncOperation": f"{self.base_url}/fakearm/operations/{op}"})
        if request.method == "DELETE":
            if key not in self.resources:
                return web.Response(status=204)
            self._delete(key)
            op = uuid.uuid4().hex
            self._ops[op] = {"left": self.polls_before_done, "final": "Succeeded", "location": True}
            return web.Response(status=202, headers={"Location": f"{self.base_url}/fakearm/operations/{op}", "Retry-After": "0"})
        return _error(405, "MethodNotAllowed", request.method)

    def _operation(self, op_id: str) -> web.Response:
        op = self._ops.get(op_id)
        if op is None:
            return _error(404, "NotFound", "operation")
        if op["left"] > 0 or self._now() < op.get("until", 0.0):
            op["left"] = max(0, op["left"] - 1)
            if op.get("location"):
                return web.Response(status=202, headers={"Location": f"{self.base_url}/fakearm/operations/{op_id}", "Retry-After": "0"})
            return web.json_response({"status": "InProgress"})
        if op.get("location"):
            return web.Response(status=200)
        return web.json_response({"status": op["final"]})

    def _materialise(self, rid: str, m: re.Match, body: dict) -> dict:
        props = dict(body.get("properties") or {})
        rtype = m["type"].lower()
        if rtype == "publicipaddresses":
            existing = self.resources.get(rid.lower())
            props["ipAddress"] = existing["properties"]["ipAddress"] if existing else self.public_ip
        if rtype == "virtualnetworks":
            for sn in props.get("subnets", []):
                sn["id"] = f"{rid}/subnets/{sn['name']}"
        if rtype == "virtualmachines":
            disk = props.get("storageProfile", {}).get("osDisk", {})
            disk_id = f"/subscriptions/{m['sub']}/resourceGroups/{m['rg']}/providers/Microsoft.Compute/disks/{disk.get('name', 'osdisk')}"
            self.resources[disk_id.lower()] = {"id": disk_id, "name": disk.get("name"), "type": "Microsoft.Compute/disks", "location": body.get("location"), "properties": {}}
            disk.setdefault("managedDisk", {})["id"] = disk_id
        props["provisioningState"] = "Succeeded"
        return {
            "id": rid,
            "name": m["name"],
            "type": f"{m['ns']}/{m['type']}",
            "location": body.get("location"),
            "tags": body.get("tags") or {},
            "sku": body.get("sku"),
            "properties": props,
        }

    def _delete(self, key: str) -> None:
        res = self.resources.pop(key, None)
        if res is None:
            return
        props = res["properties"]
        if res["type"].lower().endswith("/virtualmachines"):
            for nic in props.get("networkProfile", {}).get("networkInterfaces", []):
                if (nic.get("properties") or {}).get("deleteOption") == "Delete":
                    self._delete(nic["id"].lower())
            disk = props.get("storageProfile", {}).get("osDisk", {})
            if disk.get("deleteOption") == "Delete":
                self._delete(disk["managedDisk"]["id"].lower())
        if res["type"].lower().endswith("/networkinterfaces"):
            for cfg in props.get("ipConfigurations", []):
                pip = (cfg.get("properties") or {}).get("publicIPAddress") or {}
                if (pip.get("properties") or {}).get("deleteOption") == "Delete":
                    self._delete(pip["id"].lower())

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _instance_view(self, booted: bool) -> dict:
        ready = self.vm_agent_ready and booted
        agent = [{"code": "ProvisioningState/succeeded", "displayStatus": "Ready" if ready else "Not Ready"}]
        return {
            "statuses": [{"code": "ProvisioningState/succeeded"}, {"code": "PowerState/running"}],
            "vmAgent": {"statuses": agent},
        }


def _error(status: int, code: str, message: str) -> web.Response:
    headers = {"Retry-After": "0"} if status == 429 else {}
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


__all__ = ["FakeArm", "FakeCredential", "Fault", "Secret"]
