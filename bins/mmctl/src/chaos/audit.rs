//! The audit after a chaos run: what Redis, KV `servers` and the driver say, read from
//! outside (none of the services is asked), checked against the invariants of
//! `docs/ARCHITECTURE.md`.
//!
//! [`Snapshot`] is one reading of all three; [`check`] lists each invariant's offenders
//! in it (a pure function); [`persistent`] keeps only the offenders that stayed through
//! the last stretch of readings, since the live view converges (KV `servers` agrees with
//! the driver within 10 s) and a reading of several keys is not atomic.
//!
//! Redis is read by key pattern, not by queue name, so every queue counts: tickets are
//! `ticket:*`; queues are the sorted sets `queue:*`; a lease is the set `lease:<batch>`,
//! live while its batch id is in one of the sorted sets `leases:*` (a lease set no
//! `leases:*` names would never be reaped, so its tickets count as lost); matches are
//! `match:*`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;

/// The invariants, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    LostTickets,
    QueuedAndLeased,
    TwoMatches,
    StatusDisagrees,
    Uncommitted,
    EntryWithoutServer,
    ServerWithoutEntry,
}

impl Invariant {
    pub const ALL: [Invariant; 7] = [
        Invariant::LostTickets,
        Invariant::QueuedAndLeased,
        Invariant::TwoMatches,
        Invariant::StatusDisagrees,
        Invariant::Uncommitted,
        Invariant::EntryWithoutServer,
        Invariant::ServerWithoutEntry,
    ];

    /// The table's first column.
    pub fn describe(self) -> &'static str {
        match self {
            Invariant::LostTickets => "lost tickets (searching, neither queued nor leased)",
            Invariant::QueuedAndLeased => "tickets both queued and leased",
            Invariant::TwoMatches => "tickets in two matches",
            Invariant::StatusDisagrees => "tickets whose status disagrees with their match",
            Invariant::Uncommitted => "servers running with no committed match",
            Invariant::EntryWithoutServer => "`servers` entries with no server",
            Invariant::ServerWithoutEntry => "servers with no `servers` entry",
        }
    }
}

/// A ticket as stored (`ticket:{id}`), the fields the audit needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TicketRecord {
    pub id: String,
    pub status: String,
    pub match_id: Option<String>,
    pub server: Option<GameRef>,
}

/// `{"gameId": ...}` inside a ticket or a match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GameRef {
    pub game_id: String,
}

/// A match as stored (`match:{id}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MatchRecord {
    pub id: String,
    pub ticket_ids: Vec<String>,
    pub server: GameRef,
}

/// A `servers` entry; `state` stays text, so states added later (`warm`) read too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EntryRecord {
    pub game_id: String,
    pub match_id: String,
    pub node: String,
    pub state: String,
    pub started_at: u64,
}

/// A game server the driver runs (a running container of the node, or a game-server
/// child process of the orchestrator).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunningServer {
    pub game_id: String,
    /// When it started, if the driver says (Unix ms).
    pub started_at: Option<u64>,
    /// What the driver calls it: a container name, `pid 1234`.
    pub handle: String,
}

/// One reading of Redis, KV `servers` and the driver.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Unix ms when the reading ended.
    pub at_ms: u64,
    pub tickets: BTreeMap<String, TicketRecord>,
    /// Ticket id → the queues (`queue:*`) it is in.
    pub queued: BTreeMap<String, Vec<String>>,
    /// Ticket id → the live leases (`lease:<batch>` named in a `leases:*`) it is in.
    pub leased: BTreeMap<String, Vec<String>>,
    /// Ticket id → lease sets no `leases:*` names (never reaped).
    pub stranded: BTreeMap<String, Vec<String>>,
    pub matches: Vec<MatchRecord>,
    pub entries: Vec<EntryRecord>,
    pub servers: Vec<RunningServer>,
}

/// Offenders of one invariant: a stable key (a ticket or game id) → what is wrong.
pub type Offenders = BTreeMap<String, Offense>;

/// What is wrong with one offender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offense {
    pub what: String,
    /// How old the server is (`Uncommitted` only; `None`: unknown).
    pub age: Option<Duration>,
}

impl std::fmt::Display for Offense {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

/// Each invariant's offenders in `snapshot`.
///
/// `Uncommitted` lists every allocated server (not `warm`) whose game is no committed
/// match's, young or old, with its age in the text: the caller keeps the ones older than
/// the join timeout at the end ([`old_enough`]), since a young one may still end itself.
pub fn check(snapshot: &Snapshot) -> BTreeMap<Invariant, Offenders> {
    let mut found: BTreeMap<Invariant, Offenders> =
        Invariant::ALL.iter().map(|invariant| (*invariant, Offenders::new())).collect();
    let mut add = |invariant: Invariant, key: &str, what: String| {
        found.entry(invariant).or_default().insert(key.to_owned(), Offense { what, age: None });
    };

    for (id, ticket) in &snapshot.tickets {
        if ticket.status != "searching" {
            continue;
        }
        let queued = snapshot.queued.get(id).filter(|queues| !queues.is_empty());
        let leased = snapshot.leased.get(id).filter(|leases| !leases.is_empty());
        match (queued, leased) {
            (None, None) => {
                let stranded = snapshot
                    .stranded
                    .get(id)
                    .map(|leases| format!(" (in {}, which no `leases:*` names)", leases.join(", ")))
                    .unwrap_or_default();
                add(Invariant::LostTickets, id, format!("ticket {id}: searching{stranded}"));
            }
            (Some(queues), Some(leases)) => add(
                Invariant::QueuedAndLeased,
                id,
                format!("ticket {id}: in {} and {}", queues.join(", "), leases.join(", ")),
            ),
            _ => {}
        }
    }

    let mut in_matches: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for record in &snapshot.matches {
        for ticket_id in &record.ticket_ids {
            in_matches.entry(ticket_id.as_str()).or_default().push(record.id.as_str());
        }
    }
    for (ticket_id, matches) in &in_matches {
        if matches.len() > 1 {
            add(
                Invariant::TwoMatches,
                ticket_id,
                format!("ticket {ticket_id}: in matches {}", matches.join(", ")),
            );
        }
    }

    for record in &snapshot.matches {
        for ticket_id in &record.ticket_ids {
            let Some(ticket) = snapshot.tickets.get(ticket_id) else {
                add(
                    Invariant::StatusDisagrees,
                    ticket_id,
                    format!("ticket {ticket_id}: gone, but match {} lists it", record.id),
                );
                continue;
            };
            let game = ticket.server.as_ref().map(|server| server.game_id.as_str());
            if ticket.status != "matched"
                || ticket.match_id.as_deref() != Some(record.id.as_str())
                || game != Some(record.server.game_id.as_str())
            {
                add(
                    Invariant::StatusDisagrees,
                    ticket_id,
                    format!(
                        "ticket {ticket_id}: {} (match {}, game {}), but match {} (game {}) lists it",
                        ticket.status,
                        ticket.match_id.as_deref().unwrap_or("none"),
                        game.unwrap_or("none"),
                        record.id,
                        record.server.game_id
                    ),
                );
            }
        }
    }
    let match_ids: BTreeSet<&str> = snapshot.matches.iter().map(|record| record.id.as_str()).collect();
    for (id, ticket) in &snapshot.tickets {
        if ticket.status != "matched" {
            continue;
        }
        let listed = ticket.match_id.as_deref().is_some_and(|match_id| {
            match_ids.contains(match_id)
                && in_matches.get(id.as_str()).is_some_and(|matches| matches.contains(&match_id))
        });
        if !listed {
            add(
                Invariant::StatusDisagrees,
                id,
                format!(
                    "ticket {id}: matched to {}, which does not list it",
                    ticket
                        .match_id
                        .as_deref()
                        .map_or_else(|| "no match".to_owned(), |m| format!("match {m}"))
                ),
            );
        }
    }

    let committed: BTreeSet<&str> =
        snapshot.matches.iter().map(|record| record.server.game_id.as_str()).collect();
    let entries: BTreeMap<&str, &EntryRecord> =
        snapshot.entries.iter().map(|entry| (entry.game_id.as_str(), entry)).collect();
    let running: BTreeMap<&str, &RunningServer> =
        snapshot.servers.iter().map(|server| (server.game_id.as_str(), server)).collect();
    let age = |started_at: Option<u64>| {
        started_at.filter(|at| *at > 0).map(|at| Duration::from_millis(snapshot.at_ms.saturating_sub(at)))
    };
    let mut uncommitted: BTreeMap<&str, (Option<Duration>, String)> = BTreeMap::new();
    for entry in &snapshot.entries {
        let final_state = matches!(entry.state.as_str(), "complete" | "failed" | "lost");
        if entry.state == "warm" || entry.match_id.is_empty() || final_state {
            continue;
        }
        if !committed.contains(entry.game_id.as_str()) {
            uncommitted.insert(
                entry.game_id.as_str(),
                (age(Some(entry.started_at)), format!("match {}, {}", entry.match_id, entry.state)),
            );
        }
    }
    for server in &snapshot.servers {
        let warm = entries.get(server.game_id.as_str()).is_some_and(|entry| entry.state == "warm");
        if !warm && !committed.contains(server.game_id.as_str()) {
            uncommitted
                .entry(server.game_id.as_str())
                .or_insert_with(|| (age(server.started_at), format!("no entry, {}", server.handle)));
        }
    }
    let mut aged = Offenders::new();
    for (game_id, (age, what)) in uncommitted {
        let told = age.map_or_else(|| "age unknown".to_owned(), |age| format!("{}s old", age.as_secs()));
        aged.insert(game_id.to_owned(), Offense { what: format!("game {game_id}: {what}, {told}"), age });
    }

    for entry in &snapshot.entries {
        if !running.contains_key(entry.game_id.as_str()) {
            add(
                Invariant::EntryWithoutServer,
                &entry.game_id,
                format!("game {}: {} on node {}, nothing runs it", entry.game_id, entry.state, entry.node),
            );
        }
    }
    for server in &snapshot.servers {
        if !entries.contains_key(server.game_id.as_str()) {
            add(
                Invariant::ServerWithoutEntry,
                &server.game_id,
                format!("game {}: {} runs, no entry", server.game_id, server.handle),
            );
        }
    }
    found.insert(Invariant::Uncommitted, aged);
    found
}

/// The offenders that stayed: those in every reading of the last `persist` before the
/// last reading (and in the one just before that stretch, so that it spans `persist`
/// when the readings allow). `readings` are (Unix ms, offenders), oldest first.
pub fn persistent(readings: &[(u64, Offenders)], persist: Duration) -> Offenders {
    let Some((last_at, last)) = readings.last() else { return Offenders::new() };
    let since = last_at.saturating_sub(u64::try_from(persist.as_millis()).unwrap_or(u64::MAX));
    let first = readings.iter().rposition(|(at, _)| *at <= since).unwrap_or(0);
    let mut kept = last.clone();
    for (_, offenders) in &readings[first..] {
        kept.retain(|key, _| offenders.contains_key(key));
    }
    kept
}

/// Of the `Uncommitted` offenders, those at least `after` old (or of unknown age).
pub fn old_enough(offenders: &Offenders, after: Duration) -> Offenders {
    offenders
        .iter()
        .filter(|(_, offense)| offense.age.is_none_or(|age| age >= after))
        .map(|(key, offense)| (key.clone(), offense.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(id: &str, status: &str, matched: Option<(&str, &str)>) -> (String, TicketRecord) {
        (
            id.to_owned(),
            TicketRecord {
                id: id.to_owned(),
                status: status.to_owned(),
                match_id: matched.map(|(m, _)| m.to_owned()),
                server: matched.map(|(_, g)| GameRef { game_id: g.to_owned() }),
            },
        )
    }

    fn record(id: &str, game: &str, tickets: &[&str]) -> MatchRecord {
        MatchRecord {
            id: id.to_owned(),
            ticket_ids: tickets.iter().map(|t| (*t).to_owned()).collect(),
            server: GameRef { game_id: game.to_owned() },
        }
    }

    fn entry(game: &str, match_id: &str, state: &str, started_at: u64) -> EntryRecord {
        EntryRecord {
            game_id: game.to_owned(),
            match_id: match_id.to_owned(),
            node: "n1".to_owned(),
            state: state.to_owned(),
            started_at,
        }
    }

    fn server(game: &str) -> RunningServer {
        RunningServer { game_id: game.to_owned(), started_at: None, handle: format!("mm-{game}") }
    }

    fn keys(found: &BTreeMap<Invariant, Offenders>, invariant: Invariant) -> Vec<&str> {
        found[&invariant].keys().map(String::as_str).collect()
    }

    /// A healthy run: one match with its tickets, one ticket queued, one leased, one
    /// cancelled ticket left nowhere, a running committed server and a warm one.
    fn healthy() -> Snapshot {
        Snapshot {
            at_ms: 100_000,
            tickets: BTreeMap::from([
                ticket("t1", "matched", Some(("m1", "g1"))),
                ticket("t2", "matched", Some(("m1", "g1"))),
                ticket("t3", "searching", None),
                ticket("t4", "searching", None),
                ticket("t5", "cancelled", None),
            ]),
            queued: BTreeMap::from([("t3".to_owned(), vec!["queue:default".to_owned()])]),
            leased: BTreeMap::from([("t4".to_owned(), vec!["lease:b1".to_owned()])]),
            stranded: BTreeMap::new(),
            matches: vec![record("m1", "g1", &["t1", "t2"])],
            entries: vec![entry("g1", "m1", "running", 90_000), entry("gw", "", "warm", 10_000)],
            servers: vec![server("g1"), server("gw")],
        }
    }

    #[test]
    fn a_healthy_snapshot_breaks_nothing() {
        let found = check(&healthy());
        assert_eq!(found.len(), Invariant::ALL.len());
        assert!(found.values().all(BTreeMap::is_empty), "{found:#?}");
    }

    #[test]
    fn ticket_invariants_name_their_offenders() {
        let mut snapshot = healthy();
        // Lost: searching, nowhere; and one in a lease nothing will reap.
        snapshot.tickets.extend([ticket("t6", "searching", None), ticket("t7", "searching", None)]);
        snapshot.stranded.insert("t7".to_owned(), vec!["lease:old".to_owned()]);
        // Both queued and leased.
        snapshot.queued.insert("t4".to_owned(), vec!["queue:default".to_owned()]);
        // In two matches; and a third match whose ticket says otherwise.
        snapshot.matches.push(record("m2", "g2", &["t2"]));
        snapshot
            .tickets
            .extend([ticket("t8", "searching", None), ticket("t9", "matched", Some(("m9", "g9")))]);
        snapshot.queued.insert("t8".to_owned(), vec!["queue:default".to_owned()]);
        snapshot.matches.push(record("m3", "g3", &["t8", "gone"]));
        let found = check(&snapshot);
        assert_eq!(keys(&found, Invariant::LostTickets), ["t6", "t7"]);
        assert!(found[&Invariant::LostTickets]["t7"].what.contains("lease:old"), "{found:#?}");
        assert_eq!(keys(&found, Invariant::QueuedAndLeased), ["t4"]);
        assert_eq!(keys(&found, Invariant::TwoMatches), ["t2"]);
        assert_eq!(keys(&found, Invariant::StatusDisagrees), ["gone", "t2", "t8", "t9"]);
        assert!(found[&Invariant::StatusDisagrees]["t9"].what.contains("does not list it"));
        assert!(found[&Invariant::StatusDisagrees]["gone"].what.contains("gone"));
    }

    #[test]
    fn server_invariants_compare_kv_the_driver_and_the_matches() {
        let mut snapshot = healthy();
        // Allocated for a match never committed: an entry and its server.
        snapshot.entries.push(entry("g5", "m5", "running", 60_000));
        snapshot.servers.push(server("g5"));
        // An entry nothing runs, a server with no entry (and no committed match).
        snapshot.entries.push(entry("g6", "m1x", "starting", 99_000));
        snapshot.servers.push(RunningServer { started_at: Some(95_000), ..server("g7") });
        let found = check(&snapshot);
        assert_eq!(keys(&found, Invariant::Uncommitted), ["g5", "g6", "g7"]);
        assert!(found[&Invariant::Uncommitted]["g5"].what.ends_with("40s old"), "{found:#?}");
        assert_eq!(found[&Invariant::Uncommitted]["g5"].age, Some(Duration::from_secs(40)));
        assert_eq!(keys(&found, Invariant::EntryWithoutServer), ["g6"]);
        assert_eq!(keys(&found, Invariant::ServerWithoutEntry), ["g7"]);
        // Only the old ones count against the join timeout.
        let old = old_enough(&found[&Invariant::Uncommitted], Duration::from_secs(25));
        assert_eq!(old.keys().collect::<Vec<_>>(), ["g5"]);
    }

    #[test]
    fn only_offenders_that_stay_are_declared() {
        let reading = |keys: &[&str]| -> Offenders {
            keys.iter()
                .map(|key| ((*key).to_owned(), Offense { what: format!("{key} is wrong"), age: None }))
                .collect()
        };
        let readings = vec![
            (0, reading(&["a", "b", "c"])),
            (4_000, reading(&["a", "b", "c", "d"])),
            (9_000, reading(&["a", "c", "d"])),
            (15_000, reading(&["a", "d", "e"])),
        ];
        // The last 10 s start at 5 s: the 4 s reading is the one before that stretch.
        let kept = persistent(&readings, Duration::from_secs(10));
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["a", "d"]);
        assert_eq!(persistent(&readings[..1], Duration::from_secs(10)).len(), 3, "one reading: all of it");
        assert!(persistent(&[], Duration::from_secs(10)).is_empty());
    }
}
