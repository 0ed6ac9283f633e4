"""A fake Azure Resource Manager on 127.0.0.1 for the real async Azure SDK clients.

It follows real ARM where speed, cost and correctness depend on it (see shared reference azure.md,
"Where real ARM differs from a naive fake"):
- PUT answers 201 + `Azure-AsyncOperation` + `Retry-After` (10 s, as ARM commonly sends); the
  operation answers `InProgress` (with `Retry-After`) until the per-type latency in `op_seconds` has
  passed, then `Succeeded` — or `Failed` with ARM's error for an injected `LroFailure`.
- While an operation runs the resource shows `provisioningState` `Creating`/`Updating`; a public IP
  has no `ipAddress` until it succeeded. A NIC referencing something not `Succeeded` is refused
  (`ReferencedResourceNotProvisioned`), as is a VM referencing such a NIC.
- A second PUT or a DELETE while a network operation runs: 409 `AnotherOperationInProgress`.
- After a VM create fails, its NIC cannot be deleted for `nic_reserved_seconds` (400
  `NicReservedForAnotherVm`); a public IP still attached to a NIC cannot be deleted (400
  `PublicIPAddressCannotBeDeleted`).
- DELETE answers 202 + `Location` (202 while running, then 200); a missing resource is 404 on GET
  and 204 on DELETE. Deleting a VM removes its NIC, public IP and disk when their deleteOption is
  Delete. OS disks carry no tags (they do not inherit the VM's).
- The instance view has power state and VM agent statuses (`Not Ready` until booted, or until
  `agent_ready_early` seconds before, as cloud-init reports ready before its last steps). Boot
  diagnostics serve a serial log; a VM that boots well writes `vpn-wg-up <name>` there and, with
  `calls_back`, POSTs the callback URL its customData names, as the real boot script does.
Every request is recorded; request faults (status bursts) and per-call latency can be injected.
"""
from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from provisioner.wireguard import Secret
from tests.support.loopback import serve_on_loopback

_RESOURCE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/(?P<ns>Microsoft\.\w+)/(?P<type>\w+)"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<action>\w+))?$",
    re.I,
)
FREE_TYPES = ("virtualnetworks", "networksecuritygroups")


@dataclass
class Fault:
    """The next `times` requests of `method` on `rtype` answer `status` (with ARM error `code`)."""

    method: str
    rtype: str  # e.g. "publicIPAddresses"
    status: int
    code: str = ""
    times: int = 1


@dataclass
class LroFailure:
    """The next `times` operations of `method` on `rtype` are accepted, run, and end `Failed`."""

    method: str
    rtype: str
    code: str
    message: str = "injected failure"
    times: int = 1


@dataclass
class Recorded:
    method: str
    path: str
    query: dict
    body: Any
    status: int = 0  # what the fake answered


class FakeCredential:
    """An async credential that never leaves this process (DefaultAzureCredential would probe IMDS)."""

    async def get_token(self, *scopes, **kwargs):
        import time

        from azure.core.credentials import AccessToken

        return AccessToken("fake-token", int(time.time()) + 3600)

    async def get_token_info(self, *scopes, options=None):
        import time

        from azure.core.credentials import AccessTokenInfo

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
    latency: dict[str, float] = field(default_factory=dict)  # "PUT virtualMachines" -> seconds before answering
    op_seconds: dict[str, float] = field(default_factory=dict)  # "PUT virtualMachines" -> how long the LRO runs
    retry_after: int = 10  # what ARM puts in Retry-After on PUTs and operation polls
    vm_agent_ready: bool = True
    boot_seconds: float = 0.0  # after the VM PUT completes, until its boot script has run
    agent_ready_early: float = 0.0  # the VM agent says Ready this long before the boot script is done (cloud-init reports early)
    boot_ok: bool = True  # False: the WireGuard step fails (the agent still turns Ready, as cloud-init reports early)
    calls_back: bool = True  # a VM that booted well POSTs the callback URL in its customData
    nic_reserved_seconds: float = 180.0
    resources: dict[str, dict] = field(default_factory=dict)  # lower-case id -> resource JSON
    requests: list[Recorded] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    lro_failures: list[LroFailure] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ops: dict[str, dict] = {}
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task] = set()
        self.callbacks: list[tuple[str, int]] = []  # (url path, status) of each VM callback made

    # ----- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> "FakeArm":
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, self.base_url = await serve_on_loopback(app)
        return self

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    # ----- views for tests ------------------------------------------------------------------------
    def of_type(self, rtype: str) -> list[dict]:
        return [r for r in self.resources.values() if r["type"].lower().endswith("/" + rtype.lower())]

    def session_resources(self, session_id: str) -> list[dict]:
        return [r for r in self.resources.values() if (r.get("tags") or {}).get("vpn-session") == session_id]

    def billed(self) -> list[str]:
        """Names of everything that costs money or belongs to one session (all but VNets and NSGs)."""
        return sorted(r["name"] for r in self.resources.values() if r["type"].split("/")[-1].lower() not in FREE_TYPES)

    def puts(self, rtype: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == "PUT" and f"/{rtype.lower()}/" in r.path.lower()]

    def add(self, rtype: str, name: str, *, ns: str = "Microsoft.Network", tags: dict | None = None, rg: str = "vpn-rg",
            sub: str = "00000000-0000-0000-0000-000000000001", properties: dict | None = None) -> dict:
        """Put a resource straight into the fake, as if something else (or an earlier run) made it."""
        rid = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{ns}/{rtype}/{name}"
        res = {"id": rid, "name": name, "type": f"{ns}/{rtype}", "location": "eastus", "tags": tags or {},
               "properties": dict(properties or {}), "_final": "Succeeded", "_until": 0.0}
        self.resources[rid.lower()] = res
        return res

    # ----- the wire ---------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = None
        if request.can_read_body:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        record = Recorded(request.method, request.path, dict(request.query), body)
        self.requests.append(record)
        response = await self._answer(request, body)
        record.status = response.status
        return response

    async def _answer(self, request: web.Request, body: Any) -> web.StreamResponse:
        path = request.path
        if path.startswith("/fakearm/operations/"):
            return self._operation(path.rsplit("/", 1)[1])
        if path.startswith("/fakeblob/serial/"):
            return self._serial_log(path.rsplit("/", 1)[1])
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
        rid = path if not m["action"] else path.rsplit("/", 1)[0]
        key = rid.lower()
        if m["action"]:
            return self._action(key, m)
        if m["name"] is None:
            if request.method != "GET":
                return _error(405, "MethodNotAllowed", "collection")
            prefix = key + "/"
            listed = [r for k, r in self.resources.items() if k.startswith(prefix) and k.count("/") == prefix.count("/")]
            return web.json_response({"value": [self._shown(r) for r in listed]})
        if request.method == "GET":
            res = self.resources.get(key)
            if res is None:
                return _error(404, "ResourceNotFound", f"{m['name']} not found")
            out = self._shown(res)
            if rtype.lower() == "virtualmachines" and request.query.get("$expand") == "instanceView":
                out["properties"]["instanceView"] = self._instance_view(res)
            return web.json_response(out)
        if request.method == "PUT":
            return self._put(rid, key, m, body or {})
        if request.method == "DELETE":
            return self._delete_request(key, rtype)
        return _error(405, "MethodNotAllowed", request.method)

    def _put(self, rid: str, key: str, m: re.Match, body: dict) -> web.Response:
        rtype = m["type"]
        existing = self.resources.get(key)
        if existing is not None and self._running(existing):
            return _error(409, "AnotherOperationInProgress", f"Another operation on {m['name']} is in progress")
        refused = self._check_references(rtype.lower(), body)
        if refused is not None:
            return refused
        res = self._materialise(rid, m, body, existing)
        now = self._now()
        failure = self._take(self.lro_failures, "PUT", rtype)
        res["_until"] = now + self.op_seconds.get(f"PUT {rtype}", 0.0)
        res["_final"] = "Failed" if failure else "Succeeded"
        res["_new"] = existing is None
        self.resources[key] = res
        op = uuid.uuid4().hex
        error = {"code": failure.code, "message": failure.message} if failure else None
        self._ops[op] = {"left": self.polls_before_done, "until": res["_until"], "error": error}
        if rtype.lower() == "virtualmachines":
            res["_booted_at"] = res["_until"] + self.boot_seconds
            if failure:
                for nic in self._vm_nics(res):
                    nic["_reserved_until"] = res["_until"] + self.nic_reserved_seconds
            else:
                self._track(self._boot(key))
        shown = self._shown(res)
        return web.json_response(
            shown, status=201 if existing is None else 200,
            headers={"Azure-AsyncOperation": f"{self.base_url}/fakearm/operations/{op}", "Retry-After": str(self.retry_after)},
        )

    def _delete_request(self, key: str, rtype: str) -> web.Response:
        res = self.resources.get(key)
        if res is None:
            return web.Response(status=204)
        kind = rtype.lower()
        if kind != "virtualmachines" and self._running(res):
            return _error(409, "AnotherOperationInProgress", f"Another operation on {res['name']} is in progress")
        if kind == "networkinterfaces":
            if self._now() < res.get("_reserved_until", 0.0):
                return _error(400, "NicReservedForAnotherVm", f"Nic {res['name']} is reserved for another VM; try again in 180 seconds")
            if any(key in {n["id"].lower() for n in self._vm_nic_refs(vm)} for vm in self.of_type("virtualMachines")):
                return _error(400, "NicInUse", f"Network interface {res['name']} is in use by a virtual machine")
        if kind == "publicipaddresses":
            for nic in self.of_type("networkInterfaces"):
                if key in self._nic_ip_ids(nic):
                    return _error(400, "PublicIPAddressCannotBeDeleted", f"Public IP address {res['name']} is in use by {nic['name']}")
        if kind == "disks":
            for vm in self.of_type("virtualMachines"):
                if (self._os_disk(vm).get("managedDisk") or {}).get("id", "").lower() == key:
                    return _error(409, "OperationNotAllowed", f"Disk {res['name']} is attached to VM {vm['name']}")
        self._delete(key)
        op = uuid.uuid4().hex
        self._ops[op] = {"left": self.polls_before_done, "until": self._now() + self.op_seconds.get(f"DELETE {rtype}", 0.0), "location": True}
        return web.Response(status=202, headers={"Location": f"{self.base_url}/fakearm/operations/{op}", "Retry-After": str(self.retry_after)})

    def _action(self, key: str, m: re.Match) -> web.Response:
        res = self.resources.get(key)
        if res is None:
            return _error(404, "ResourceNotFound", f"{m['name']} not found")
        if m["action"].lower() == "retrievebootdiagnosticsdata" and m["type"].lower() == "virtualmachines":
            token = uuid.uuid4().hex
            res["_blob"] = token
            return web.json_response({
                "consoleScreenshotBlobUri": f"{self.base_url}/fakeblob/screenshot/{token}?sig=x",
                "serialConsoleLogBlobUri": f"{self.base_url}/fakeblob/serial/{token}?sig=x",
            })
        return _error(400, "InvalidAction", m["action"])

    def _serial_log(self, token: str) -> web.Response:
        vm = next((r for r in self.of_type("virtualMachines") if r.get("_blob") == token), None)
        if vm is None:
            return web.Response(status=404)
        lines = ["[    0.000000] Linux version 6.8.0-azure", "cloud-init: modules:config"]
        if self._booted(vm):
            lines.append(f"vpn-wg-up {vm['name']}" if self.boot_ok else "vpn-boot: wg0 did not come up")
        return web.Response(text="\n".join(lines) + "\n")

    def _operation(self, op_id: str) -> web.Response:
        op = self._ops.get(op_id)
        if op is None:
            return _error(404, "NotFound", "operation")
        if op["left"] > 0 or self._now() < op.get("until", 0.0):
            op["left"] = max(0, op["left"] - 1)
            headers = {"Retry-After": str(self.retry_after)}
            if op.get("location"):
                return web.Response(status=202, headers={"Location": f"{self.base_url}/fakearm/operations/{op_id}", **headers})
            return web.json_response({"status": "InProgress"}, headers=headers)
        if op.get("location"):
            return web.Response(status=200)
        if op.get("error"):
            return web.json_response({"status": "Failed", "error": op["error"]})
        return web.json_response({"status": "Succeeded"})

    # ----- the model ------------------------------------------------------------------------------
    def _check_references(self, rtype: str, body: dict) -> web.Response | None:
        props = body.get("properties") or {}
        refs: list[str] = []
        if rtype == "networkinterfaces":
            nsg = (props.get("networkSecurityGroup") or {}).get("id")
            refs += [nsg] if nsg else []
            for cfg in props.get("ipConfigurations", []):
                cp = cfg.get("properties") or {}
                if (cp.get("subnet") or {}).get("id"):
                    refs.append(cp["subnet"]["id"].split("/subnets/")[0])
                if (cp.get("publicIPAddress") or {}).get("id"):
                    refs.append(cp["publicIPAddress"]["id"])
        if rtype == "virtualmachines":
            refs += [n["id"] for n in (props.get("networkProfile") or {}).get("networkInterfaces", [])]
        for ref in refs:
            target = self.resources.get(ref.lower())
            if target is None:
                return _error(400, "InvalidResourceReference", f"Resource {ref} referenced by the request was not found")
            if self._state(target) != "Succeeded":
                return _error(400, "ReferencedResourceNotProvisioned",
                              f"Cannot proceed with operation because resource {ref} is in {self._state(target)} state")
        return None

    def _materialise(self, rid: str, m: re.Match, body: dict, existing: dict | None) -> dict:
        props = json.loads(json.dumps(body.get("properties") or {}))
        rtype = m["type"].lower()
        if rtype == "publicipaddresses":
            props["ipAddress"] = existing["properties"].get("ipAddress") if existing else self.public_ip
        if rtype == "virtualnetworks":
            for sn in props.get("subnets", []):
                sn["id"] = f"{rid}/subnets/{sn['name']}"
        if rtype == "virtualmachines":
            disk = props.get("storageProfile", {}).get("osDisk", {})
            disk_id = f"/subscriptions/{m['sub']}/resourceGroups/{m['rg']}/providers/Microsoft.Compute/disks/{disk.get('name', 'osdisk')}"
            # OS disks do not inherit the VM's tags.
            self.resources[disk_id.lower()] = {"id": disk_id, "name": disk.get("name"), "type": "Microsoft.Compute/disks",
                                               "location": body.get("location"), "tags": {}, "properties": {}, "_final": "Succeeded", "_until": 0.0}
            disk.setdefault("managedDisk", {})["id"] = disk_id
        custom = (props.get("osProfile") or {}).pop("customData", None)
        return {
            "_custom_data": custom,
            "id": rid,
            "name": m["name"],
            "type": f"{m['ns']}/{m['type']}",
            "location": body.get("location"),
            "tags": body.get("tags") or {},
            "sku": body.get("sku"),
            "properties": props,
        }

    def _shown(self, res: dict) -> dict:
        out = json.loads(json.dumps({k: v for k, v in res.items() if not k.startswith("_")}))
        state = self._state(res)
        out["properties"]["provisioningState"] = state
        if res["type"].lower().endswith("/publicipaddresses") and state != "Succeeded":
            out["properties"].pop("ipAddress", None)  # a static IP has no address until it succeeded
        return out

    def _state(self, res: dict) -> str:
        if self._running(res):
            return "Creating" if res.get("_new") else "Updating"
        return res.get("_final", "Succeeded")

    def _running(self, res: dict) -> bool:
        return self._now() < res.get("_until", 0.0)

    def _booted(self, vm: dict) -> bool:
        return self._state(vm) == "Succeeded" and self._now() >= vm.get("_booted_at", 0.0)

    @staticmethod
    def _take(items: list, method: str, rtype: str):
        for item in items:
            if item.times > 0 and item.method == method and item.rtype.lower() == rtype.lower():
                item.times -= 1
                return item
        return None

    @staticmethod
    def _vm_nic_refs(vm: dict) -> list[dict]:
        return vm["properties"].get("networkProfile", {}).get("networkInterfaces", [])

    def _vm_nics(self, vm: dict) -> list[dict]:
        return [self.resources[n["id"].lower()] for n in self._vm_nic_refs(vm) if n["id"].lower() in self.resources]

    @staticmethod
    def _nic_ip_ids(nic: dict) -> set[str]:
        ids = set()
        for cfg in nic["properties"].get("ipConfigurations", []):
            pip = (cfg.get("properties") or {}).get("publicIPAddress") or {}
            if pip.get("id"):
                ids.add(pip["id"].lower())
        return ids

    @staticmethod
    def _os_disk(vm: dict) -> dict:
        return vm["properties"].get("storageProfile", {}).get("osDisk", {})

    def _delete(self, key: str) -> None:
        res = self.resources.pop(key, None)
        if res is None:
            return
        props = res["properties"]
        if res["type"].lower().endswith("/virtualmachines"):
            for nic in self._vm_nic_refs(res):
                target = self.resources.get(nic["id"].lower())
                reserved = target is not None and self._now() < target.get("_reserved_until", 0.0)
                if (nic.get("properties") or {}).get("deleteOption") == "Delete" and not reserved:
                    self._delete(nic["id"].lower())
            disk = self._os_disk(res)
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

    def _instance_view(self, vm: dict) -> dict:
        state = self._state(vm)
        ready = self.vm_agent_ready and state == "Succeeded" and self._now() >= vm.get("_booted_at", 0.0) - self.agent_ready_early
        if ready:
            agent = {"vmAgentVersion": "2.12.0.2", "statuses": [
                {"code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": "Ready", "message": "Guest Agent is running"}]}
        else:
            agent = {"vmAgentVersion": "Unknown", "statuses": [
                {"code": "ProvisioningState/Unavailable", "level": "Warning", "displayStatus": "Not Ready",
                 "message": "VM status blob is found but not yet populated."}]}
        power = "PowerState/running" if state == "Succeeded" else "PowerState/starting"
        return {"statuses": [{"code": f"ProvisioningState/{state.lower()}"}, {"code": power}], "vmAgent": agent}

    # ----- the "VM" -------------------------------------------------------------------------------
    def _track(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _boot(self, key: str) -> None:
        """What the VM's boot script does once WireGuard is up: POST the callback URL its customData names."""
        vm = self.resources.get(key)
        if vm is None:
            return
        await asyncio.sleep(max(0.0, vm["_booted_at"] - self._now()))
        if not (self.calls_back and self.boot_ok) or self.resources.get(key) is not vm:
            return
        url = _callback_url(vm)
        if not url:
            return
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(url) as resp:
                    self.callbacks.append((str(resp.url.path), resp.status))
        except aiohttp.ClientError:
            self.callbacks.append((url.split("://", 1)[-1], 0))  # the bot was unreachable: the console is the fallback


def _callback_url(vm: dict) -> str | None:
    """The URL in the boot config's callback file (cloud-init write_files), as the VM would read it."""
    from provisioner import bootconfig

    custom = vm.get("_custom_data")
    if custom is None:
        return None
    try:
        doc = yaml.safe_load(base64.b64decode(custom).decode())
    except Exception:
        return None
    for f in (doc or {}).get("write_files", []):
        if f.get("path") == bootconfig.CALLBACK_FILE:
            return f["content"].strip()
    return None


def _error(status: int, code: str, message: str) -> web.Response:
    headers = {"Retry-After": "0"} if status == 429 else {}
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


__all__ = ["FakeArm", "FakeCredential", "Fault", "LroFailure", "Secret"]


if __name__ == "__main__":  # for bench/: the fake as its own process, reached over HTTP only
    import argparse

    from tests.support.loopback import serve_until_stopped

    parser = argparse.ArgumentParser(prog="python -m tests.fakes.arm", description="Serve a fake ARM on 127.0.0.1 until SIGTERM; prints its base URL.")
    parser.add_argument("--fields", type=json.loads, default={}, metavar="JSON",
                        help='FakeArm fields, e.g. {"op_seconds": {"PUT virtualMachines": 3.5}, "boot_seconds": 0.8, "retry_after": 1}')
    parser.add_argument("--add", type=json.loads, action="append", default=[], metavar="JSON",
                        help="a resource that exists from the start: the keyword arguments of FakeArm.add (repeatable)")
    cli = parser.parse_args()
    arm = FakeArm(**cli.fields)
    for resource in cli.add:
        arm.add(**resource)
    serve_until_stopped(arm.start)
