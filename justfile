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

# The game-server image (`localhost/mm/game-server:latest`): FROM scratch around a static build.
# The orchestrator's Podman driver runs it; the tests and benchmarks build it first.
image:
    #!/usr/bin/env bash
    set -euo pipefail
    triple="$(rustc -vV | sed -n 's/^host: //p')"
    # --target keeps the static build in its own directory: it never invalidates the normal build.
    RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target "$triple" -p game-server
    context="$(mktemp -d)"
    trap 'rm -rf "$context"' EXIT
    strip -o "$context/game-server" "{{ target_dir }}/$triple/release/game-server" 2>/dev/null \
        || cp "{{ target_dir }}/$triple/release/game-server" "$context/game-server"
    previous="$(podman image inspect --format '{{{{.Id}}' localhost/mm/game-server:latest 2>/dev/null || true)"
    podman build --quiet -f podman/Containerfile.scratch --build-arg BIN=game-server \
        -t localhost/mm/game-server:latest "$context" >/dev/null
    # The image it replaced, unless a container still uses it.
    current="$(podman image inspect --format '{{{{.Id}}' localhost/mm/game-server:latest)"
    if [ -n "$previous" ] && [ "$previous" != "$current" ]; then podman rmi "$previous" >/dev/null 2>&1 || true; fi
    echo "image localhost/mm/game-server:latest ($(podman image inspect --format '{{{{.Size}}' localhost/mm/game-server:latest) bytes)"

# Every test in the workspace (real nats-server, redis-server and Podman), then format and lint checks.
test *args: setup image
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

# The full stack with Prometheus and Grafana under podman compose.
up: setup
    {{ compose }} -f compose.yaml up -d --build

# Stop the compose stack.
down:
    {{ compose }} -f compose.yaml down

# Follow the compose stack's logs.
logs *services:
    {{ compose }} -f compose.yaml logs -f {{ services }}

# List the compose stack's containers.
ps:
    {{ compose }} -f compose.yaml ps
