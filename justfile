# The project's commands. `just` lists them; `just setup` installs what is missing.
# The public ones (setup, dev, demo, test, up, down, bench) are part of the contract.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Cargo profile for `dev` (debug builds share artifacts with the tests).
profile := env("MM_PROFILE", "debug")
target_dir := env("CARGO_TARGET_DIR", justfile_directory() / "target")
compose := env("MM_COMPOSE", "podman-compose")

# List the recipes.
default:
    @just --list

# Install what is missing (nats-server, redis-server, podman + runc, podman-compose, promtool). Idempotent.
setup:
    @bash .ci/setup

# Build every binary of the workspace.
build:
    cargo build --workspace --bins {{ if profile == "release" { "--release" } else { "" } }}

# Run the backend in the foreground: nats-server, redis-server, matchmaker, orchestrator, gateway.
dev *args: setup build
    {{ target_dir }}/{{ profile }}/mmctl dev {{ args }}

# `dev` plus a harness run (default 1,000 players for 60 s), then the run report.
demo players="1000" duration="60s" *args: setup
    cargo build --workspace --bins --release
    {{ target_dir }}/release/mmctl demo --players {{ players }} --duration {{ duration }} {{ args }}

# The static release build of every service binary (what the FROM scratch images hold).
# One cargo call for all of them: building a subset would unify features differently and
# rebuild the rest next time. `--target` keeps it apart from the normal build.
static-build:
    RUSTFLAGS='-C target-feature=+crt-static' cargo build --release \
        --target "$(rustc -vV | sed -n 's/^host: //p')" \
        -p gateway -p matchmaker -p orchestrator -p harness -p game-server

# The game-server image (`localhost/mm/game-server:latest`) the orchestrator's Podman driver runs.
image: static-build
    bash podman/build-images game-server

# Every image `just up` runs, built without a registry: the services FROM scratch around static
# binaries, nats-server, redis and prometheus around this host's programs (podman/build-images).
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

# The benchmarks (release builds): every crate's `[[bench]]` target prints its figures and ratios.
bench *args: setup image
    # Benchmarks that start the real services need their release binaries.
    cargo build --release --workspace --bins
    cargo bench --workspace {{ args }}

# Format check and clippy with warnings as errors.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# Format the code.
fmt:
    cargo fmt --all

# Show what the local services say about themselves (/healthz of each).
status:
    {{ target_dir }}/{{ profile }}/mmctl status

# The full stack under compose (compose.yaml): nats, redis, gateway, matchmakers, orchestrator
# (game servers on your Podman), harness, Prometheus, and Grafana where its image can be pulled.
up *args: setup images
    #!/usr/bin/env bash
    set -euo pipefail
    source podman/compose-env
    profiles=()
    if podman image exists "$MM_GRAFANA_IMAGE" || timeout 120 podman pull -q "$MM_GRAFANA_IMAGE" >/dev/null 2>&1; then
        profiles=(--profile grafana)
    else
        echo "just up: $MM_GRAFANA_IMAGE cannot be pulled here (no registry?): running without Grafana"
    fi
    {{ compose }} -f compose.yaml "${profiles[@]}" up -d {{ args }}
    echo
    echo "gateway     http://127.0.0.1:${MM_GATEWAY_PORT:-8080} (players: http://$MM_HOST_IP:${MM_GATEWAY_PORT:-8080})"
    echo "prometheus  http://127.0.0.1:${MM_PROMETHEUS_PORT:-9090}"
    [ ${#profiles[@]} -gt 0 ] && echo "grafana     http://127.0.0.1:${MM_GRAFANA_PORT:-3000}"
    echo "nats        nats://127.0.0.1:${MM_NATS_PORT:-4222} (no credentials: the operator; try \`nats micro ls\`)"
    echo "game servers on $MM_PODMAN_SOCKET; \`just logs\`, \`just ps\`, \`just down\`"

# Stop the compose stack and remove its containers (volumes stay; `just down -v` removes them too).
down *args:
    #!/usr/bin/env bash
    set -euo pipefail
    source podman/compose-env --quiet
    {{ compose }} -f compose.yaml --profile grafana down {{ args }}

# Follow the compose stack's logs (all services, or the ones named).
logs *services:
    #!/usr/bin/env bash
    set -euo pipefail
    source podman/compose-env --quiet
    {{ compose }} -f compose.yaml logs -f {{ services }}

# List the compose stack's containers.
ps:
    #!/usr/bin/env bash
    set -euo pipefail
    source podman/compose-env --quiet
    {{ compose }} -f compose.yaml --profile grafana ps
