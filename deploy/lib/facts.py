"""Reads the Dockerfile, the Kubernetes manifests and the compose files, and checks that they
agree with each other (ports, probe commands, drain budget, hardening). Used by deploy/check.

  python facts.py REPO image-env     -> shell assignments describing the runtime image
  python facts.py REPO consistency   -> one line per check, exit 1 if any failed
  python facts.py REPO uds-probe     -> the Unix-socket manifest's exec probe, NUL-separated

Runs in deploy/check's venv (PyYAML and dockerfile-parse come with checkov).
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import yaml
from dockerfile_parse import DockerfileParser

SIDECAR = "endcall-sidecar"
IMAGE_BIN = "/usr/local/bin/endcall-sidecar"
DEFAULT_DRAIN_S = 10.0  # the binary's --drain-timeout default


def duration_s(text: str) -> float:
    """'200ms', '10s', '2m', '1h' (the binary's and compose's duration forms) -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*", str(text))
    if not m:
        raise ValueError(f"unparsable duration {text!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


# ---------------------------------------------------------------------------- Dockerfile


def runtime_image(repo: Path) -> dict:
    """Facts about the Dockerfile's final stage, read the way a builder would read them."""
    parser = DockerfileParser(path=str(repo / "Dockerfile"))
    stages: list[list[dict]] = []
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    final = stages[-1]
    facts: dict = {"stages": len(stages), "from": final[0]["value"], "env": {}, "expose": []}
    for ins in final:
        kind, value = ins["instruction"], ins["value"]
        if kind == "ENV":
            for word in shlex.split(value):
                key, _, val = word.partition("=")
                facts["env"][key] = val
        elif kind == "USER":
            facts["user"] = value.strip()
        elif kind == "EXPOSE":
            facts["expose"] += [int(p.split("/")[0]) for p in value.split()]
        elif kind == "HEALTHCHECK":
            opts, _, cmd = value.partition("CMD ")
            facts["healthcheck"] = json.loads(cmd)
            facts["healthcheck_opts"] = dict(
                o.lstrip("-").split("=", 1) for o in opts.split() if "=" in o
            )
        elif kind == "ENTRYPOINT":
            facts["entrypoint"] = json.loads(value)
        elif kind == "CMD":
            facts["cmd"] = json.loads(value)
        elif kind == "COPY":
            facts.setdefault("copies", []).append(value)
        elif kind == "STOPSIGNAL":
            facts["stopsignal"] = value.strip()
    return facts


# ---------------------------------------------------------------------------- manifests


def load_docs(path: Path) -> list[dict]:
    with path.open() as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def secret_ref(container: dict, name: str) -> dict | None:
    """The secretKeyRef the variable `name` is read through, if it is."""
    for e in container.get("env", []):
        if e["name"] == name:
            return e.get("valueFrom", {}).get("secretKeyRef")
    return None


class Checker:
    def __init__(self) -> None:
        self.failed = 0
        self.passed = 0

    def check(self, what: str, ok: bool, detail: str = "") -> None:
        if ok:
            self.passed += 1
            print(f"  ok    {what}")
        else:
            self.failed += 1
            print(f"  FAIL  {what}{': ' + detail if detail else ''}")


def consistency(repo: Path) -> int:
    c = Checker()
    img = runtime_image(repo)
    env = img["env"]
    listen_host, grpc_port = host_port(env["ENDCALL_LISTEN"])
    metrics_host, metrics_port = host_port(env["ENDCALL_METRICS_LISTEN"])
    uid = int(img["user"].split(":")[0])

    print("Dockerfile")
    c.check("multi-stage build", img["stages"] >= 3, f"{img['stages']} stages")
    c.check("runtime is distroless cc, nonroot tag", bool(
        re.match(r"gcr\.io/distroless/cc-\S+:nonroot\b", img["from"])), img["from"])
    c.check("USER is a numeric non-root uid:gid", re.fullmatch(r"[1-9]\d*:[1-9]\d*", img["user"])
            is not None, img["user"])
    c.check("binary copied to the ENTRYPOINT path",
            any(cp.split()[-1] == IMAGE_BIN for cp in img.get("copies", [])) and
            img.get("entrypoint") == [IMAGE_BIN], str(img.get("entrypoint")))
    c.check("CMD adds no arguments (configuration through ENDCALL_* or docker run args)",
            img.get("cmd") == [], str(img.get("cmd")))
    c.check("listens on 0.0.0.0 inside the container", listen_host == "0.0.0.0", listen_host)
    c.check("metrics on 0.0.0.0 inside the container", metrics_host == "0.0.0.0", metrics_host)
    c.check("EXPOSE lists the gRPC and metrics ports",
            sorted(img["expose"]) == sorted({grpc_port, metrics_port}), str(img["expose"]))
    hc = img.get("healthcheck", [])
    c.check("HEALTHCHECK execs the binary's probe subcommand (no shell)",
            hc[:2] == [IMAGE_BIN, "probe"], str(hc))
    if "--timeout" in hc:
        probe_to = duration_s(hc[hc.index("--timeout") + 1])
        c.check("probe --timeout below the HEALTHCHECK timeout",
                probe_to < duration_s(img["healthcheck_opts"]["timeout"]))
    c.check("STOPSIGNAL is SIGTERM (the drain signal)", img.get("stopsignal") == "SIGTERM")

    kdir = repo / "deploy" / "kubernetes"
    manifests = sorted(kdir.glob("*.yaml"))
    c.check("Kubernetes manifests present", len(manifests) >= 3, str(manifests))
    seen_uds = seen_tcp = seen_native = seen_classic = False
    webhook_secret_ways = set()
    for path in manifests:
        print(f"deploy/kubernetes/{path.name}")
        docs = load_docs(path)
        deps = [d for d in docs if d.get("kind") == "Deployment"]
        c.check("one Deployment", len(deps) == 1)
        if not deps:
            continue
        dep = deps[0]
        pod = dep["spec"]["template"]["spec"]
        inits = {x["name"]: x for x in pod.get("initContainers", [])}
        mains = {x["name"]: x for x in pod.get("containers", [])}
        native = SIDECAR in inits
        side = inits.get(SIDECAR) or mains.get(SIDECAR)
        agents = [x for n, x in mains.items() if n != SIDECAR]
        c.check("has the sidecar and an agent container", side is not None and len(agents) == 1)
        if side is None or len(agents) != 1:
            continue
        agent = agents[0]
        if native:
            seen_native = True
            c.check("native sidecar: restartPolicy Always", side.get("restartPolicy") == "Always")
        else:
            seen_classic = True
            c.check("classic sidecar: no restartPolicy on a regular container",
                    "restartPolicy" not in side)
        senv = env_of(side)
        listen = senv.get("ENDCALL_LISTEN", env["ENDCALL_LISTEN"])
        drain = duration_s(senv.get("ENDCALL_DRAIN_TIMEOUT", f"{DEFAULT_DRAIN_S}s"))
        delay = duration_s(senv.get("ENDCALL_SHUTDOWN_DELAY", "0s"))
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if native:
            # The sidecar's drain comes after the agent's, inside the same budget.
            c.check("grace period leaves room for the agent's drain and then the sidecar's",
                    grace >= delay + drain + 10, f"grace {grace}s, delay {delay}s, drain {drain}s")
        else:
            # Both get SIGTERM at once: the sidecar must outlast the agent's remaining calls.
            c.check("classic: a shutdown delay keeps the sidecar serving while the agent drains",
                    delay > 0, f"ENDCALL_SHUTDOWN_DELAY {delay}s")
            c.check("grace period covers the sidecar's shutdown delay and drain",
                    grace >= delay + drain + 10, f"grace {grace}s, delay {delay}s, drain {drain}s")
        probes = [side.get(k) for k in ("startupProbe", "readinessProbe", "livenessProbe")]
        c.check("sidecar has startup, readiness and liveness probes", all(probes))
        aenv = env_of(agent)
        agent_addr = aenv.get("ENDCALL_SIDECAR_ADDR", "")
        if listen.startswith("unix:"):
            seen_uds = True
            sock_dir = str(Path(listen[len("unix:"):]).parent)
            c.check("exec probes run `endcall-sidecar probe --addr <the socket>`", all(
                p and p.get("exec", {}).get("command", [])[:4] ==
                [IMAGE_BIN, "probe", "--addr", listen] for p in probes))
            c.check("agent dials the same socket", agent_addr == listen, agent_addr)
            vols = {v["name"]: v for v in pod.get("volumes", [])}
            smount = {m["mountPath"]: m["name"] for m in side.get("volumeMounts", [])}
            amount = {m["mountPath"]: m["name"] for m in agent.get("volumeMounts", [])}
            shared = smount.get(sock_dir)
            c.check("socket directory is one emptyDir mounted in both containers",
                    shared is not None and amount.get(sock_dir) == shared and
                    "emptyDir" in vols.get(shared, {}), sock_dir)
        else:
            seen_tcp = True
            lhost, lport = host_port(listen)
            c.check("sidecar listens on 0.0.0.0 (kubelet probes dial the pod IP)",
                    lhost == "0.0.0.0", listen)
            c.check("grpc probes on the listen port", all(
                p and p.get("grpc", {}).get("port") == lport for p in probes))
            c.check("grpc port declared", lport in [p["containerPort"] for p in side["ports"]])
            c.check("agent dials the sidecar on localhost",
                    agent_addr in (f"127.0.0.1:{lport}", f"localhost:{lport}"), agent_addr)
        ann = dep["spec"]["template"]["metadata"].get("annotations", {})
        c.check("metrics scrape annotations match the metrics port",
                ann.get("prometheus.io/scrape") == "true" and
                ann.get("prometheus.io/port") == str(metrics_port) and
                metrics_port in [p["containerPort"] for p in side["ports"]])
        sc = side.get("securityContext", {})
        psc = pod.get("securityContext", {})
        c.check("sidecar hardening: non-root, read-only root, no escalation, caps dropped",
                sc.get("runAsNonRoot") is True and sc.get("readOnlyRootFilesystem") is True and
                sc.get("allowPrivilegeEscalation") is False and
                sc.get("capabilities", {}).get("drop") == ["ALL"], json.dumps(sc))
        c.check("sidecar runs as the image's uid",
                sc.get("runAsUser", psc.get("runAsUser")) == uid)
        # Post-call webhooks: the URL from a Secret, and the signing secret from one too, either
        # through the environment (secretKeyRef) or as a mounted file; never a literal.
        url_ref = secret_ref(side, "ENDCALL_WEBHOOK_URL")
        c.check("webhook URL comes from a Secret (secretKeyRef)",
                url_ref is not None and "ENDCALL_WEBHOOK_URL" not in
                {k for k, v in senv.items() if v is not None})
        c.check("webhook signing secret is never a literal value",
                senv.get("ENDCALL_WEBHOOK_SECRET") is None)
        if secret_ref(side, "ENDCALL_WEBHOOK_SECRET") is not None:
            webhook_secret_ways.add("secretKeyRef")
            ref = secret_ref(side, "ENDCALL_WEBHOOK_SECRET")
            c.check("webhook URL and signing secret from the same Secret",
                    url_ref is not None and ref.get("name") == url_ref.get("name"))
        else:
            secret_file = senv.get("ENDCALL_WEBHOOK_SECRET_FILE") or ""
            vols = {v["name"]: v for v in pod.get("volumes", [])}
            mounts = [m for m in side.get("volumeMounts", [])
                      if secret_file.startswith(m["mountPath"].rstrip("/") + "/")]
            secret_vols = [vols.get(m["name"], {}).get("secret") for m in mounts]
            c.check("webhook signing secret is a file of a mounted Secret",
                    len(secret_vols) == 1 and secret_vols[0] is not None and
                    url_ref is not None and
                    secret_vols[0].get("secretName") == url_ref.get("name"), secret_file)
            c.check("the webhook Secret is mounted in the sidecar only", all(
                m["name"] not in {x["name"] for x in mounts}
                for m in agent.get("volumeMounts", [])))
            webhook_secret_ways.add("file")
        res = side.get("resources", {})
        c.check("sidecar has requests and limits",
                {"cpu", "memory"} <= set(res.get("requests", {})) and
                "memory" in res.get("limits", {}))
        c.check("no host namespaces or service-account token",
                not pod.get("hostNetwork") and not pod.get("hostPID") and
                pod.get("automountServiceAccountToken") is False)
    c.check("native sidecar, classic sidecar, localhost TCP and Unix socket all shown",
            seen_native and seen_classic and seen_tcp and seen_uds)
    c.check("the webhook signing secret shown both ways: secretKeyRef and a mounted file",
            webhook_secret_ways == {"secretKeyRef", "file"}, str(webhook_secret_ways))

    cdir = repo / "deploy" / "compose"
    print("deploy/compose/compose.yaml")
    base = load_docs(cdir / "compose.yaml")[0]
    over = load_docs(cdir / "compose.unix-socket.yaml")[0]
    side = base["services"][SIDECAR]
    agent = base["services"]["agent"]
    c.check("sidecar healthcheck is the image's HEALTHCHECK",
            side["healthcheck"]["test"] == ["CMD", *hc], str(side["healthcheck"]["test"]))
    sdrain = duration_s(side.get("environment", {}).get("ENDCALL_DRAIN_TIMEOUT",
                                                       f"{DEFAULT_DRAIN_S}s"))
    c.check("sidecar stop_grace_period longer than its drain",
            duration_s(side["stop_grace_period"]) > sdrain)
    c.check("sidecar hardening: uid, read-only, caps dropped, no-new-privileges",
            side.get("user") == img["user"] and side.get("read_only") is True and
            side.get("cap_drop") == ["ALL"] and
            "no-new-privileges:true" in side.get("security_opt", []))
    c.check("agent shares the sidecar's network namespace and dials localhost",
            agent.get("network_mode") == f"service:{SIDECAR}" and
            agent["environment"]["ENDCALL_SIDECAR_ADDR"] == f"127.0.0.1:{grpc_port}")
    c.check("agent starts after the sidecar is healthy",
            agent["depends_on"][SIDECAR]["condition"] == "service_healthy")
    c.check("gRPC port not published to the host",
            all(str(grpc_port) not in str(p) for p in side.get("ports", [])))
    print("deploy/compose/compose.unix-socket.yaml")
    olisten = over["services"][SIDECAR]["environment"]["ENDCALL_LISTEN"]
    otest = over["services"][SIDECAR]["healthcheck"]["test"]
    sock_dir = str(Path(olisten[len("unix:"):]).parent)
    c.check("healthcheck probes the socket it listens on",
            olisten.startswith("unix:") and otest[:5] == ["CMD", IMAGE_BIN, "probe", "--addr",
                                                          olisten], str(otest))
    c.check("agent dials that socket",
            over["services"]["agent"]["environment"]["ENDCALL_SIDECAR_ADDR"] == olisten)
    vol_side = [v for v in side.get("volumes", []) if v.endswith(":" + sock_dir)]
    vol_agent = [v for v in agent.get("volumes", []) if v.endswith(":" + sock_dir)]
    c.check("socket directory is one volume mounted in both services",
            len(vol_side) == 1 and vol_side == vol_agent, f"{vol_side} {vol_agent}")
    c.check("agent runs as the socket owner's uid",
            over["services"]["agent"].get("user") == img["user"])
    print("deploy/compose/compose.webhooks.yaml")
    hooks = load_docs(cdir / "compose.webhooks.yaml")[0]
    hside = hooks["services"][SIDECAR]
    henv = hside["environment"]
    mounted = {s["source"]: s for s in hside.get("secrets", [])}
    target = henv.get("ENDCALL_WEBHOOK_SECRET_FILE", "")
    source = next((name for name, s in mounted.items()
                   if target == f"/run/secrets/{s.get('target', name)}"), None)
    c.check("webhook signing secret is a compose secret's file, read by the sidecar's uid",
            source is not None and "file" in hooks.get("secrets", {}).get(source, {}) and
            str(mounted[source].get("uid")) == img["user"].split(":")[0], target)
    c.check("webhook signing secret is not in the environment",
            "ENDCALL_WEBHOOK_SECRET" not in henv)
    c.check("webhook URL is required from the caller's environment, not written here",
            str(henv.get("ENDCALL_WEBHOOK_URL", "")).startswith("${ENDCALL_WEBHOOK_URL:?"))

    print(f"consistency: {c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


def image_env(repo: Path) -> int:
    """Shell assignments for deploy/check: the image's ENV, USER, HEALTHCHECK and ENTRYPOINT."""
    img = runtime_image(repo)
    out = {
        "IMG_USER": img["user"],
        "IMG_ENTRYPOINT": img["entrypoint"][0],
    }
    for key, val in img["env"].items():
        out[f"IMGENV_{key}"] = val
    print("IMG_ENV_NAMES=(" + " ".join(shlex.quote(k) for k in img["env"]) + ")")
    print("IMG_HEALTHCHECK=(" + " ".join(shlex.quote(a) for a in img["healthcheck"]) + ")")
    print("IMG_CMD=(" + " ".join(shlex.quote(a) for a in img["cmd"]) + ")")
    for key, val in out.items():
        print(f"{key}={shlex.quote(val)}")
    return 0


def uds_probe(repo: Path) -> int:
    dep = next(d for d in load_docs(repo / "deploy/kubernetes/native-sidecar-unix-socket.yaml")
               if d.get("kind") == "Deployment")
    side = next(x for x in dep["spec"]["template"]["spec"]["initContainers"]
                if x["name"] == SIDECAR)
    print("UDS_LISTEN=" + shlex.quote(env_of(side)["ENDCALL_LISTEN"]))
    print("UDS_PROBE=(" + " ".join(shlex.quote(a) for a in
                                   side["livenessProbe"]["exec"]["command"]) + ")")
    return 0


if __name__ == "__main__":
    repo_dir = Path(sys.argv[1]).resolve()
    sys.exit({"consistency": consistency, "image-env": image_env,
              "uds-probe": uds_probe}[sys.argv[2]](repo_dir))
