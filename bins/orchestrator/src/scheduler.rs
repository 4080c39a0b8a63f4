//! Placement: which node runs the next game server. Pure: no I/O, no clock, no Podman.
//!
//! In the style of Nomad's scheduler, a pipeline of two stages over the nodes' KV entries:
//!
//! 1. **Feasibility** ([`check`]): filters applied in order — the node is live (fresh
//!    heartbeat), its driver is healthy, it is below its server limit, the ask fits in its
//!    free CPU and memory, it has a free port. A node that fails is counted under the
//!    first filter it fails, so "nothing fits" can say why:
//!    `3 nodes: 2 out of memory, 1 out of ports`.
//! 2. **Ranking** ([`rank`]): nodes with warm servers first (an allocation there claims
//!    one in milliseconds), then bin-packing by default (the node that is fullest after
//!    the placement wins, so whole nodes stay free for big asks and idle nodes can go), or
//!    spread (the emptiest wins). Ties go to the smaller node id, so a ranking is
//!    deterministic.
//!
//! A node with warm servers fits whatever its capacity says: its warm servers hold their
//! resources already (the pool counts against capacity), and a claim needs no more.
//!
//! The ranking is advice read from KV, which lags: the chosen node re-checks its own
//! books ([`crate::ledger`]) and may refuse, and the allocator then asks the next one.

use std::collections::BTreeMap;
use std::fmt;

use mm_shared::protocol::{NodeEntry, Resources};
use serde::{Deserialize, Serialize};

/// What one game server needs from its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub cpu_millicores: u64,
    pub memory_mb: u64,
}

impl Ask {
    /// The resources a placed server holds (`servers` is 1).
    pub fn resources(self) -> Resources {
        Resources { cpu_millicores: self.cpu_millicores, memory_mb: self.memory_mb, servers: 1 }
    }
}

/// How the nodes that fit are ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Fullest node first (Nomad's default).
    #[default]
    Binpack,
    /// Emptiest node first.
    Spread,
}

/// The feasibility filters, in the order they are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Filter {
    /// The match asks for a region some live node declares, and this node is elsewhere.
    Region,
    /// No heartbeat within the node timeout.
    Down,
    /// Its driver (Podman, or the game-server binary) does not work.
    DriverUnhealthy,
    /// It runs as many servers as it may.
    MaxServers,
    Cpu,
    Memory,
    Ports,
}

impl Filter {
    /// Every filter, in the order they are applied.
    pub const ALL: [Filter; 7] = [
        Self::Region,
        Self::Down,
        Self::DriverUnhealthy,
        Self::MaxServers,
        Self::Cpu,
        Self::Memory,
        Self::Ports,
    ];

    /// How the filter reads in "3 nodes: 2 out of memory".
    pub fn describe(self) -> &'static str {
        match self {
            Self::Region => "in another region",
            Self::Down => "down",
            Self::DriverUnhealthy => "driver unhealthy",
            Self::MaxServers => "at max servers",
            Self::Cpu => "out of cpu",
            Self::Memory => "out of memory",
            Self::Ports => "out of ports",
        }
    }

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Region => "region",
            Self::Down => "down",
            Self::DriverUnhealthy => "driver_unhealthy",
            Self::MaxServers => "max_servers",
            Self::Cpu => "cpu",
            Self::Memory => "memory",
            Self::Ports => "ports",
        }
    }
}

/// How many ports an inclusive range holds.
pub fn port_count((low, high): (u16, u16)) -> u64 {
    if high < low { 0 } else { u64::from(high - low) + 1 }
}

/// Does `ask` fit on this node's books? (The checks a node also applies to itself.)
pub fn fits(capacity: Resources, used: Resources, ports_free: u64, ask: Ask) -> Result<(), Filter> {
    if used.servers.saturating_add(1) > capacity.servers {
        return Err(Filter::MaxServers);
    }
    if used.cpu_millicores.saturating_add(ask.cpu_millicores) > capacity.cpu_millicores {
        return Err(Filter::Cpu);
    }
    if used.memory_mb.saturating_add(ask.memory_mb) > capacity.memory_mb {
        return Err(Filter::Memory);
    }
    if ports_free == 0 {
        return Err(Filter::Ports);
    }
    Ok(())
}

/// Runs the filters over one node at time `now` (Unix ms).
pub fn check(node: &NodeEntry, ask: Ask, now: u64, node_timeout_ms: u64) -> Result<(), Filter> {
    if now.saturating_sub(node.heartbeat_at) > node_timeout_ms {
        return Err(Filter::Down);
    }
    if !node.driver_healthy {
        return Err(Filter::DriverUnhealthy);
    }
    if node.warm > 0 {
        return Ok(());
    }
    let ports_free = port_count(node.port_range).saturating_sub(node.ports_used);
    fits(node.capacity, node.used, ports_free, ask)
}

/// A node that fits, with its score (higher is better).
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub node: String,
    pub score: f64,
    /// It has warm servers (ranked before every node without).
    pub warm: bool,
}

/// Why no node can take the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoPlacement {
    /// How many nodes were considered.
    pub nodes: usize,
    /// Nodes rejected, by the first filter they failed.
    pub rejected: BTreeMap<Filter, usize>,
    /// What unhealthy drivers said, `node: status` (a few at most).
    pub notes: Vec<String>,
}

impl fmt::Display for NoPlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes == 0 {
            return f.write_str("no orchestrator node is registered (is an orchestrator running?)");
        }
        let plural = if self.nodes == 1 { "" } else { "s" };
        write!(f, "no node can run a game server: {} node{plural}: ", self.nodes)?;
        let reasons: Vec<String> =
            self.rejected.iter().map(|(filter, count)| format!("{count} {}", filter.describe())).collect();
        f.write_str(&reasons.join(", "))?;
        if !self.notes.is_empty() {
            write!(f, " ({})", self.notes.join("; "))?;
        }
        Ok(())
    }
}

impl std::error::Error for NoPlacement {}

/// How many unhealthy drivers' statuses a [`NoPlacement`] quotes.
const MAX_NOTES: usize = 3;

/// The region placement keeps to: `wanted` when a live node declares it; otherwise none
/// (no node serves that region, or nodes declare no regions at all: one region, anywhere).
pub fn region_in_force<'a>(
    wanted: Option<&'a str>,
    nodes: &[NodeEntry],
    now: u64,
    node_timeout_ms: u64,
) -> Option<&'a str> {
    let wanted = wanted.filter(|region| !region.is_empty())?;
    let live = |node: &NodeEntry| now.saturating_sub(node.heartbeat_at) <= node_timeout_ms;
    nodes.iter().any(|node| node.region == wanted && live(node)).then_some(wanted)
}

/// Filters and ranks `nodes` for `ask` at time `now` (Unix ms): the best node first. With
/// a `region` in force ([`region_in_force`]) only that region's nodes qualify.
pub fn rank(
    ask: Ask,
    nodes: &[NodeEntry],
    now: u64,
    node_timeout_ms: u64,
    algorithm: Algorithm,
    region: Option<&str>,
) -> Result<Vec<Ranked>, NoPlacement> {
    let mut rejected = BTreeMap::new();
    let mut notes = Vec::new();
    let mut ranked = Vec::new();
    for node in nodes {
        let checked = match region {
            Some(region) if node.region != region => Err(Filter::Region),
            _ => check(node, ask, now, node_timeout_ms),
        };
        match checked {
            Ok(()) => ranked.push(Ranked {
                node: node.node.clone(),
                score: score(node, ask, algorithm),
                warm: node.warm > 0,
            }),
            Err(filter) => {
                *rejected.entry(filter).or_insert(0) += 1;
                if filter == Filter::DriverUnhealthy && notes.len() < MAX_NOTES {
                    notes.push(format!("{}: {}", node.node, node.driver_status));
                }
            }
        }
    }
    if ranked.is_empty() {
        return Err(NoPlacement { nodes: nodes.len(), rejected, notes });
    }
    ranked.sort_by(|a, b| {
        b.warm.cmp(&a.warm).then_with(|| b.score.total_cmp(&a.score)).then_with(|| a.node.cmp(&b.node))
    });
    Ok(ranked)
}

/// The node's fullness after placing `ask`, averaged over CPU, memory and server count
/// (each 0..=1), as bin-packing wants it; spread turns it around.
fn score(node: &NodeEntry, ask: Ask, algorithm: Algorithm) -> f64 {
    let after = |used: u64, want: u64, capacity: u64| -> f64 {
        if capacity == 0 { 1.0 } else { (used.saturating_add(want)) as f64 / capacity as f64 }
    };
    let fullness = (after(node.used.cpu_millicores, ask.cpu_millicores, node.capacity.cpu_millicores)
        + after(node.used.memory_mb, ask.memory_mb, node.capacity.memory_mb)
        + after(node.used.servers, 1, node.capacity.servers))
        / 3.0;
    match algorithm {
        Algorithm::Binpack => fullness,
        Algorithm::Spread => 1.0 - fullness,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const ASK: Ask = Ask { cpu_millicores: 100, memory_mb: 64 };
    const NOW: u64 = 1_000_000;
    const TIMEOUT: u64 = 5_000;

    pub(crate) fn node(id: &str, capacity: (u64, u64, u64), used: (u64, u64, u64)) -> NodeEntry {
        NodeEntry {
            node: id.to_owned(),
            driver: "process".to_owned(),
            driver_healthy: true,
            capacity: Resources { cpu_millicores: capacity.0, memory_mb: capacity.1, servers: capacity.2 },
            used: Resources { cpu_millicores: used.0, memory_mb: used.1, servers: used.2 },
            port_range: (20000, 20099),
            ports_used: used.2,
            heartbeat_at: NOW,
            started_at: 0,
            driver_status: "ok".to_owned(),
            ..NodeEntry::default()
        }
    }

    fn order(ranked: &[Ranked]) -> Vec<&str> {
        ranked.iter().map(|r| r.node.as_str()).collect()
    }

    #[test]
    fn binpack_prefers_the_fuller_node_and_spread_the_emptier() {
        let nodes = [
            node("empty", (1000, 1024, 10), (0, 0, 0)),
            node("half", (1000, 1024, 10), (500, 512, 5)),
            node("almost", (1000, 1024, 10), (800, 900, 8)),
        ];
        let binpack = rank(ASK, &nodes, NOW, TIMEOUT, Algorithm::Binpack, None).expect("fits");
        assert_eq!(order(&binpack), ["almost", "half", "empty"]);
        let spread = rank(ASK, &nodes, NOW, TIMEOUT, Algorithm::Spread, None).expect("fits");
        assert_eq!(order(&spread), ["empty", "half", "almost"]);
    }

    #[test]
    fn nodes_with_warm_servers_come_first_and_fit_when_full() {
        let mut warm = node("warm", (1000, 1024, 10), (0, 0, 0));
        warm.warm = 2;
        let mut full_but_warm = node("full-warm", (1000, 1024, 2), (1000, 1024, 2));
        full_but_warm.warm = 1;
        full_but_warm.ports_used = 100;
        let nodes = [node("almost", (1000, 1024, 10), (800, 900, 8)), warm, full_but_warm.clone()];
        for algorithm in [Algorithm::Binpack, Algorithm::Spread] {
            let ranked = rank(ASK, &nodes, NOW, TIMEOUT, algorithm, None).expect("fits");
            assert_eq!(order(&ranked)[2], "almost", "{algorithm:?}: warm nodes first");
            assert!(ranked[0].warm && ranked[1].warm && !ranked[2].warm);
        }
        assert_eq!(check(&full_but_warm, ASK, NOW, TIMEOUT), Ok(()), "its warm servers hold their room");
        // A warm node that is down or sick is still out.
        let mut down = full_but_warm.clone();
        down.heartbeat_at = NOW - TIMEOUT - 1;
        assert_eq!(check(&down, ASK, NOW, TIMEOUT), Err(Filter::Down));
        let mut sick = full_but_warm;
        sick.driver_healthy = false;
        assert_eq!(check(&sick, ASK, NOW, TIMEOUT), Err(Filter::DriverUnhealthy));
    }

    #[test]
    fn ties_go_to_the_smaller_node_id() {
        let nodes = [node("b", (1000, 1024, 10), (0, 0, 0)), node("a", (1000, 1024, 10), (0, 0, 0))];
        assert_eq!(
            order(&rank(ASK, &nodes, NOW, TIMEOUT, Algorithm::Binpack, None).expect("fits")),
            ["a", "b"]
        );
    }

    #[test]
    fn each_filter_rejects_what_it_should() {
        let mut down = node("down", (1000, 1024, 10), (0, 0, 0));
        down.heartbeat_at = NOW - TIMEOUT - 1;
        let mut sick = node("sick", (1000, 1024, 10), (0, 0, 0));
        sick.driver_healthy = false;
        sick.driver_status = "podman is not answering".to_owned();
        let busy = node("busy", (1000, 1024, 2), (0, 0, 2));
        let cpu = node("cpu", (1000, 1024, 10), (950, 0, 1));
        let memory = node("memory", (1000, 1024, 10), (0, 1000, 1));
        let mut ports = node("ports", (1000, 1024, 200), (0, 0, 0));
        ports.ports_used = 100;
        let cases = [
            (&down, Filter::Down),
            (&sick, Filter::DriverUnhealthy),
            (&busy, Filter::MaxServers),
            (&cpu, Filter::Cpu),
            (&memory, Filter::Memory),
            (&ports, Filter::Ports),
        ];
        for (node, filter) in cases {
            assert_eq!(check(node, ASK, NOW, TIMEOUT), Err(filter), "{}", node.node);
        }
        // A heartbeat exactly at the timeout still counts as live.
        let mut edge = node("edge", (1000, 1024, 10), (0, 0, 0));
        edge.heartbeat_at = NOW - TIMEOUT;
        assert_eq!(check(&edge, ASK, NOW, TIMEOUT), Ok(()));
    }

    #[test]
    fn an_exact_fit_fits() {
        let full_after = node("n", (1000, 1024, 10), (900, 960, 9));
        assert_eq!(check(&full_after, ASK, NOW, TIMEOUT), Ok(()));
    }

    #[test]
    fn a_region_keeps_placement_in_it_when_a_live_node_serves_it() {
        let in_region = |id: &str, region: &str, used: u64| {
            let mut entry = node(id, (1000, 1024, 10), (used, used, 1));
            entry.region = region.to_owned();
            entry
        };
        // The emptiest node is in another region; bin-packing alone would pick `eu-2`.
        let nodes = [in_region("eu-1", "eu", 100), in_region("us-1", "us", 0), in_region("eu-2", "eu", 500)];
        let region = region_in_force(Some("us"), &nodes, NOW, TIMEOUT);
        assert_eq!(region, Some("us"));
        let ranked = rank(ASK, &nodes, NOW, TIMEOUT, Algorithm::Binpack, region).expect("fits");
        assert_eq!(order(&ranked), ["us-1"]);

        // The region's only node is down: nobody serves it, so anywhere (bin-packing).
        let mut down = nodes.clone();
        down[1].heartbeat_at = NOW - TIMEOUT - 1;
        assert_eq!(region_in_force(Some("us"), &down, NOW, TIMEOUT), None);
        // A region no node declares, or no region at all: anywhere.
        assert_eq!(region_in_force(Some("ap"), &nodes, NOW, TIMEOUT), None);
        assert_eq!(region_in_force(None, &nodes, NOW, TIMEOUT), None);

        // In force and full: the refusal says the others are elsewhere.
        let mut full = nodes.clone();
        full[1].used.memory_mb = 1024;
        let refusal = rank(ASK, &full, NOW, TIMEOUT, Algorithm::Binpack, Some("us")).expect_err("full");
        assert_eq!(
            refusal.to_string(),
            "no node can run a game server: 3 nodes: 2 in another region, 1 out of memory"
        );
    }

    #[test]
    fn the_refusal_says_why_per_filter() {
        let nodes = [node("a", (1000, 1024, 10), (0, 1000, 1)), node("b", (1000, 1024, 10), (0, 1000, 1)), {
            let mut full = node("c", (1000, 1024, 500), (0, 0, 0));
            full.ports_used = 100;
            full
        }];
        let refusal = rank(ASK, &nodes, NOW, TIMEOUT, Algorithm::Binpack, None).expect_err("nothing fits");
        assert_eq!(
            refusal.to_string(),
            "no node can run a game server: 3 nodes: 2 out of memory, 1 out of ports"
        );

        let mut sick = node("n1", (1000, 1024, 10), (0, 0, 0));
        sick.driver_healthy = false;
        sick.driver_status = "image localhost/mm/game-server:latest not found".to_owned();
        let refusal = rank(ASK, &[sick], NOW, TIMEOUT, Algorithm::Binpack, None).expect_err("unhealthy");
        assert_eq!(
            refusal.to_string(),
            "no node can run a game server: 1 node: 1 driver unhealthy \
             (n1: image localhost/mm/game-server:latest not found)"
        );
        let none = rank(ASK, &[], NOW, TIMEOUT, Algorithm::Binpack, None).expect_err("no nodes");
        assert!(none.to_string().starts_with("no orchestrator node is registered"), "{none}");
    }

    /// A small, seeded generator: the property tests are reproducible without a dependency.
    pub(crate) struct SplitMix(pub u64);

    impl SplitMix {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// A value in `0..bound` (`bound` > 0).
        pub(crate) fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    fn random_node(rng: &mut SplitMix, id: usize) -> NodeEntry {
        let capacity = (rng.below(4000), rng.below(4096), rng.below(20));
        let used = (rng.below(4000), rng.below(4096), rng.below(20));
        let mut entry = node(&format!("n{id:02}"), capacity, used);
        entry.ports_used = rng.below(120);
        entry.driver_healthy = rng.below(10) != 0;
        entry.heartbeat_at = NOW - rng.below(2 * TIMEOUT);
        entry
    }

    #[test]
    fn property_ranked_nodes_fit_and_rejections_add_up() {
        let mut rng = SplitMix(0x5eed);
        for round in 0..2_000 {
            let nodes: Vec<NodeEntry> =
                (0..rng.below(8) as usize).map(|id| random_node(&mut rng, id)).collect();
            let ask = Ask { cpu_millicores: rng.below(500), memory_mb: rng.below(512) };
            let algorithm = if round % 2 == 0 { Algorithm::Binpack } else { Algorithm::Spread };
            match rank(ask, &nodes, NOW, TIMEOUT, algorithm, None) {
                Ok(ranked) => {
                    for candidate in &ranked {
                        let entry = nodes.iter().find(|n| n.node == candidate.node).expect("known node");
                        // Never over-commit: every ranked node has room for the ask.
                        assert!(
                            entry.used.cpu_millicores + ask.cpu_millicores <= entry.capacity.cpu_millicores
                        );
                        assert!(entry.used.memory_mb + ask.memory_mb <= entry.capacity.memory_mb);
                        assert!(entry.used.servers < entry.capacity.servers);
                        assert!(entry.ports_used < port_count(entry.port_range));
                        assert!(NOW - entry.heartbeat_at <= TIMEOUT && entry.driver_healthy);
                    }
                    let feasible = nodes.iter().filter(|n| check(n, ask, NOW, TIMEOUT).is_ok()).count();
                    assert_eq!(ranked.len(), feasible, "round {round}: every feasible node is ranked");
                    assert!(ranked.windows(2).all(|w| w[0].score >= w[1].score), "round {round}: ordered");
                }
                Err(refusal) => {
                    assert_eq!(refusal.rejected.values().sum::<usize>(), nodes.len(), "round {round}");
                    for (filter, count) in &refusal.rejected {
                        let actual =
                            nodes.iter().filter(|n| check(n, ask, NOW, TIMEOUT) == Err(*filter)).count();
                        assert_eq!(actual, *count, "round {round}: {filter:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn property_binpack_puts_the_fullest_feasible_node_first() {
        let mut rng = SplitMix(42);
        for round in 0..2_000 {
            // Same capacity everywhere, so "fuller" is unambiguous: more of everything used.
            let base = rng.below(500);
            let nodes: Vec<NodeEntry> = (0..2 + rng.below(5) as usize)
                .map(|id| {
                    let extra = rng.below(400);
                    node(
                        &format!("n{id}"),
                        (1000, 1000, 10),
                        (base + extra, base + extra, (base + extra) / 100),
                    )
                })
                .collect();
            let Ok(ranked) = rank(ASK, &nodes, NOW, TIMEOUT, Algorithm::Binpack, None) else { continue };
            let fullest = nodes
                .iter()
                .filter(|n| check(n, ASK, NOW, TIMEOUT).is_ok())
                .map(|n| n.used.cpu_millicores)
                .max()
                .expect("one fits");
            let first = nodes.iter().find(|n| n.node == ranked[0].node).expect("known");
            assert_eq!(first.used.cpu_millicores, fullest, "round {round}");
        }
    }
}
