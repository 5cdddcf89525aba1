"""IPVS load benchmark: hapair's table keeper against ipvsadm on the same rules.

Runs in the QEMU guest (the host kernel has no IPVS): started elsewhere, it re-runs itself
through scripts/run-in-kernel. Everything in the guest is ~10x slower than on the host, so
every figure is a ratio against a baseline measured in the same run, interleaved with it.

Two fresh network namespaces (deleted on exit, error, Ctrl-C and SIGTERM) hold the same
rule set, N TCP services 10.x.y.z:80 (wlc) with M direct-routing destinations each
(weights 1..10):

  hpilPID-h  written by hapair's real path: a TableKeeper opened in that namespace (in a
             worker process started with `ip netns exec`, as the keeper opens the driver
             of its own namespace) and `keeper.reconcile(desired)`.
  hpilPID-b  written by `ipvsadm-restore < file`; the bench itself enters this namespace,
             so every baseline process (ipvsadm-restore, ipvsadm -Ln, ipvsadm -e) is
             started directly in it and timed end to end, with no `ip netns exec` in it.

After the cold load and again at the end, `ipvsadm -Sn` of both namespaces must be the same
(sorted lines): a run whose two sides did different work is an error, not a result.

Measurements (hapair side timed inside the worker: the agent is a running process):
  cold load       TableKeeper.open() + reconcile() of the full table into an empty one
                  (dump, diff, one request per service and destination, verifying dump),
                  vs `ipvsadm-restore < file`. Target: ratio <= 1.5.
  no-op reconcile reconcile() of the loaded table (dump + diff, nothing to apply),
                  vs one `ipvsadm -Ln` (output to /dev/null). Target: ratio <= 1.
  weight change   driver.edit_dest() on the keeper's open driver vs one
                  `ipvsadm -e -t SVC -r DEST -g -w W` process. Target: ratio <= 0.1.
  weight change   a full keeper.reconcile() whose desired table differs in that one
   (reconcile)    weight (what the agent does when a verdict changes a weight); the same
                  baseline; shown for information.
Small measurements run --repeat times (median); the cold load --cold-runs times. With
--profile, or for every measurement that misses its target, the hapair side is run once
more under cProfile in the guest and the top functions are printed.

Exit status: 0 when the benchmark ran (also when a target is missed), 1 when the bench
itself broke, 2 on bad arguments, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from lab.benchkit import BenchError, Child, exit_status, in_guest

REPO = Path(__file__).resolve().parent.parent
PORT = 80
SCHEDULER = "wlc"


# --- the rule set, shared by both sides -----------------------------------------------------


def rules(services: int, dests: int) -> list[tuple[str, list[tuple[str, int]]]]:
    """[(service address, [(destination address, weight), ...]), ...]: all port 80."""
    svc_base = int(IPv4Address("10.0.0.0")) + 1
    dest_base = int(IPv4Address("172.16.0.0")) + 1
    return [
        (
            str(IPv4Address(svc_base + i)),
            [(str(IPv4Address(dest_base + i * dests + j)), (i + j) % 10 + 1) for j in range(dests)],
        )
        for i in range(services)
    ]


def target_rule(services: int, dests: int) -> tuple[str, str, int]:
    """The destination whose weight the weight-change measurements edit."""
    svc, ds = rules(services, dests)[services // 2]
    address, weight = ds[dests // 2]
    return svc, address, weight


def restore_text(services: int, dests: int) -> str:
    lines = []
    for svc, ds in rules(services, dests):
        lines.append(f"-A -t {svc}:{PORT} -s {SCHEDULER}")
        lines += [f"-a -t {svc}:{PORT} -r {d}:{PORT} -g -w {w}" for d, w in ds]
    return "\n".join(lines) + "\n"


def desired_table(services: int, dests: int) -> Any:
    from hapair.ipvs.table import Dest, DestKey, ServiceKey, VirtualService

    table = {}
    for svc, ds in rules(services, dests):
        key = ServiceKey("tcp", IPv4Address(svc), PORT, family=4)
        dmap = {}
        for address, weight in ds:
            dkey = DestKey(IPv4Address(address), PORT)
            dmap[dkey] = Dest(dkey, weight, "dr")
        table[key] = VirtualService(key, scheduler=SCHEDULER, dests=dmap)
    return table


# --- the hapair side: a worker process inside the hapair namespace ---------------------------


def worker_main(services: int, dests: int) -> int:
    """Answers one JSON request per stdin line with one JSON line on stdout."""
    return asyncio.run(_worker(services, dests))


async def _worker(services: int, dests: int) -> int:
    import cProfile
    import io
    import pstats
    from dataclasses import replace

    from hapair.ipvs.keeper import TableKeeper
    from hapair.ipvs.reconcile import diff
    from hapair.ipvs.table import DestKey, ServiceKey

    desired = desired_table(services, dests)
    svc_addr, dest_addr, _ = target_rule(services, dests)
    skey = ServiceKey("tcp", IPv4Address(svc_addr), PORT, family=4)
    dkey = DestKey(IPv4Address(dest_addr), PORT)
    keeper: TableKeeper | None = None
    dump_times: list[float] = []

    def with_weight(weight: int) -> Any:
        svc = desired[skey]
        dest = replace(svc.dests[dkey], weight=weight)
        return {**desired, skey: replace(svc, dests={**svc.dests, dkey: dest})}

    async def cold() -> dict[str, Any]:
        nonlocal keeper
        if keeper is not None:
            keeper.close()
        dump_times.clear()
        t0 = time.perf_counter()
        keeper = TableKeeper(None, 1)
        if not keeper.open():
            raise BenchError("TableKeeper.open() failed: no IPVS in the hapair namespace?")
        t1 = time.perf_counter()
        _instrument(keeper.driver, dump_times)
        outcome = await keeper.reconcile(desired)
        t2 = time.perf_counter()
        return {
            "s": t2 - t0,
            "open_s": t1 - t0,
            "dump_s": sum(dump_times),
            "applied": len(outcome.applied),
            "failed": [f"{c}: {e}" for c, e in outcome.failed[:3]],
            "remaining": len(outcome.remaining),
        }

    async def noop() -> dict[str, Any]:
        assert keeper is not None
        t0 = time.perf_counter()
        outcome = await keeper.reconcile(desired)
        t1 = time.perf_counter()
        actual = await keeper.driver.dump()
        t2 = time.perf_counter()
        changes = diff(desired, actual, keeper.owned)
        t3 = time.perf_counter()
        if outcome.applied or outcome.failed or changes:
            raise BenchError(f"no-op reconcile changed something: {outcome}")
        return {"s": t1 - t0, "dump_s": t2 - t1, "diff_s": t3 - t2}

    async def edit(weight: int) -> dict[str, Any]:
        nonlocal desired
        assert keeper is not None
        dest = replace(desired[skey].dests[dkey], weight=weight)
        t0 = time.perf_counter()
        keeper.driver.edit_dest(skey, dest)
        t1 = time.perf_counter()
        desired = with_weight(weight)
        return {"s": t1 - t0}

    async def reconcile1(weight: int) -> dict[str, Any]:
        nonlocal desired
        assert keeper is not None
        want = with_weight(weight)
        t0 = time.perf_counter()
        outcome = await keeper.reconcile(want)
        t1 = time.perf_counter()
        if len(outcome.applied) != 1 or outcome.failed or outcome.remaining:
            raise BenchError(f"a one-weight reconcile did not make exactly one change: {outcome}")
        desired = want
        return {"s": t1 - t0}

    async def profile(kind: str, weight: int) -> dict[str, Any]:
        prof = cProfile.Profile()
        prof.enable()
        if kind == "cold":
            await cold()
        elif kind == "noop":
            await noop()
        else:
            for i in range(200):  # one edit is too short to profile
                await edit(weight + i % 2)
        prof.disable()
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out).strip_dirs()
        stats.sort_stats("tottime").print_stats(14)
        stats.sort_stats("cumulative").print_stats(14)
        return {"text": out.getvalue()}

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    # Warm-up, untimed: the keeper imports the driver lazily, and the guest
    # reads them over 9p (tens of seconds with a cold cache); that is not table loading.
    warm = TableKeeper(None, 1)
    if not warm.open():
        raise BenchError("TableKeeper.open() failed: no IPVS in the hapair namespace?")
    await warm.reconcile({})
    warm.close()
    reply({"ready": True})
    try:
        for line in sys.stdin:
            req = json.loads(line)
            cmd = req["cmd"]
            try:
                if cmd == "quit":
                    break
                if cmd == "cold":
                    reply(await cold())
                elif cmd == "noop":
                    reply(await noop())
                elif cmd == "edit":
                    reply(await edit(req["weight"]))
                elif cmd == "reconcile1":
                    reply(await reconcile1(req["weight"]))
                elif cmd == "profile":
                    reply(await profile(req["kind"], req["weight"]))
                else:
                    reply({"error": f"unknown command {cmd!r}"})
            except Exception as e:
                reply({"error": f"{type(e).__name__}: {e}"})
    finally:
        if keeper is not None:
            keeper.close()
    return 0


def _instrument(driver: Any, times: list[float]) -> None:
    """Record how long each of the keeper's dumps takes (the instance's method is wrapped)."""
    inner = driver.dump

    async def dump(*args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await inner(*args)
        finally:
            times.append(time.perf_counter() - t0)

    driver.dump = dump


class Worker(Child):
    def __init__(self, netns: str, services: int, dests: int) -> None:
        cmd = ["ip", "netns", "exec", netns, sys.executable, str(Path(__file__).resolve())]
        cmd += ["--worker", "--services", str(services), "--dests", str(dests)]
        super().__init__(cmd, "the hapair worker")

    def call(self, cmd: str, **kw: Any) -> dict[str, Any]:
        answer = self.ask(json.dumps({"cmd": cmd, **kw}))
        if "error" in answer:
            raise BenchError(f"hapair worker: {answer['error']}")
        return answer


# --- the bench: namespaces, baseline processes, the table ----------------------------------


def sh(*cmd: str, timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if p.returncode != 0:
        raise BenchError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.strip()[:500]}")
    return p


def timed(*cmd: str, stdin: Any = subprocess.DEVNULL) -> float:
    """Run one process (output discarded) and return its wall time; it must succeed."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t0
    if p.returncode != 0:
        raise BenchError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.decode()[:500]}")
    return elapsed


def saved_rules(netns: str | None) -> list[str]:
    cmd = ("ipvsadm", "-Sn") if netns is None else ("ip", "netns", "exec", netns, "ipvsadm", "-Sn")
    return sorted(line for line in sh(*cmd).stdout.splitlines() if line.strip())


def same_table(ns_hapair: str, expected_lines: int, when: str) -> None:
    """Both namespaces must hold the same rules (the bench is in the baseline namespace)."""
    h, b = saved_rules(ns_hapair), saved_rules(None)
    if h != b or len(h) != expected_lines:
        only_h = sorted(set(h) - set(b))[:5]
        only_b = sorted(set(b) - set(h))[:5]
        raise BenchError(
            f"{when}: the two namespaces differ ({len(h)} vs {len(b)} rules, "
            f"{expected_lines} expected); only hapair's: {only_h}; only ipvsadm's: {only_b}"
        )


@dataclass
class Row:
    name: str
    hapair: list[float]
    baseline: list[float]
    limit: float | None  # the ratio must be <= this; None: for information
    target: str
    extra: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return statistics.median(self.hapair) / statistics.median(self.baseline)

    @property
    def result(self) -> str:
        if self.limit is None:
            return "info"
        return "PASS" if self.ratio <= self.limit else "MISS"


def print_table(rows: list[Row]) -> None:
    head = f"{'measurement':<44} {'hapair s':>10} {'baseline s':>10} {'ratio':>7}  {'target':<8} "
    print(head + "result")
    for r in rows:
        h, b = statistics.median(r.hapair), statistics.median(r.baseline)
        print(f"{r.name:<44} {h:>10.5f} {b:>10.5f} {r.ratio:>7.3f}  {r.target:<8} {r.result}")


def run(args: argparse.Namespace) -> int:
    n, m = args.services, args.dests
    total = n + n * m
    svc, dest, weight0 = target_rule(n, m)
    tag = f"hpil{os.getpid()}"
    ns_h, ns_b = f"{tag}-h", f"{tag}-b"
    from hapair.host import enter_netns

    created: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="ipvs_load."))
    home_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    worker: Worker | None = None
    entered = False
    try:
        for ns in (ns_h, ns_b):
            sh("ip", "netns", "add", ns)
            created.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        restore = tmp / "rules"
        restore.write_text(restore_text(n, m))
        ns_fd = os.open(f"/run/netns/{ns_b}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            enter_netns(ns_fd)  # from here on, plain processes start in the baseline namespace
        finally:
            os.close(ns_fd)
        entered = True

        print(
            f"bench/ipvs_load: {n} services x {m} destinations ({total} rules), "
            f"namespaces {ns_h} (hapair) and {ns_b} (ipvsadm); "
            f"cold load x{args.cold_runs}, others median of {args.repeat}",
            flush=True,
        )
        worker = Worker(ns_h, n, m)
        # Warm-up, untimed: ipvsadm, bash and grep into the guest's page cache (as the worker
        # does for hapair's modules). The baseline namespace is still empty.
        sh("ipvsadm", "-Ln")
        with open(os.devnull, "rb") as empty:
            sh("ipvsadm-restore", stdin=empty)

        cold_h: list[float] = []
        cold_b: list[float] = []
        cold_dump: list[float] = []
        cold_open: list[float] = []
        for k in range(args.cold_runs):
            if k:
                sh("ipvsadm", "-C")
                sh("ip", "netns", "exec", ns_h, "ipvsadm", "-C")

            def baseline() -> None:
                with restore.open("rb") as f:
                    cold_b.append(timed("ipvsadm-restore", stdin=f))

            def hapair() -> None:
                a = worker.call("cold")  # type: ignore[union-attr]
                if a["applied"] != total or a["failed"] or a["remaining"]:
                    raise BenchError(f"hapair's cold load did not go through: {a}")
                cold_h.append(a["s"])
                cold_dump.append(a["dump_s"])
                cold_open.append(a["open_s"])

            for step in (baseline, hapair) if k % 2 == 0 else (hapair, baseline):
                step()
            print(
                f"  cold load {k + 1}: hapair {cold_h[-1]:.3f} s, "
                f"ipvsadm-restore {cold_b[-1]:.3f} s",
                flush=True,
            )
        same_table(ns_h, total, "after the cold load")

        noop_h: list[float] = []
        noop_b: list[float] = []
        noop_dump: list[float] = []
        noop_diff: list[float] = []
        for _ in range(args.repeat):
            a = worker.call("noop")
            noop_h.append(a["s"])
            noop_dump.append(a["dump_s"])
            noop_diff.append(a["diff_s"])
            noop_b.append(timed("ipvsadm", "-Ln"))

        edit_h: list[float] = []
        rec_h: list[float] = []
        edit_b: list[float] = []
        weight = weight0
        for series in (edit_h, rec_h):
            for _ in range(args.repeat):
                weight += 1
                cmd = "edit" if series is edit_h else "reconcile1"
                series.append(worker.call(cmd, weight=weight)["s"])
                edit_b.append(
                    timed(
                        "ipvsadm", "-e", "-t", f"{svc}:{PORT}", "-r", f"{dest}:{PORT}", "-g",
                        "-w", str(weight),
                    )
                )  # fmt: skip
        same_table(ns_h, total, "after the weight changes")
        if f"-a -t {svc}:{PORT} -r {dest}:{PORT} -g -w {weight}" not in saved_rules(None):
            raise BenchError(f"the weight of {dest} did not become {weight}")

        rows = [
            Row("cold load  vs ipvsadm-restore", cold_h, cold_b, 1.5, "<= 1.5"),
            Row("no-op reconcile  vs ipvsadm -Ln", noop_h, noop_b, 1.0, "<= 1"),
            Row("weight change: edit_dest  vs ipvsadm -e", edit_h, edit_b, 0.1, "<= 0.1"),
            Row("weight change: keeper.reconcile  vs ipvsadm -e", rec_h, edit_b, None, "-"),
        ]
        print()
        print_table(rows)
        med = statistics.median
        print()
        print(
            f"cold load, hapair: open {med(cold_open):.3f} s, the two dumps "
            f"{med(cold_dump):.3f} s, diff + {total} requests "
            f"{med(cold_h) - med(cold_dump) - med(cold_open):.3f} s; "
            f"ipvsadm-restore {med(cold_b) / total * 1e6:.0f} us per rule"
        )
        print(
            f"no-op reconcile, hapair: dump {med(noop_dump):.4f} s "
            f"({n + 1} dump requests), diff {med(noop_diff):.4f} s"
        )
        print(
            f"samples (s): cold hapair {_fmt(cold_h)} / ipvsadm-restore {_fmt(cold_b)}; "
            f"edit_dest {_fmt(edit_h)}; ipvsadm -e {_fmt(edit_b)}"
        )

        kinds = {"cold": rows[0], "noop": rows[1], "edit": rows[2]}
        for kind, row in kinds.items():
            if not (args.profile or row.result == "MISS"):
                continue
            if kind == "cold":
                sh("ip", "netns", "exec", ns_h, "ipvsadm", "-C")
            text = worker.call("profile", kind=kind, weight=weight)["text"]
            print(f"\n## profile of the hapair side: {row.name} ({row.result})\n")
            print(text.strip())
        return 0
    finally:
        if worker is not None:
            worker.close()
        if entered:
            enter_netns(home_fd)
        os.close(home_fd)
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="bench/ipvs_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=1000, help="virtual services (1000)")
    p.add_argument("--dests", type=int, default=10, help="destinations per service (10)")
    p.add_argument("--repeat", type=int, default=9, help="runs of each small measurement (9)")
    p.add_argument("--cold-runs", type=int, default=3, help="cold loads per side (3)")
    p.add_argument("--profile", action="store_true", help="profile every hapair measurement")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not (1 <= args.services <= 60000 and 1 <= args.dests <= 1000):
        p.error("--services must be 1..60000 and --dests 1..1000")
    if args.services * args.dests > 1_000_000 or args.repeat < 1 or args.cold_runs < 1:
        p.error("at most 1,000,000 destinations; --repeat and --cold-runs at least 1")
    if args.worker:
        return worker_main(args.services, args.dests)
    if not in_guest():
        print(
            "bench/ipvs_load: no IPVS here; re-running in the QEMU guest through "
            "scripts/run-in-kernel (one boot: several minutes)",
            file=sys.stderr,
            flush=True,
        )
        os.chdir(REPO)
        rig = str(REPO / "scripts" / "run-in-kernel")
        os.execv(rig, [rig, str(REPO / "bench" / "ipvs_load"), *argv])
    if os.geteuid() != 0:
        print("bench/ipvs_load: needs root (network namespaces)", file=sys.stderr)
        return 1
    return exit_status("bench/ipvs_load", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
