# The project's commands. `just` lists them; `just setup` installs what is missing.
# The public ones (setup, dev, demo, test, up, down, bench) are part of the contract.

set shell := ["bash", "-euo", "pipefail", "-c"]

target_dir := env("CARGO_TARGET_DIR", justfile_directory() / "target")
compose := env("MM_COMPOSE", "podman-compose")
# The one release build: static binaries of every crate, which serve `dev`, `demo`, the
# images and the benchmarks alike (a newcomer's `just demo` + `just test` compile the
# workspace twice: this, and the debug build of the tests).
triple := `rustc -vV | sed -n 's/^host: //p'`
static_dir := target_dir / triple / "release"
bin := env("MM_BIN_DIR", static_dir)

# List the recipes.
default:
    @just --list

# Install what is missing (nats-server, redis-server, podman + runc, podman-compose, promtool). Idempotent.
setup:
    @bash .ci/setup

# `just dev --cluster`: NATS as a cluster of three; `MM_BIND=<address> just dev`: listen there
# for other machines (NATS and the gateway; it prints the ports a firewall must open).
# Game servers run on rootless Podman where this host can run it (`--driver process`: processes).
# Run the backend in the foreground: nats-server, redis-server, matchmaker, orchestrator, gateway.
dev *args: setup image
    {{ bin }}/mmctl dev ${MM_BIND:+--bind "$MM_BIND"} {{ args }}

# BACKEND: the address of the machine running `just dev` (with MM_BIND) or `just up`.
# Needs its `.mm/harness.env` copied here (or HARNESS_ENV=<file>); extra flags go to the
# harness (`--players 5000`, `--duration 30m`). The fleet target is set on the backend host
# with `mmctl fleet --target N`.
# A load machine: one harness instance against BACKEND, with the harness credentials only.
load backend *args: static-build
    #!/usr/bin/env bash
    set -euo pipefail
    env_file="${HARNESS_ENV:-.mm/harness.env}"
    if [ ! -f "$env_file" ]; then
        echo "just load: $env_file is missing: copy it from the backend host (scp {{ backend }}:<checkout>/.mm/harness.env .mm/)" >&2
        exit 2
    fi
    url="$(sed -n 's/^NATS_URL=//p' "$env_file" | tr -d '"')"
    # The file names the servers as the backend host listened (127.0.0.1 unless MM_BIND
    # was set): point every one of them at BACKEND, keeping the ports.
    url="$(printf '%s' "$url" | sed -E 's#@[^:,/@]+:#@{{ backend }}:#g')"
    servers="$(printf '%s' "$url" | sed -E 's#nats://[^@,]*@#nats://#g')"
    echo "just load: harness against gateway http://{{ backend }}:${MM_GATEWAY_PORT:-8080}, NATS $servers (user harness)"
    NATS_URL="$url" exec {{ bin }}/harness --gateway "http://{{ backend }}:${MM_GATEWAY_PORT:-8080}" {{ args }}

# `dev` plus a harness run (default 1,000 players for 60 s), then the run report.
demo players="1000" duration="60s" *args: setup image
    {{ bin }}/mmctl demo --players {{ players }} --duration {{ duration }} {{ args }}

# `just scaling --set players=250000`; `just scaling --inputs` lists each input and where it was measured.
# What 1,000,000 concurrent players would need, recomputed from the figures measured here (docs/SCALING.md).
scaling *args:
    python3 scripts/scaling.py {{ args }}

# `mmctl chaos --help` lists the flags (players, windows, `--driver process`, ...).
# `dev` under load with faults injected (kill -9 of each service, a Redis pause, a NATS restart), then the audit table; exits 1 when an invariant breaks.
chaos *args: setup image
    {{ bin }}/mmctl chaos {{ args }}

# One cargo call for all of them: building a subset would unify features differently and
# rebuild the rest next time. `--target` keeps it apart from the tests' debug build.
# The static release build of every binary (the images hold them; `dev`, `demo`, `bench` run them).
static-build:
    RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target {{ triple }} --workspace --bins

# The game-server image (`localhost/mm/game-server:latest`) the orchestrator's Podman driver runs.
image: static-build
    bash podman/build-images game-server

# The services FROM scratch around static binaries, nats-server, redis and prometheus around
# this host's programs (podman/build-images).
# Every image `just up` runs, built without a registry.
images: static-build
    bash podman/build-images all

# Every test in the workspace (real nats-server, redis-server and Podman), then format and lint checks.
test *args: setup images
    cargo build --workspace --bins
    if cargo nextest --version >/dev/null 2>&1; then \
        cargo nextest run --workspace --config-file .ci/nextest.toml {{ args }}; \
    else \
        cargo test --workspace {{ args }}; \
    fi
    just lint

# The services they start are the static release binaries (MM_BIN_DIR).
# The benchmarks: every crate's `[[bench]]` target prints its figures and ratios.
bench *args: _bench-setup image
    MM_BIN_DIR={{ static_dir }} cargo bench --workspace {{ args }}

# `just setup` plus the tools the benches compare with (wrk, Locust).
_bench-setup:
    @bash .ci/setup --bench

# Format check and clippy with warnings as errors.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# Format the code.
fmt:
    cargo fmt --all

# Show what the local services say about themselves (/healthz of each).
status:
    {{ bin }}/mmctl status

# The live game-server containers on the project's rootless Podman.
games:
    #!/usr/bin/env bash
    set -euo pipefail
    uid="$(id -u)"
    [ "$uid" = 0 ] && uid="$(id -u mmpodman)"
    socket="${MM_PODMAN_SOCKET:-/run/user/$uid/podman/podman.sock}"
    podman --url "unix://$socket" ps --filter label=mm.game-id

# nats, redis, gateway, matchmakers, orchestrator (game servers on the project's rootless
# Podman, whose API service it starts when none answers), harness, Prometheus, and Grafana
# where its image can be pulled.
# The full stack under podman compose (compose.yaml).
up *args: setup images
    #!/usr/bin/env bash
    set -euo pipefail
    source podman/compose-env
    podman_env="$({{ bin }}/mmctl podman-service start ${MM_PODMAN_SOCKET:+--socket "$MM_PODMAN_SOCKET"})"
    set -a
    eval "$podman_env"
    set +a
    profiles=()
    if podman image exists "$MM_GRAFANA_IMAGE" || timeout 120 podman pull -q "$MM_GRAFANA_IMAGE" >/dev/null 2>&1; then
        profiles=(--profile grafana)
    else
        echo "just up: $MM_GRAFANA_IMAGE cannot be pulled here (no registry?): running without Grafana"
    fi
    {{ compose }} -p "${MM_COMPOSE_PROJECT:-matchmaking-sim}" -f compose.yaml "${profiles[@]}" up -d {{ args }}
    echo
    bind="${MM_BIND:-127.0.0.1}"
    echo "gateway     http://$bind:${MM_GATEWAY_PORT:-8080} (game URLs: ws://${MM_PUBLIC_ADDR:-${MM_NET:-10.213.7}.4:8080})"
    echo "prometheus  http://$bind:${MM_PROMETHEUS_PORT:-9090}"
    [ ${#profiles[@]} -gt 0 ] && echo "grafana     http://$bind:${MM_GRAFANA_PORT:-3000}"
    echo "nats        nats://$bind:${MM_NATS_PORT:-4222} (no credentials: the operator; try \`nats micro ls\`)"
    echo "game servers on $MM_PODMAN_SOCKET (\`just games\`); \`just logs\`, \`just ps\`, \`just down\`"
    if [ "$bind" != 127.0.0.1 ]; then
        echo "other hosts reach this stack on $bind: open TCP ${MM_NATS_PORT:-4222} (NATS, for load machines: \`just load $bind\` with .mm/harness.env) and ${MM_GATEWAY_PORT:-8080} (gateway)"
    fi

# Volumes stay; `just down -v` removes them too.
# Stop the compose stack, the game servers its node left and the Podman service `just up` started.
down *args:
    #!/usr/bin/env bash
    set -euo pipefail
    source podman/compose-env
    {{ compose }} -p "${MM_COMPOSE_PROJECT:-matchmaking-sim}" -f compose.yaml --profile grafana down {{ args }}
    {{ bin }}/mmctl podman-service stop --node "${MM_NODE:-compose-node}"

# Follow the compose stack's logs (all services, or the ones named).
logs *services:
    #!/usr/bin/env bash
    set -euo pipefail
    source podman/compose-env
    {{ compose }} -p "${MM_COMPOSE_PROJECT:-matchmaking-sim}" -f compose.yaml logs -f {{ services }}

# List the compose stack's containers.
ps:
    #!/usr/bin/env bash
    set -euo pipefail
    source podman/compose-env
    {{ compose }} -p "${MM_COMPOSE_PROJECT:-matchmaking-sim}" -f compose.yaml --profile grafana ps
