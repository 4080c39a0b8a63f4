//! A node's own books: what its servers hold and which host ports they use. Pure.
//!
//! The allocator ranks nodes from KV entries that lag; the chosen node checks its ask
//! against these books, under one lock, before it starts anything (Nomad's plan applier
//! in miniature). So a node never commits more than its declared capacity, and never
//! hands one port to two servers, however many allocators race.

use std::collections::{BTreeSet, HashMap};

use mm_shared::protocol::Resources;

use crate::scheduler::{self, Ask, Filter};

/// What one server holds on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holding {
    pub resources: Resources,
    pub port: u16,
}

/// Why a node refused a server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{} ({detail})", filter.describe())]
    Full { filter: Filter, detail: String },
    #[error("game {0} is already placed on this node")]
    Duplicate(String),
}

/// Host ports of one node's dynamic range.
///
/// Ports are handed out round-robin from just after the last one given, so a port that
/// was just freed (and that a client may still be reconnecting to) is the last to be
/// given again.
#[derive(Debug, Clone)]
pub struct PortPool {
    range: (u16, u16),
    in_use: BTreeSet<u16>,
    next: u16,
}

impl PortPool {
    /// A pool that hands out `start` first (then the ports after it).
    pub fn new(range: (u16, u16), start: u16) -> Self {
        let next = if (range.0..=range.1).contains(&start) { start } else { range.0 };
        Self { range, in_use: BTreeSet::new(), next }
    }

    pub fn range(&self) -> (u16, u16) {
        self.range
    }

    /// Ports of the range in use.
    pub fn used(&self) -> u64 {
        self.in_use.range(self.range.0..=self.range.1).count() as u64
    }

    pub fn free(&self) -> u64 {
        scheduler::port_count(self.range).saturating_sub(self.used())
    }

    /// Takes the next free port for which `usable` is true (the caller checks that
    /// nothing else on the host has bound it).
    pub fn take(&mut self, mut usable: impl FnMut(u16) -> bool) -> Option<u16> {
        let (low, high) = self.range;
        let count = scheduler::port_count(self.range);
        let mut port = if (low..=high).contains(&self.next) { self.next } else { low };
        for _ in 0..count {
            let candidate = port;
            port = if port >= high { low } else { port + 1 };
            if !self.in_use.contains(&candidate) && usable(candidate) {
                self.in_use.insert(candidate);
                self.next = port;
                return Some(candidate);
            }
        }
        None
    }

    /// Marks `port` as used (an adopted server's); false if it already was.
    pub fn claim(&mut self, port: u16) -> bool {
        self.in_use.insert(port)
    }

    pub fn release(&mut self, port: u16) {
        self.in_use.remove(&port);
    }
}

/// The node's capacity, what is in use, and who holds it.
#[derive(Debug, Clone)]
pub struct Ledger {
    capacity: Resources,
    used: Resources,
    ports: PortPool,
    holdings: HashMap<String, Holding>,
}

impl Ledger {
    /// Books for a node of `capacity`; its first port is `first_port` (nodes sharing a
    /// host start at different places in the range, so they rarely try the same port).
    pub fn new(capacity: Resources, port_range: (u16, u16), first_port: u16) -> Self {
        Self {
            capacity,
            used: Resources::default(),
            ports: PortPool::new(port_range, first_port),
            holdings: HashMap::new(),
        }
    }

    pub fn capacity(&self) -> Resources {
        self.capacity
    }

    pub fn used(&self) -> Resources {
        self.used
    }

    pub fn port_range(&self) -> (u16, u16) {
        self.ports.range()
    }

    pub fn ports_used(&self) -> u64 {
        self.ports.used()
    }

    /// The games holding resources here.
    pub fn games(&self) -> impl Iterator<Item = String> + '_ {
        self.holdings.keys().cloned()
    }

    #[cfg(test)]
    pub fn holding(&self, game_id: &str) -> Option<Holding> {
        self.holdings.get(game_id).copied()
    }

    /// Reserves `ask` and a port for `game_id`, or says why not.
    pub fn reserve(
        &mut self,
        game_id: &str,
        ask: Ask,
        usable: impl FnMut(u16) -> bool,
    ) -> Result<Holding, Refusal> {
        if self.holdings.contains_key(game_id) {
            return Err(Refusal::Duplicate(game_id.to_owned()));
        }
        scheduler::fits(self.capacity, self.used, self.ports.free(), ask)
            .map_err(|filter| Refusal::Full { filter, detail: self.detail(filter, ask) })?;
        let port = self.ports.take(usable).ok_or_else(|| Refusal::Full {
            filter: Filter::Ports,
            detail: format!(
                "every free port of {}-{} is taken by other programs",
                self.ports.range.0, self.ports.range.1
            ),
        })?;
        let holding = Holding { resources: ask.resources(), port };
        self.add(holding.resources);
        self.holdings.insert(game_id.to_owned(), holding);
        Ok(holding)
    }

    /// Moves `game_id` to another usable port (its port turned out to be taken).
    pub fn change_port(&mut self, game_id: &str, usable: impl FnMut(u16) -> bool) -> Option<u16> {
        let old = self.holdings.get(game_id)?.port;
        let new = self.ports.take(usable)?;
        self.ports.release(old);
        if let Some(holding) = self.holdings.get_mut(game_id) {
            holding.port = new;
        }
        Some(new)
    }

    /// Records a server that is already running (found at start-up). It counts even over
    /// capacity — it exists — but a port cannot be held twice.
    pub fn adopt(&mut self, game_id: &str, holding: Holding) -> Result<(), Refusal> {
        if self.holdings.contains_key(game_id) {
            return Err(Refusal::Duplicate(game_id.to_owned()));
        }
        if !self.ports.claim(holding.port) {
            return Err(Refusal::Full {
                filter: Filter::Ports,
                detail: format!("port {} is held by another server", holding.port),
            });
        }
        self.add(holding.resources);
        self.holdings.insert(game_id.to_owned(), holding);
        Ok(())
    }

    /// Frees what `game_id` held.
    pub fn release(&mut self, game_id: &str) -> Option<Holding> {
        let holding = self.holdings.remove(game_id)?;
        self.ports.release(holding.port);
        self.used.cpu_millicores = self.used.cpu_millicores.saturating_sub(holding.resources.cpu_millicores);
        self.used.memory_mb = self.used.memory_mb.saturating_sub(holding.resources.memory_mb);
        self.used.servers = self.used.servers.saturating_sub(holding.resources.servers);
        Some(holding)
    }

    fn add(&mut self, resources: Resources) {
        self.used.cpu_millicores += resources.cpu_millicores;
        self.used.memory_mb += resources.memory_mb;
        self.used.servers += resources.servers;
    }

    fn detail(&self, filter: Filter, ask: Ask) -> String {
        let (used, capacity) = (self.used, self.capacity);
        match filter {
            Filter::MaxServers => format!("{} of {} servers", used.servers, capacity.servers),
            Filter::Cpu => format!(
                "{} of {} millicores in use, {} asked",
                used.cpu_millicores, capacity.cpu_millicores, ask.cpu_millicores
            ),
            Filter::Memory => {
                format!("{} of {} MB in use, {} asked", used.memory_mb, capacity.memory_mb, ask.memory_mb)
            }
            Filter::Ports => format!("all ports of {}-{} in use", self.ports.range.0, self.ports.range.1),
            Filter::Region | Filter::Down | Filter::DriverUnhealthy => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::{ASK, SplitMix};
    use std::collections::HashSet;

    fn capacity(cpu: u64, memory: u64, servers: u64) -> Resources {
        Resources { cpu_millicores: cpu, memory_mb: memory, servers }
    }

    #[test]
    fn refuses_what_does_not_fit_and_says_why() {
        let mut ledger = Ledger::new(capacity(250, 1024, 10), (30000, 30009), 30000);
        ledger.reserve("g1", ASK, |_| true).expect("first fits");
        ledger.reserve("g2", ASK, |_| true).expect("second fits");
        let refusal = ledger.reserve("g3", ASK, |_| true).expect_err("cpu is full");
        assert_eq!(refusal.to_string(), "out of cpu (200 of 250 millicores in use, 100 asked)");
        assert_eq!(ledger.reserve("g1", ASK, |_| true), Err(Refusal::Duplicate("g1".into())));
        ledger.release("g1").expect("held");
        ledger.reserve("g3", ASK, |_| true).expect("room again");
    }

    #[test]
    fn ports_taken_by_other_programs_are_skipped() {
        let mut ledger = Ledger::new(capacity(10_000, 10_000, 100), (30000, 30002), 30000);
        let holding = ledger.reserve("g1", ASK, |port| port != 30000).expect("a port");
        assert_eq!(holding.port, 30001);
        let refusal = ledger.reserve("g2", ASK, |_| false).expect_err("nothing usable");
        assert!(matches!(refusal, Refusal::Full { filter: Filter::Ports, .. }), "{refusal}");
        assert_eq!(ledger.used().servers, 1, "a refusal holds nothing");
        assert_eq!(ledger.change_port("g1", |_| true), Some(30002));
        assert_eq!(ledger.holding("g1").map(|h| h.port), Some(30002));
    }

    #[test]
    fn a_freed_port_is_the_last_to_come_back() {
        let mut pool = PortPool::new((100, 103), 100);
        let first = pool.take(|_| true).expect("port");
        pool.release(first);
        let next: Vec<u16> = (0..4).filter_map(|_| pool.take(|_| true)).collect();
        assert_eq!(next, [101, 102, 103, 100]);
        assert_eq!(pool.take(|_| true), None);
    }

    #[test]
    fn adopted_servers_count_even_over_capacity_but_not_twice_on_one_port() {
        let mut ledger = Ledger::new(capacity(100, 64, 1), (30000, 30009), 30000);
        let holding = Holding { resources: ASK.resources(), port: 30005 };
        ledger.adopt("old1", holding).expect("adopted");
        ledger.adopt("old2", Holding { port: 30006, ..holding }).expect("adopted over capacity");
        assert_eq!(ledger.used().servers, 2);
        assert!(ledger.adopt("old3", holding).is_err(), "port 30005 is held");
        assert!(ledger.reserve("new", ASK, |_| true).is_err(), "no room for new ones");
    }

    #[test]
    fn property_never_over_commits_never_shares_a_port() {
        let mut rng = SplitMix(7);
        for round in 0..300 {
            let cap = capacity(100 + rng.below(2000), 64 + rng.below(2048), 1 + rng.below(40));
            let low = 20000 + rng.below(100) as u16;
            let range = (low, low + rng.below(50) as u16);
            let first = range.0 + rng.below(u64::from(range.1 - range.0) + 1) as u16;
            let mut ledger = Ledger::new(cap, range, first);
            let mut live: Vec<String> = Vec::new();
            let mut ever_given: HashSet<u16> = HashSet::new();
            for step in 0..400 {
                if !live.is_empty() && rng.below(3) == 0 {
                    let victim = live.swap_remove(rng.below(live.len() as u64) as usize);
                    assert!(ledger.release(&victim).is_some());
                } else {
                    let ask = Ask { cpu_millicores: rng.below(300), memory_mb: rng.below(300) };
                    let taken_outside = rng.below(range.1 as u64 - range.0 as u64 + 1) as u16 + range.0;
                    let game = format!("g{round}-{step}");
                    if let Ok(holding) = ledger.reserve(&game, ask, |port| port != taken_outside) {
                        assert_ne!(holding.port, taken_outside);
                        assert!((range.0..=range.1).contains(&holding.port));
                        ever_given.insert(holding.port);
                        live.push(game);
                    }
                }
                let used = ledger.used();
                assert!(used.cpu_millicores <= cap.cpu_millicores, "round {round}: cpu over-committed");
                assert!(used.memory_mb <= cap.memory_mb, "round {round}: memory over-committed");
                assert!(used.servers <= cap.servers, "round {round}: too many servers");
                let ports: HashSet<u16> =
                    live.iter().map(|g| ledger.holding(g).expect("held").port).collect();
                assert_eq!(ports.len(), live.len(), "round {round}: two live servers share a port");
                assert_eq!(ledger.ports_used(), live.len() as u64);
            }
            for game in live.drain(..) {
                ledger.release(&game);
            }
            assert_eq!(ledger.used(), Resources::default(), "round {round}: everything comes back");
        }
    }
}
