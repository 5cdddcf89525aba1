"""The failover lab: a director pair with real servers, in network namespaces.

    scripts/lab up [--mode dr|nat|tun]   build it and leave it running (needs IPVS)
    scripts/lab status                   `hapair status` of both directors
    scripts/lab down                     remove everything (idempotent)
    scripts/lab demo [--mode ...] [--act N]   act 1: a VIP-only pair on this kernel, at
                                         real timing; act 2: up, a measured failover and
                                         failback (IPVS, sync, connections), down
    scripts/lab topology [--mode ...]    the topology below as JSON (the Vagrantfile reads it)
    scripts/lab provision HOST [--mode ...]  make THIS machine lab host HOST (a Vagrant VM)

The topology is described once, in TOPOLOGY below: a client, two directors (lvs1
priority 150, lvs2 priority 100), three real servers (HTTP on 80, SMTP on 25, a line
echo on 7) and an "ops" host receiving the alerts (a real SMTP server and a pager
endpoint); a public bridge, a heartbeat/sync bridge, a private bridge (NAT only), a
serial cable between the directors (a socat pty pair), and a management veth from the
root namespace to each director for its web monitor. The real servers, the long-lived
connections and the alert sinks (traffic.py, alert_sinks.py) serve the test suite too.

Every namespace is named `lab-<host>`; everything the lab starts runs inside one of
them except socat, whose pid is kept in the lab directory. `down` kills only those
processes and deletes only those names.

`provision` sets up one machine of the same topology, where the lab's networks already
reach it with the topology's addresses (Vagrant's private networks): it finds each
network's interface by its address and runs the very steps the namespace lab runs for
that host (a director's config, a real server's VIP and ARP settings or NAT route and its
services, the ops host's alert sinks), installed as systemd units.
"""
