#!/usr/bin/env python3
"""Turns the raw files scripts/bench.sh collected in DIR into bench.json (every sample, one
file), bench.md (medians, p95, ratios, target lines) and PNG charts. Not timed; stdlib only
apart from matplotlib (charts are skipped without it).
    scripts/bench-report.py DIR
"""
import json
import math
import os
import re
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def med(v):
    s = sorted(v)
    return s[len(s) // 2] if s else math.nan


def p95(v):
    s = sorted(v)
    return s[max(1, math.ceil(len(s) * 0.95)) - 1] if s else math.nan


def f(x, unit=""):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}{unit}"


out = sys.argv[1] if len(sys.argv) > 1 else "bench-out"
machine = load(os.path.join(out, "machine.json")) or {}
cni = load(os.path.join(out, "cni.json")) or {}
ipam = load(os.path.join(out, "ipam.json"))
docker = load(os.path.join(out, "docker.json"))
fwlib = None
try:
    fwlib = open(os.path.join(out, "fwlib.txt")).read()
except OSError:
    pass

lat = cni.get("latency", {})
ms = lat.get("ms", {})
rss = lat.get("rss_kb", {})
# Peers the harness could not run, with the reason (e.g. not installed).
missing = dict(cni.get("missing", {}))
if docker is None:
    try:
        with open(os.path.join(out, "docker.txt")) as fh:
            tail = fh.read().strip().splitlines()[-1:]
        missing["docker"] = f"the Docker section failed: {tail[0] if tail else 'no output'}"
    except OSError:
        missing["docker"] = "the Docker section did not run (--no-docker, or no dockerd)"
md, rows, targets = [], [], []


def target(issue, text, ratio, limit, at_least=False, needs=()):
    """A target line; when a peer it `needs` could not be run, the line says which and why
    instead of a ratio (a figure that was never measured is not a target missed)."""
    gone = [f"{n}: {missing[n]}" for n in needs if n in missing]
    if gone:
        targets.append(f"target #{issue}: {text}: not measured ({'; '.join(gone)})")
        return
    if math.isnan(ratio):
        targets.append(f"target #{issue}: {text}: not measured (no samples in this run)")
        return
    ok = ratio >= limit if at_least else ratio <= limit
    targets.append(f"target #{issue}: {text}: {ratio:.2f} ({'met' if ok else 'not met'})")


def mp(series):
    v = ms.get(series, [])
    return med(v), p95(v)


table = []  # (label, plugnet median, p95, peer label, peer median, p95, ratio)


def pair(label, ours, peer_label, theirs):
    om, op = mp(ours)
    tm, tp = mp(theirs)
    table.append((label, om, op, peer_label, tm, tp, om / tm if tm else math.nan))
    return om / tm if tm else math.nan


pair("VERSION (process start-up)", "plugnet.version", "Go bridge", "go.version")
r_add = pair("ADD IPv4", "plugnet.add", "Go bridge + host-local", "go.add")
r_chk = pair("CHECK IPv4", "plugnet.check", "Go bridge + host-local", "go.check")
r_del = pair("DEL IPv4", "plugnet.del", "Go bridge + host-local", "go.del")
floor = med(ms.get("kernel.veth_del", []))
r_dual = pair("ADD dual-stack", "plugnet_dual.add", "Go bridge + host-local", "go_dual.add")
if ms.get("plugnet_base.del"):
    pair("ADD IPv4, this build vs the baseline build (A/B)", "plugnet.add", "baseline build",
         "plugnet_base.add")
    pair("DEL IPv4, this build vs the baseline build (A/B)", "plugnet.del", "baseline build",
         "plugnet_base.del")
# Go's dual-stack ADD is bimodal: a call that finds an address still tentative sleeps one
# 50 ms poll (ip.SettleAddresses), the others do not, so its median falls in either mode.
go_dual = ms.get("go_dual.add", [])
go_dual_slow = sum(1 for x in go_dual if x >= 40) / len(go_dual) if go_dual else math.nan
go_dual_mean = sum(go_dual) / len(go_dual) if go_dual else math.nan
pair("DEL dual-stack", "plugnet_dual.del", "Go bridge + host-local", "go_dual.del")
r_nv = pair("ADD IPv4 vs netavark setup", "plugnet.add", "netavark setup", "netavark.setup")
r_nvm = pair("ADD ipMasq vs netavark setup (masquerades too)", "plugnet_masq.add",
             "netavark setup", "netavark.setup")
pair("DEL vs netavark teardown", "plugnet.del", "netavark teardown", "netavark.teardown")
rss_pn, rss_go = med(rss.get("plugnet.add", [])), med(rss.get("go.add", []))
rss_nv = med(rss.get("netavark.setup", []))
r_rss = rss_pn / rss_go if rss_go else math.nan

# Concurrency: ops/s per round; median over rounds.
conc = {}
for r in cni.get("concurrency", {}).get("rounds", []):
    d = conc.setdefault((r["subject"], r["level"]), {"add": [], "del": []})
    d["add"].append(r["level"] / (r["add_ms"] / 1e3))
    d["del"].append(r["level"] / (r["del_ms"] / 1e3))
levels = sorted({lv for (_, lv) in conc})
r_c64 = math.nan
if ("plugnet", 64) in conc and ("go", 64) in conc:
    r_c64 = med(conc[("plugnet", 64)]["add"]) / med(conc[("go", 64)]["add"])

# IPAM growth.
ipam_rows = ipam["rows"] if ipam else []
growth = hl_growth = r2k = math.nan
if ipam_rows:
    first, last = ipam_rows[0], ipam_rows[-1]
    growth = last["plugnet_add_ms"]["median"] / first["plugnet_add_ms"]["median"]
    hl_growth = last["host_local_add_ms"]["median"] / first["host_local_add_ms"]["median"]
    for r in ipam_rows:
        if r["allocations"] == 2000:
            r2k = r["plugnet_add_ms"]["median"] / r["host_local_add_ms"]["median"]

# Port mappings.
pm = cni.get("portmap", {})
pms = pm.get("samples", {}).get("ms", {})
pm_n = pm.get("n")
pm_pn = pm_go = math.nan
pm_src = "CNI"
if pms.get("plugnet.big.add"):
    pm_pn = med(pms["plugnet.big.add"]) / med(pms["plugnet.small.add"])
elif fwlib:
    m = re.search(r"firewall ADD .*?: ratio ([0-9.]+)", fwlib)
    if m:
        pm_pn = float(m.group(1))
        pm_src = "firewall library (this plugnet build takes no portMappings)"
if pms.get("go.big.add"):
    pm_go = med(pms["go.big.add"]) / med(pms["go.small.add"])

# Docker.
dk = {}
if docker:
    none = docker["run_ms"]["none"]
    for k in ("builtin", "existing", "derived"):
        run = docker["run_ms"][k]
        net = [a - b for a, b in zip(run, none)]  # paired per round
        dk[k] = {"net": net, "cd": docker["connect_disconnect_ms"][k]}

# Targets.
target(2, "IPAM ADD last/first at 60,000 allocations <= 1.2 (host-local: "
       f"{f(hl_growth)})", growth, 1.2)
target(2, "IPAM ADD median at 2,000 <= 0.3x host-local", r2k, 0.3)
target(3, "ADD median <= 0.25x Go bridge", r_add, 0.25)
target(3, "ADD median <= 0.5x netavark setup", r_nv, 0.5, needs=("netavark",))
# DEL waits for the kernel: the veth's unregistration blocks 10-20 ms in rcu_barrier(), the
# same for both plugins. The target is on what each adds above that floor (one in-process
# RTM_DELLINK of a veth left as a plugin leaves it, measured in the same rounds).
dm_pn, dm_go, dm_base = mp("plugnet.del")[0], mp("go.del")[0], mp("plugnet_base.del")[0]
above_pn, above_go = dm_pn - floor, dm_go - floor
if math.isnan(floor) or math.isnan(above_pn) or math.isnan(above_go):
    targets.append("target #21: DEL time above the kernel floor <= Go's: not measured "
                   "(no floor or DEL samples in this run)")
else:
    ok = above_pn <= above_go
    targets.append(f"target #21: DEL time above the kernel floor (one RTM_DELLINK, same rounds) "
                   f"<= Go's: plugnet {above_pn:.2f} ms, Go {above_go:.2f} ms "
                   f"({'met' if ok else 'not met'})")
    targets.append(f"  (floor {floor:.2f} ms; DEL medians: plugnet {dm_pn:.2f} ms, "
                   f"Go {dm_go:.2f} ms = {dm_pn / dm_go:.2f}x"
                   + (f"; baseline build {dm_base:.2f} ms, {dm_base - floor:.2f} ms above the floor"
                      if not math.isnan(dm_base) else "") + ")")
single = mp("plugnet.add")[0]
target(21, "dual-stack ADD median <= 1.1x plugnet's own single-stack ADD (same rounds)",
       mp("plugnet_dual.add")[0] / single if single else math.nan, 1.1)
target(21, "dual-stack ADD median <= 0.1x the mean of Go's dual-stack ADD",
       mp("plugnet_dual.add")[0] / go_dual_mean if go_dual else math.nan, 0.1)
if go_dual:
    targets.append(f"  (Go's dual-stack ADD is bimodal: {go_dual_slow:.0%} of calls sleep a 50 ms "
                   f"DAD poll, so its median lands in either mode; mean {go_dual_mean:.1f} ms, "
                   f"median {mp('go_dual.add')[0]:.1f} ms, plugnet's {mp('plugnet_dual.add')[0]:.2f} ms "
                   f"= {r_dual:.2f}x that median)")
target(3, "64-way concurrent ADD throughput >= 4x Go bridge (verified)", r_c64, 4, True)
target(3, "peak RSS of one ADD <= 0.5x Go bridge", r_rss, 0.5)
for k, label in (("existing", "mode 2, reference chain"), ("derived", "mode 1, plugnet")):
    net = med(dk[k]["net"]) / med(dk["builtin"]["net"]) if k in dk else math.nan
    cd = med(dk[k]["cd"]) / med(dk["builtin"]["cd"]) if k in dk else math.nan
    target(4, f"docker run network part <= 1.2x builtin ({label})", net, 1.2, needs=("docker",))
    target(4, f"network connect+disconnect <= 1.2x builtin ({label})", cd, 1.2, needs=("docker",))
target(4, "shim idle RSS <= 10 MB (ratio to 10 MB)",
       docker["idle_rss_kb"] / 10240 if docker else math.nan, 1.0, needs=("docker",))
target(6, f"plugnet port-mapped ADD with {pm_n} mapped / with 0 <= 1.2 [{pm_src}] "
       f"(reference portmap: {f(pm_go)})", pm_pn, 1.2)

# Markdown.
md.append(f"Machine: {machine.get('cpus')} vCPU ({machine.get('cpu')}), "
          f"{int(machine.get('mem_kb', 0)) // 1024} MiB, kernel {machine.get('kernel')}; "
          f"load average at start {machine.get('load_start')}, after the CNI part "
          f"{cni.get('meta', {}).get('load_after')} (shared with other builds: read the ratios). "
          f"{machine.get('date')}, commit {machine.get('commit')}"
          f"{', --quick' if machine.get('quick') else ''}; "
          f"plugins: {machine.get('plugins', 'target/release')} build (scripts/build-plugins.sh); "
          f"{cni.get('meta', {}).get('iterations')} sequential iterations, "
          f"{cni.get('meta', {}).get('rounds')} concurrency rounds; IPAM stores under {os.path.dirname(str(cni.get('meta', {}).get('store')))}.\n")
md.append("| operation | plugnet median | p95 | peer | peer median | p95 | ratio |")
md.append("|---|---:|---:|---|---:|---:|---:|")
for (label, om, op, peer, tm, tp, r) in table:
    why = [v for k, v in missing.items() if k in peer.lower()]
    if why and math.isnan(tm):
        md.append(f"| {label} | {f(om, ' ms')} | {f(op, ' ms')} | {peer} | not measured: "
                  f"{why[0]} | | |")
        continue
    md.append(f"| {label} | {f(om, ' ms')} | {f(op, ' ms')} | {peer} | {f(tm, ' ms')} | "
              f"{f(tp, ' ms')} | {f(r)} |")
if not math.isnan(floor):
    fp = p95(ms.get("kernel.veth_del", []))
    md.append(f"| veth deletion alone (one RTM_DELLINK, in-process: DEL's kernel floor) | | | "
              f"kernel | {f(floor, ' ms')} | {f(fp, ' ms')} | |")
md.append(f"| peak RSS of one ADD | {f(rss_pn / 1024, ' MB')} | | Go bridge + host-local "
          f"(netavark setup {f(rss_nv / 1024, ' MB')}) | {f(rss_go / 1024, ' MB')} | | {f(r_rss)} |")
cpu = lat.get("cpu_ms", {})
for key, label in (("add", "CPU time of one ADD"), ("del", "CPU time of one DEL"),
                   ("version", "CPU time of VERSION")):
    a, b = cpu.get(f"plugnet.{key}", []), cpu.get(f"go.{key}", [])
    if a and b:
        md.append(f"| {label} | {f(med(a), ' ms')} | {f(p95(a), ' ms')} | Go bridge + host-local | "
                  f"{f(med(b), ' ms')} | {f(p95(b), ' ms')} | {f(med(a) / med(b))} |")
for lv in levels:
    if ("plugnet", lv) in conc and ("go", lv) in conc:
        a, b = conc[("plugnet", lv)], conc[("go", lv)]
        for op in ("add", "del"):
            ra, rb = med(a[op]), med(b[op])
            md.append(f"| {lv} concurrent {op.upper()}s: ops/s (round) | {ra:.0f} "
                      f"({lv / ra * 1e3:.0f} ms) | | Go | {rb:.0f} ({lv / rb * 1e3:.0f} ms) | | "
                      f"{ra / rb:.2f}× |")
for r in ipam_rows:
    pa, ha = r["plugnet_add_ms"], r["host_local_add_ms"]
    md.append(f"| IPAM ADD, {r['allocations']:,} allocated | {f(pa['median'], ' ms')} | "
              f"{f(pa['p95'], ' ms')} | host-local | {f(ha['median'], ' ms')} | "
              f"{f(ha['p95'], ' ms')} | {f(pa['median'] / ha['median'])} |")
for size, n in (("small", 0), ("big", pm_n)):
    a, b = pms.get(f"plugnet.{size}.add", []), pms.get(f"go.{size}.add", [])
    if b:
        md.append(f"| port-mapped ADD, {n} mapped containers | {f(med(a), ' ms')} | "
                  f"{f(p95(a), ' ms')} | Go bridge + portmap | {f(med(b), ' ms')} | "
                  f"{f(p95(b), ' ms')} | {f(med(a) / med(b) if a else math.nan)} |")
if "builtin" in dk:
    for k, label in (("existing", "plugnet-shim, mode 2"), ("derived", "plugnet-shim, mode 1")):
        if k in dk:
            md.append(f"| docker run, network part ({label}) | {f(med(dk[k]['net']), ' ms')} | | "
                      f"builtin bridge | {f(med(dk['builtin']['net']), ' ms')} | | "
                      f"{f(med(dk[k]['net']) / med(dk['builtin']['net']))} |")
            md.append(f"| network connect+disconnect ({label}) | {f(med(dk[k]['cd']), ' ms')} | "
                      f"{f(p95(dk[k]['cd']), ' ms')} | builtin bridge | "
                      f"{f(med(dk['builtin']['cd']), ' ms')} | {f(p95(dk['builtin']['cd']), ' ms')} | "
                      f"{f(med(dk[k]['cd']) / med(dk['builtin']['cd']))} |")
    md.append(f"| shim idle RSS | {docker['idle_rss_kb'] / 1024:.1f} MB | | | | | |")
if fwlib and pm_src != "CNI":
    md.append("\nPort mappings, plugnet side measured on its firewall library (in-process):\n")
    md.extend("    " + line for line in fwlib.strip().splitlines())
try:
    dtxt = open(os.path.join(out, "docker.txt")).read()
    lat_lines = dtxt.split("handler latency", 1)[1].splitlines()[1:]
    lat_lines = [x for x in lat_lines if x.startswith("  ")]
    if lat_lines:
        md.append("\nplugnet-shim handler latency per method (ms: median / max / count):\n")
        md.extend("    " + x.strip() for x in lat_lines)
except (OSError, IndexError):
    pass
if missing:
    md.append("\nNot measured in this run:\n")
    md.extend(f"- {k}: {v}" for k, v in sorted(missing.items()))
md.append("\nTargets (issues 2, 3, 4, 6, 21):\n")
md.extend(f"- {t}" for t in targets)
text = "\n".join(md) + "\n"
with open(os.path.join(out, "bench.md"), "w") as fh:
    fh.write(text)
with open(os.path.join(out, "bench.json"), "w") as fh:
    json.dump({"machine": machine, "cni": cni, "ipam": ipam, "docker": docker,
               "firewall_library": fwlib, "targets": targets}, fh)
print(text)

# Charts.
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib missing: no charts")
    sys.exit(0)

series = [("plugnet.version", "plugnet VERSION"), ("go.version", "Go VERSION"),
          ("plugnet.add", "plugnet ADD"), ("go.add", "Go ADD"),
          ("plugnet.check", "plugnet CHECK"), ("go.check", "Go CHECK"),
          ("plugnet.del", "plugnet DEL"), ("go.del", "Go DEL"),
          ("plugnet_dual.add", "plugnet ADD v4+v6"), ("go_dual.add", "Go ADD v4+v6"),
          ("plugnet_masq.add", "plugnet ADD ipMasq"), ("netavark.setup", "netavark setup")]
series = [(k, l) for k, l in series if ms.get(k)]
if series:
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.boxplot([ms[k] for k, _ in series], showfliers=True, whis=(5, 95))
    ax.set_xticks(range(1, len(series) + 1), [l for _, l in series], rotation=30, ha="right")
    ax.set_ylabel("ms per invocation (log)")
    ax.set_yscale("log")
    ax.set_title("Latency distributions (whiskers p5–p95), whole plugin processes")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "latency.png"), dpi=110)
if levels:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for subj, name in (("plugnet", "plugnet"), ("go", "Go bridge + host-local")):
        for op, style in (("add", "-o"), ("del", "--s")):
            ys = [med(conc[(subj, lv)][op]) for lv in levels if (subj, lv) in conc]
            ax.plot(levels[:len(ys)], ys, style, label=f"{name} {op.upper()}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(x) for x in levels])
    ax.set_xlabel("simultaneous invocations")
    ax.set_ylabel("operations per second")
    ax.set_title("Throughput vs concurrency (verified: distinct, nothing left)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "concurrency.png"), dpi=110)
if ipam_rows:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [max(r["allocations"], 1) for r in ipam_rows]
    for key, name in (("plugnet_add_ms", "plugnet-ipam ADD"), ("host_local_add_ms", "host-local ADD")):
        ax.plot(xs, [r[key]["median"] for r in ipam_rows], "-o", label=name)
    ax.set_xscale("symlog", linthresh=1000)
    ax.set_yscale("log")
    ax.set_xticks(xs, [f"{r['allocations']:,}" for r in ipam_rows])
    ax.set_xlabel("existing allocations in the /16")
    ax.set_ylabel("median ms per ADD (log)")
    ax.set_title("IPAM cost vs allocations")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "ipam.png"), dpi=110)
print(f"charts in {out}/")
