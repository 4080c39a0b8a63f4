#!/usr/bin/env python3
"""What N concurrent players (default 1,000,000) would need, from figures measured here.

Every input below is a number measured on this project's 2-core build machine (the
command that measured it is in its note, and docs/SCALING.md says how), or a stated
assumption. Change one with `--set name=value` (repeatable) and the table is recomputed:

    python3 scripts/scaling.py
    python3 scripts/scaling.py --set players=250000 --set tickets_per_player_min=1
    python3 scripts/scaling.py --json          # the numbers, for a script of your own

The model is deliberately small: per-player rates times the population give the load of
each part (Little's law for what is concurrent: players in games = players entering games
per second x game length), and each part's measured or assumed capacity per instance
gives the instances, with `headroom` (run each at 1/headroom of its capacity).
"""

import argparse
import json
import math
import sys

# name: (value, where it comes from). "the measuring run" is: `mmctl dev --driver process` (release binaries) and one `harness --players 1000 --duration 180s` at the default rates; deltas over 130 s of steady state (40 s to 170 s into the run).
RUN = "the measuring run (docs/SCALING.md)"
INPUTS = {
    "players": (1_000_000, "the population to plan for"),
    "headroom": (1.5, "capacity / planned load (1.5: every part at about 2/3 of what it can do)"),
    "cores_per_machine": (2, "the build machine's kind: 2 cores"),
    # The players' behaviour: the harness's default rates (README "The harness").
    "tickets_per_player_min": (
        0.181,
        "measured: 543 matchmaking joins by 1,000 players in 180 s at the default rates (a join per 300 s "
        "of idle time): the report's scenarios.matchmaking.attempted, " + RUN,
    ),
    "game_duration_s": (30, "orchestrator.game.duration default"),
    "match_size": (10, "players per match (the default queue)"),
    "gateway_requests_per_player_min": (
        0.62,
        "measured: mm_nats_client_requests_total of the gateway (one per player request since tokens are "
        "checked at the gateway; long-polls included), " + RUN,
    ),
    "nats_msgs_per_player_min": (
        5.8,
        "measured: nats-server /varz in_msgs + out_msgs, " + RUN + " (includes the fixed background: "
        "heartbeats, stats, KV acks)",
    ),
    "redis_cmds_per_player_min": (
        12.3,
        "measured: Redis INFO commandstats calls, " + RUN + " (includes the matcher's idle polls, which "
        "do not grow with players)",
    ),
    "redis_us_per_player_min": (
        146,
        "measured: Redis INFO commandstats usec (time in the one Redis thread), " + RUN + "; a Lua "
        "script (EVALSHA) costs ~80 us, a GET ~2 us",
    ),
    "redis_busy_max": (0.5, "assumed: keep one Redis thread at most half busy (latency stays flat below that)"),
    # CPU per player-minute of the release binaries, same run.
    "harness_cpu_ms_per_player_min": (0.75, "measured: mm_process_cpu_seconds_total of the harness, " + RUN),
    "gateway_cpu_ms_per_player_min": (0.76, "measured: mm_process_cpu_seconds_total of the gateway, " + RUN),
    "matchmaker_cpu_ms_per_player_min": (0.30, "measured: mm_process_cpu_seconds_total of the matchmaker, " + RUN),
    # Capacities per instance.
    "players_per_harness": (
        20_000,
        "a harness process holds one socket per busy player and `ulimit -Hn` is 20,000 here; an idle player "
        "is ~0.9 KiB with its token (`cargo bench -p harness --bench players`), so sockets bind before memory",
    ),
    "tickets_per_s_per_matchmaker": (
        7_300,
        "measured: `cargo bench -p matchmaker --bench matchmaking`, 'through the matchmaker over NATS' "
        "(7,100-7,500 tickets/s)",
    ),
    "allocations_per_s_per_node": (
        9,
        "measured: Podman starts ~9 game containers/s on these 2 cores (the project's platform notes); a warm pool claim "
        "takes milliseconds, so this is the cold-start bound",
    ),
    "servers_per_node": (
        200,
        "a game server asks 10 millicores and 32 MB (its `servers` entry): 2,000 millicores / 10 = 200 on a "
        "2-core node (memory allows 700+)",
    ),
    "game_sockets_per_gateway": (10_000, "gateway.game_sockets_max default (and under ulimit -Hn 20,000)"),
    "nats_msgs_per_s_per_server": (
        1_000_000,
        "ASSUMED, not measured here: a planning figure for one nats-server on a few cores with small "
        "messages (NATS's own benchmarks report several million)",
    ),
}


def compute(v):
    """Every derived figure, as (name, value, unit, how) rows, plus the saturation order."""
    players = v["players"]
    head = v["headroom"]
    tickets_s = players * v["tickets_per_player_min"] / 60
    allocations_s = tickets_s / v["match_size"]
    in_game = tickets_s * v["game_duration_s"]  # Little's law: arrivals/s x time in game
    servers = in_game / v["match_size"]
    requests_s = players * v["gateway_requests_per_player_min"] / 60
    nats_s = players * v["nats_msgs_per_player_min"] / 60
    redis_s = players * v["redis_cmds_per_player_min"] / 60
    redis_busy = players * v["redis_us_per_player_min"] / 60 / 1e6  # Redis threads kept busy

    def cores(name):
        return players * v[name] / 60 / 1000

    cpu_machines = {
        part: cores(f"{part}_cpu_ms_per_player_min") / v["cores_per_machine"]
        for part in ("harness", "gateway", "matchmaker")
    }
    harness = math.ceil(max(players / v["players_per_harness"], cpu_machines["harness"]) * head)
    matchmakers = max(
        1, math.ceil(max(tickets_s / v["tickets_per_s_per_matchmaker"], cpu_machines["matchmaker"]) * head)
    )
    nodes_by_rate = allocations_s / v["allocations_per_s_per_node"]
    nodes_by_room = servers / v["servers_per_node"]
    nodes = max(1, math.ceil(max(nodes_by_rate, nodes_by_room) * head))
    gateways = max(1, math.ceil(max(in_game / v["game_sockets_per_gateway"], cpu_machines["gateway"]) * head))
    nats_servers = max(3, math.ceil(nats_s / v["nats_msgs_per_s_per_server"] * head))
    if nats_servers % 2 == 0:
        nats_servers += 1  # an odd cluster keeps a JetStream quorum
    redis_shards = max(1, math.ceil(redis_busy / v["redis_busy_max"]))

    rows = [
        ("matchmaking joins (tickets)", tickets_s, "/s", "players x tickets_per_player_min / 60"),
        ("allocations (matches)", allocations_s, "/s", "tickets / match_size"),
        ("players in a game at once", in_game, "", "tickets/s x game_duration_s"),
        ("game servers at once", servers, "", "players in games / match_size"),
        ("gateway -> services requests", requests_s, "/s", "players x gateway_requests_per_player_min / 60"),
        ("NATS messages (in + out)", nats_s, "/s", "players x nats_msgs_per_player_min / 60"),
        ("Redis commands", redis_s, "/s", "players x redis_cmds_per_player_min / 60"),
        ("Redis thread time", redis_busy, "threads busy", "players x redis_us_per_player_min / 60 / 1e6"),
        (
            "harness instances",
            harness,
            "",
            f"max(players / players_per_harness, CPU: {cpu_machines['harness']:.1f} machines) x headroom",
        ),
        (
            "matchmakers",
            matchmakers,
            "",
            f"max(tickets/s / tickets_per_s_per_matchmaker, CPU: {cpu_machines['matchmaker']:.1f} machines) x headroom",
        ),
        (
            "orchestrator nodes",
            nodes,
            "",
            f"max(allocations/s / allocations_per_s_per_node = {nodes_by_rate:.1f}, servers / servers_per_node "
            f"= {nodes_by_room:.1f}) x headroom",
        ),
        (
            "gateways",
            gateways,
            "",
            f"max(players in games / game_sockets_per_gateway, CPU: {cpu_machines['gateway']:.1f} machines) x headroom",
        ),
        ("NATS cluster", nats_servers, "servers", "max(3, msgs/s / nats_msgs_per_s_per_server x headroom), odd"),
        ("Redis (shards of the matchmaker's keys)", redis_shards, "", "Redis thread time / redis_busy_max"),
    ]

    # Players ONE instance of each part carries at full capacity: the smallest is the part
    # that saturates first as the population grows on today's layout (one Redis, one
    # gateway, one node, one matchmaker, one nats-server, one harness).
    per_player = {
        "Redis (one thread)": v["redis_us_per_player_min"] / 60 / 1e6 / v["redis_busy_max"],
        "gateway (game sockets)": v["tickets_per_player_min"] / 60 * v["game_duration_s"] / v["game_sockets_per_gateway"],
        "gateway (CPU)": v["gateway_cpu_ms_per_player_min"] / 60 / 1000 / v["cores_per_machine"],
        "matchmaker (CPU)": v["matchmaker_cpu_ms_per_player_min"] / 60 / 1000 / v["cores_per_machine"],
        "harness instance (CPU)": v["harness_cpu_ms_per_player_min"] / 60 / 1000 / v["cores_per_machine"],
        "orchestrator node (room)": v["tickets_per_player_min"] / 60 * v["game_duration_s"] / v["match_size"] / v["servers_per_node"],
        "orchestrator node (start rate)": v["tickets_per_player_min"] / 60 / v["match_size"] / v["allocations_per_s_per_node"],
        "matchmaker (tickets)": v["tickets_per_player_min"] / 60 / v["tickets_per_s_per_matchmaker"],
        "nats-server": v["nats_msgs_per_player_min"] / 60 / v["nats_msgs_per_s_per_server"],
        "harness instance (sockets)": 1 / v["players_per_harness"],
    }
    saturation = sorted(((part, 1 / load) for part, load in per_player.items() if load > 0), key=lambda x: x[1])
    return rows, saturation


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override an input")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--inputs", action="store_true", help="list the inputs and their sources")
    args = parser.parse_args()
    values = {name: value for name, (value, _) in INPUTS.items()}
    for item in args.set:
        name, _, raw = item.partition("=")
        if name not in INPUTS or not raw:
            sys.exit(f"scaling.py: unknown input or no value: {item!r} (see --inputs)")
        values[name] = float(raw.replace("_", ""))
    rows, saturation = compute(values)
    if args.json:
        print(json.dumps({
            "inputs": values,
            "needs": {name: value for name, value, _, _ in rows},
            "players_per_instance": dict(saturation),
        }, indent=2))
        return
    if args.inputs:
        for name, (value, source) in INPUTS.items():
            print(f"{name} = {values[name]:g}\n    {source}")
        return
    print(f"For {values['players']:,.0f} concurrent players (headroom {values['headroom']:g}):\n")
    print("| what | needs | how |")
    print("|---|---:|---|")
    for name, value, unit, how in rows:
        shown = f"{value:,.0f}" if value >= 10 or float(value).is_integer() else f"{value:,.2f}"
        print(f"| {name} | {shown} {unit} | {how} |")
    print("\nPlayers one instance of each part carries at full capacity (smallest first: it saturates first):\n")
    print("| part | players per instance |")
    print("|---|---:|")
    for part, players in saturation:
        print(f"| {part} | {players:,.0f} |")


if __name__ == "__main__":
    main()
