//! Scale-out: instances find each other in NATS, share a fleet target, obey one control.
//!
//! - **Membership.** Each instance puts its [`HarnessInstance`] under its id in the KV
//!   bucket `harness` on every heartbeat, and deletes it when it stops. Every instance
//!   watches the bucket; an instance not heard from for `fleet.stale_after` (by the
//!   watcher's own clock, so clock skew between machines does not matter) counts as gone,
//!   and the leader (the lowest live id) deletes its entry. The bucket's `max_age` also
//!   expires entries nobody refreshes, so a fleet that is gone leaves nothing behind.
//! - **Control.** `harness.control` messages ([`HarnessControl`]) are applied by every
//!   instance in the order NATS delivers them. The merged state is kept in the bucket
//!   under [`buckets::HARNESS_CONTROL_KEY`] (written by the leader), so a late joiner
//!   starts from it. A joiner subscribes before it reads the state, so nothing published
//!   in between is lost (applying a message twice changes nothing).
//! - **Division.** A fleet target is divided among the live instances deterministically:
//!   ids sorted, each gets `target / n`, and the first `target % n` get one more. Every
//!   instance computes the same split from the same membership, so no coordination is
//!   needed; while views differ (for a heartbeat or so after a join) the total is off by
//!   at most one instance's share.
//! - **Plan.** A fleet plan (`stages`, [`FleetPlan`]) sets the fleet target from its
//!   start on, on the wall clock: every instance computes the plan's point at `now -
//!   startedAtMs` every [`STEP`] while it ramps and divides that. Its start travels in
//!   the control state, so a late joiner comes in at the same point. What the instance
//!   followed goes into its report ([`Fleet::run`]'s result).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{Config as KvConfig, Entry, Operation, Store, Watch, WatcherError};
use futures_util::StreamExt;
use mm_shared::protocol::{HarnessControl, HarnessInstance, HarnessStats, buckets, subjects};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Rate, Rates};
use crate::player::Context;
use crate::scenario::{SCENARIOS, Scenario};
use crate::stages::{FleetPlan, FleetStageReport, Followed, STEP};

/// Bucket `max_age`, as a multiple of `stale_after`, when this instance creates it.
const MAX_AGE_FACTOR: u32 = 3;
/// Deadline of one KV operation.
const KV_TIMEOUT: Duration = Duration::from_secs(5);
/// Fleet plans a run remembers for its report (the latest ones).
const MAX_FOLLOWED: usize = 50;

/// What the instance should be doing now.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Players to keep alive.
    pub target: u64,
    pub rates: [Rate; SCENARIOS],
    /// The fleet target, when one is set: `fleetTarget`, or where the fleet plan is now.
    pub fleet_target: Option<u64>,
    /// Live instances this one knows of (itself included).
    pub instances: usize,
}

impl Settings {
    /// An instance on its own: its configured players and rates.
    pub fn standalone(players: u64, rates: Rates) -> Self {
        Self { target: players, rates: rates.to_array(), fleet_target: None, instances: 1 }
    }
}

/// Why the instance could not join the fleet.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "cannot open or create the KV bucket `{bucket}`: {reason} (is JetStream enabled on the NATS server?)"
    )]
    Bucket { bucket: &'static str, reason: String },
    #[error("cannot subscribe to {subject}: {reason}")]
    Subscribe { subject: &'static str, reason: String },
}

/// This instance's share of `fleet_target` among `members` (sorted ids, itself included).
pub fn share_of(fleet_target: u64, members: &[&str], me: &str) -> u64 {
    let count = members.len().max(1) as u64;
    let position = members.iter().position(|member| *member == me).unwrap_or(0) as u64;
    let base = fleet_target / count;
    let remainder = fleet_target % count;
    base + u64::from(position < remainder)
}

/// The rates a control state asks for, on top of the configured ones.
pub fn rates_with(configured: Rates, control: &HarnessControl) -> [Rate; SCENARIOS] {
    rates_over(configured.to_array(), control)
}

/// The rates a control state asks for, on top of `own` (the configured ones, or a stage's).
pub fn rates_over(own: [Rate; SCENARIOS], control: &HarnessControl) -> [Rate; SCENARIOS] {
    let mut rates = own;
    if let Some(changes) = &control.rates {
        for (name, per_second) in changes {
            if let (Some(scenario), Some(rate)) = (Scenario::from_name(name), Rate::per_second(*per_second)) {
                rates[scenario.index()] = rate;
            }
        }
    }
    rates
}

/// Checks a control message before anything of it is applied (the same check `mmctl
/// fleet` makes before it sends one, and a plan's start against this clock, `now_ms`).
pub fn check_control(control: &HarnessControl, now_ms: u64) -> Result<(), String> {
    control.check_at(now_ms)
}

/// What an instance with `own` target and rates runs under a control state and the fleet
/// plan it follows, at `now_ms`: (this instance's target, its rates, the fleet target).
///
/// The plan (once started) decides the fleet target, over `fleetTarget`; a fleet target
/// is divided among `members`, and without one the instance runs its own target. Rates:
/// its own, then the control `rates`, then the plan's current stage's.
pub fn settle(
    own: (u64, [Rate; SCENARIOS]),
    control: &HarnessControl,
    plan: Option<&FleetPlan>,
    members: &[&str],
    me: &str,
    now_ms: u64,
) -> (u64, [Rate; SCENARIOS], Option<u64>) {
    let rates = rates_over(own.1, control);
    let point = plan.and_then(|plan| plan.point(rates, now_ms));
    let fleet_target = point.map(|point| point.target).or(control.fleet_target);
    let target = fleet_target.map_or(own.0, |fleet_target| share_of(fleet_target, members, me));
    (target, point.map_or(rates, |point| point.rates), fleet_target)
}

/// What the fleet loop needs to know about this instance.
pub struct Member {
    pub instance: String,
    pub host: String,
    pub started_at: u64,
}

/// A handle for publishing stats from outside the fleet loop.
#[derive(Clone)]
pub struct StatsPublisher {
    nats: async_nats::Client,
    subject: String,
}

impl StatsPublisher {
    pub async fn publish(&self, stats: &HarnessStats) {
        match serde_json::to_vec(stats) {
            Ok(payload) => {
                if let Err(err) = self.nats.publish(self.subject.clone(), payload.into()).await {
                    tracing::debug!("publishing stats: {err}");
                }
            }
            Err(err) => tracing::warn!("encoding stats: {err}"),
        }
    }
}

/// The fleet as this instance sees it.
pub struct Fleet {
    nats: async_nats::Client,
    kv: Store,
    member: Member,
    context: Arc<Context>,
    settings: watch::Sender<Settings>,
    control_messages: async_nats::Subscriber,
    control: HarnessControl,
    /// The fleet plan followed now (from `control.stages`).
    plan: Option<FleetPlan>,
    /// Its stage when last computed (to log stage changes).
    plan_stage: Option<usize>,
    /// Every fleet plan followed in this run (the report's), the latest last.
    followed: Vec<Followed>,
    /// Other live instances: id → when last heard of (by this instance's clock).
    others: BTreeMap<String, Instant>,
    /// Whether the last heartbeat failed (log the change, not every failure).
    heartbeat_failing: bool,
    /// Whether the last attempt to watch the bucket failed (same).
    watch_failing: bool,
}

impl Fleet {
    /// Joins: opens (or creates) the bucket, subscribes to control, reads the control
    /// state, and registers.
    pub async fn join(
        nats: async_nats::Client,
        member: Member,
        context: Arc<Context>,
        settings: watch::Sender<Settings>,
    ) -> Result<(Self, StatsPublisher), JoinError> {
        let config = &context.config.fleet;
        let jetstream = async_nats::jetstream::new(nats.clone());
        // 3 copies when NATS is a cluster of three or more (so losing a server loses no
        // member and no control state), 1 otherwise.
        let replicas = mm_shared::nats::kv_replicas(&nats, mm_shared::config::Replicas::Auto);
        let kv = open_bucket(&jetstream, config.stale_after * MAX_AGE_FACTOR, replicas).await?;
        let control_messages = nats.subscribe(subjects::HARNESS_CONTROL).await.map_err(|err| {
            JoinError::Subscribe { subject: subjects::HARNESS_CONTROL, reason: err.to_string() }
        })?;
        let mut control = HarnessControl::default();
        let now = mm_shared::protocol::now_ms();
        match tokio::time::timeout(KV_TIMEOUT, kv.get(buckets::HARNESS_CONTROL_KEY)).await {
            Ok(Ok(Some(value))) => match serde_json::from_slice::<HarnessControl>(&value) {
                Ok(mut state) if check_control(&state, now).is_ok() => {
                    // The leader stores plans with their start; this is only a fallback.
                    state.stamp(now);
                    control = state;
                }
                _ => tracing::warn!("ignoring the unreadable fleet control state in the bucket"),
            },
            Ok(Ok(None)) => {}
            Ok(Err(err)) => tracing::warn!("reading the fleet control state: {err}"),
            Err(_) => tracing::warn!("reading the fleet control state: no answer within {KV_TIMEOUT:?}"),
        }
        if control != HarnessControl::default() {
            tracing::info!(control = %serde_json::to_string(&control).unwrap_or_default(), "joined with the fleet's control state");
        }
        let publisher =
            StatsPublisher { nats: nats.clone(), subject: subjects::harness_stats(&member.instance) };
        let mut fleet = Self {
            nats,
            kv,
            member,
            context,
            settings,
            control_messages,
            control,
            plan: None,
            plan_stage: None,
            followed: Vec::new(),
            others: BTreeMap::new(),
            heartbeat_failing: false,
            watch_failing: false,
        };
        fleet.follow_plan(now);
        fleet.recompute();
        fleet.heartbeat().await;
        Ok((fleet, publisher))
    }

    /// Follows the fleet until `stop`, then leaves (deletes this instance's entry), and
    /// returns the stages of the fleet plans it followed, in the time of the run that
    /// started at `member.started_at` (for the report).
    ///
    /// Losing the bucket watch (it cannot start, or it ends) does not end the loop: the
    /// instance keeps heartbeating, so the others still count it, and after each
    /// heartbeat it tries to watch again (for at most a heartbeat period, so a server
    /// that never answers delays the next heartbeat by no more than that).
    pub async fn run(mut self, stop: CancellationToken) -> Vec<FleetStageReport> {
        let mut watch = self.watch().await;
        let mut heartbeat = tokio::time::interval(self.context.config.fleet.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut plan_clock = tokio::time::interval(STEP);
        plan_clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Only while the fleet plan can still move the target (one more tick after
            // its end computes its last point).
            let plan_moving =
                self.plan.as_ref().is_some_and(|plan| plan.moving(mm_shared::protocol::now_ms()));
            tokio::select! {
                () = stop.cancelled() => break,
                message = self.control_messages.next() => match message {
                    Some(message) => self.on_control(&message.payload).await,
                    None => break,
                },
                entry = next_entry(&mut watch), if watch.is_some() => match entry {
                    Some(Ok(entry)) => self.on_entry(&entry),
                    Some(Err(err)) => tracing::warn!("watching the harness bucket: {err}"),
                    None => {
                        tracing::warn!("the harness bucket watch ended; watching again on the next heartbeat");
                        watch = None;
                    }
                },
                // The stage plan moved this instance's own target or rates.
                () = self.context.own.changed.notified() => self.recompute(),
                _ = plan_clock.tick(), if plan_moving => self.recompute(),
                _ = heartbeat.tick() => {
                    self.expire_stale().await;
                    self.heartbeat().await;
                    if watch.is_none() {
                        watch = self.watch().await;
                    }
                }
            }
        }
        self.leave().await;
        let now = mm_shared::protocol::now_ms();
        if let Some(last) = self.followed.last_mut() {
            last.until_ms.get_or_insert(now);
        }
        crate::stages::fleet_report(&self.followed, self.member.started_at)
    }

    /// Starts watching the bucket (its history first); `None` when that fails or takes
    /// longer than a heartbeat period (warned about once, until it works again).
    async fn watch(&mut self) -> Option<Watch> {
        let timeout = self.context.config.fleet.heartbeat.min(KV_TIMEOUT);
        let failure = match tokio::time::timeout(timeout, self.kv.watch_with_history(">")).await {
            Ok(Ok(watch)) => {
                if std::mem::take(&mut self.watch_failing) {
                    tracing::info!("watching the harness bucket again");
                }
                return Some(watch);
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {timeout:?}"),
        };
        if !std::mem::replace(&mut self.watch_failing, true) {
            tracing::warn!(
                "cannot watch the harness bucket: {failure} (trying again after each heartbeat; \
                 membership changes are missed meanwhile)"
            );
        }
        None
    }

    async fn on_control(&mut self, payload: &[u8]) {
        let mut change = match serde_json::from_slice::<HarnessControl>(payload) {
            Ok(change) => change,
            Err(err) => {
                metrics::counter!("mm_harness_control_messages_total", "result" => "rejected").increment(1);
                tracing::warn!(
                    "ignoring a harness.control message that is not valid JSON of the right shape: {err}"
                );
                return;
            }
        };
        let now = mm_shared::protocol::now_ms();
        if let Err(reason) = check_control(&change, now) {
            metrics::counter!("mm_harness_control_messages_total", "result" => "rejected").increment(1);
            tracing::warn!("ignoring a harness.control message: {reason}");
            return;
        }
        // A plan without a start starts when it arrives (by this instance's clock).
        change.stamp(now);
        metrics::counter!("mm_harness_control_messages_total", "result" => "applied").increment(1);
        self.control.apply(&change);
        tracing::info!(control = %String::from_utf8_lossy(payload), "applied a harness.control message");
        if change.reset || change.stages.is_some() {
            self.follow_plan(now);
        }
        self.recompute();
        if self.is_leader() {
            self.save_control().await;
        }
    }

    fn on_entry(&mut self, entry: &Entry) {
        if entry.key == buckets::HARNESS_CONTROL_KEY || entry.key == self.member.instance {
            return;
        }
        let changed = match entry.operation {
            Operation::Delete | Operation::Purge => self.others.remove(&entry.key).is_some(),
            Operation::Put => {
                // History (entries older than the watch) may be from instances that died:
                // judge them by the server's timestamp. Live updates are fresh by definition
                // (and judging them by timestamps would make clock skew matter).
                let age = if entry.seen_current { Duration::ZERO } else { age_of(entry) };
                let stale_after = self.context.config.fleet.stale_after;
                if age >= stale_after {
                    false
                } else {
                    let seen = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                    self.others.insert(entry.key.clone(), seen).is_none()
                }
            }
        };
        if changed {
            tracing::info!(instances = self.others.len() + 1, "fleet membership changed");
            self.recompute();
        }
    }

    /// Forgets instances not heard from for `stale_after`; the leader also deletes them.
    async fn expire_stale(&mut self) {
        let stale_after = self.context.config.fleet.stale_after;
        let stale: Vec<String> = self
            .others
            .iter()
            .filter(|(_, seen)| seen.elapsed() >= stale_after)
            .map(|(id, _)| id.clone())
            .collect();
        if stale.is_empty() {
            return;
        }
        for id in &stale {
            self.others.remove(id);
            tracing::warn!(instance = %id, "harness instance stopped heartbeating; giving its players to the others");
        }
        if self.is_leader() {
            for id in &stale {
                let _ = tokio::time::timeout(KV_TIMEOUT, self.kv.delete(id)).await;
            }
        }
        self.recompute();
    }

    fn members(&self) -> Vec<&str> {
        let mut members: Vec<&str> = self.others.keys().map(String::as_str).collect();
        members.push(&self.member.instance);
        members.sort_unstable();
        members
    }

    fn is_leader(&self) -> bool {
        self.members().first().is_some_and(|first| *first == self.member.instance)
    }

    /// Takes up the control state's plan (none after a reset) as of `now_ms`; the plan
    /// followed so far, if another, ends there.
    fn follow_plan(&mut self, now_ms: u64) {
        let plan = self.control.stages.as_ref().map(|plan| FleetPlan::from_control(plan, now_ms));
        if plan == self.plan {
            // The same plan again (a message applied twice): nothing changes.
            return;
        }
        if let Some(last) = self.followed.last_mut() {
            last.until_ms.get_or_insert(now_ms);
        }
        if let Some(plan) = &plan {
            tracing::info!(
                stages = plan.stages.len(),
                starts_in_ms = plan.started_at_ms.saturating_sub(now_ms),
                started_ms_ago = now_ms.saturating_sub(plan.started_at_ms),
                "following a fleet plan"
            );
            if self.followed.len() == MAX_FOLLOWED {
                self.followed.remove(0);
            }
            self.followed.push(Followed { plan: plan.clone(), until_ms: None });
        } else if self.plan.is_some() {
            tracing::info!("the fleet plan was reset");
        }
        self.plan = plan;
        self.plan_stage = None;
    }

    /// Recomputes this instance's target and rates and passes them on.
    fn recompute(&mut self) {
        let now = mm_shared::protocol::now_ms();
        // `players`, or where this instance's own stage plan is now.
        let own = (self.context.own.target(), self.context.own.rates());
        let (settings, instances) = {
            let members = self.members();
            let (target, rates, fleet_target) =
                settle(own, &self.control, self.plan.as_ref(), &members, &self.member.instance, now);
            (Settings { target, rates, fleet_target, instances: members.len() }, members.len())
        };
        let (rates, fleet_target) = (settings.rates, settings.fleet_target);
        let stage = self.plan.as_ref().and_then(|plan| Some((plan, plan.point(rates, now)?.stage)));
        if let Some((plan, stage)) = stage
            && self.plan_stage != Some(stage)
        {
            tracing::info!(
                stage = stage + 1,
                of = plan.stages.len(),
                fleet_players = plan.stages[stage].players,
                duration = %mm_shared::duration::format(plan.stages[stage].duration),
                "fleet stage starting"
            );
            self.plan_stage = Some(stage);
        }
        metrics::gauge!("mm_harness_fleet_instances").set(instances as f64);
        metrics::gauge!("mm_harness_fleet_target").set(fleet_target.unwrap_or(0) as f64);
        // Under a fleet plan the target moves every step of a ramp: its stages are logged.
        let quiet = self.plan.is_some();
        self.settings.send_if_modified(|current| {
            if *current == settings {
                return false;
            }
            if current.target != settings.target && quiet {
                tracing::debug!(
                    target = settings.target,
                    instances = settings.instances,
                    "player target changed"
                );
            } else if current.target != settings.target {
                tracing::info!(
                    target = settings.target,
                    instances = settings.instances,
                    "player target changed"
                );
            }
            *current = settings;
            true
        });
    }

    async fn heartbeat(&mut self) {
        let entry = HarnessInstance {
            instance: self.member.instance.clone(),
            host: self.member.host.clone(),
            pid: std::process::id(),
            version: mm_shared::VERSION.to_owned(),
            gateway: self.context.gateway.url().as_str().to_owned(),
            started_at: self.member.started_at,
            heartbeat_at: mm_shared::protocol::now_ms(),
            target: self.settings.borrow().target,
            players: self.context.pool.alive(),
        };
        if let Ok(value) = serde_json::to_vec(&entry) {
            let failure = match tokio::time::timeout(
                KV_TIMEOUT,
                self.kv.put(&self.member.instance, value.into()),
            )
            .await
            {
                Ok(Ok(_)) => None,
                Ok(Err(err)) => Some(err.to_string()),
                Err(_) => Some(format!("no answer within {KV_TIMEOUT:?}")),
            };
            match (failure, self.heartbeat_failing) {
                (Some(reason), false) => {
                    tracing::warn!(
                        "heartbeat failed: {reason} (the other instances will count this one out)"
                    );
                    self.heartbeat_failing = true;
                }
                (None, true) => {
                    tracing::info!("heartbeat works again");
                    self.heartbeat_failing = false;
                }
                _ => {}
            }
        }
        if self.is_leader() {
            self.save_control().await;
        }
    }

    /// Writes the control state for late joiners (the leader's job; refreshed on every
    /// heartbeat so the bucket's `max_age` does not expire it while the fleet lives).
    async fn save_control(&self) {
        if let Ok(value) = serde_json::to_vec(&self.control) {
            match tokio::time::timeout(KV_TIMEOUT, self.kv.put(buckets::HARNESS_CONTROL_KEY, value.into()))
                .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => tracing::warn!("saving the fleet control state: {err}"),
                Err(_) => tracing::warn!("saving the fleet control state: no answer within {KV_TIMEOUT:?}"),
            }
        }
    }

    async fn leave(&self) {
        match tokio::time::timeout(KV_TIMEOUT, self.kv.delete(&self.member.instance)).await {
            Ok(Ok(())) => tracing::info!(instance = %self.member.instance, "left the fleet"),
            Ok(Err(err)) => tracing::warn!("leaving the fleet: {err}"),
            Err(_) => tracing::warn!("leaving the fleet: no answer within {KV_TIMEOUT:?}"),
        }
        let _ = tokio::time::timeout(KV_TIMEOUT, self.nats.flush()).await;
    }
}

/// The next entry of the watch; never ready without one (the caller guards on `is_some`).
async fn next_entry(watch: &mut Option<Watch>) -> Option<Result<Entry, WatcherError>> {
    match watch {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
}

/// How old an entry is by the server's timestamp and this machine's clock.
fn age_of(entry: &Entry) -> Duration {
    let created_ms = entry.created.unix_timestamp_nanos() / 1_000_000;
    let now_ms = i128::from(mm_shared::protocol::now_ms());
    Duration::from_millis(u64::try_from((now_ms - created_ms).max(0)).unwrap_or(u64::MAX))
}

/// Opens the `harness` bucket, creating it when missing (two instances racing to create
/// it both succeed: creating an identical stream is idempotent, and a loser re-opens).
async fn open_bucket(
    jetstream: &async_nats::jetstream::Context,
    max_age: Duration,
    replicas: usize,
) -> Result<Store, JoinError> {
    let config = KvConfig {
        bucket: buckets::HARNESS.to_owned(),
        description: "harness instances (key = instance id) and the fleet control state".to_owned(),
        history: 1,
        max_age,
        num_replicas: replicas,
        ..KvConfig::default()
    };
    mm_shared::nats::ensure_kv_bucket(jetstream, config, KV_TIMEOUT)
        .await
        .map_err(|err| JoinError::Bucket { bucket: buckets::HARNESS, reason: err.to_string() })
}

pub fn describe_metrics() {
    metrics::describe_gauge!(
        "mm_harness_fleet_instances",
        "Live harness instances this one knows of, itself included."
    );
    metrics::describe_gauge!(
        "mm_harness_fleet_target",
        "The fleet target set over harness.control: fleetTarget, or where the fleet plan is now (0: none)."
    );
    metrics::describe_counter!(
        "mm_harness_control_messages_total",
        "harness.control messages received, by result (applied, rejected)."
    );
    // Present at 0 before the first message, so a dashboard shows "none" rather than "no data".
    for result in ["applied", "rejected"] {
        metrics::counter!("mm_harness_control_messages_total", "result" => result).increment(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_fleet_target_is_divided_deterministically() {
        let members = ["a", "b", "c"];
        let shares: Vec<u64> = members.iter().map(|me| share_of(50_000, &members, me)).collect();
        assert_eq!(shares, vec![16_667, 16_667, 16_666]);
        let shares: Vec<u64> = members.iter().map(|me| share_of(2, &members, me)).collect();
        assert_eq!(shares, vec![1, 1, 0], "the remainder goes to the first ids");
        assert_eq!(share_of(50_000, &["x"], "x"), 50_000);
        for target in [0, 1, 7, 99, 50_000] {
            let total: u64 = members.iter().map(|me| share_of(target, &members, me)).sum();
            assert_eq!(total, target, "shares add up to the target");
        }
    }

    #[test]
    fn control_rates_override_the_configured_ones() {
        let control = HarnessControl {
            rates: Some(BTreeMap::from([("matchmaking".to_owned(), 0.5)])),
            ..HarnessControl::default()
        };
        let rates = rates_with(Rates::default(), &control);
        assert_eq!(rates[Scenario::Matchmaking.index()].as_per_second(), 0.5);
        assert_eq!(rates[Scenario::Logout.index()], Rates::default().logout);
    }

    #[test]
    fn a_fleet_plan_is_divided_and_comes_first() {
        use crate::stages::Stage;
        let start = 1_700_000_000_000;
        let mut spike = Stage { duration: Duration::from_secs(1), players: 10, rates: BTreeMap::new() };
        spike.rates.insert(Scenario::Matchmaking, Rate::per_second(2.0).expect("rate"));
        let hold = Stage { duration: Duration::from_secs(3), players: 6, rates: BTreeMap::new() };
        let ramp = Stage { duration: Duration::from_secs(2), players: 6, rates: BTreeMap::new() };
        let plan = FleetPlan { started_at_ms: start, stages: vec![ramp, hold, spike] };
        let control = HarnessControl {
            fleet_target: Some(100),
            rates: Some(BTreeMap::from([("matchmaking".to_owned(), 0.5), ("logout".to_owned(), 0.25)])),
            ..HarnessControl::default()
        };
        let own = (7, Rates::default().to_array());
        let members = ["a", "b", "c"];
        let shares = |ms: u64| -> Vec<u64> {
            members.iter().map(|me| settle(own, &control, Some(&plan), &members, me, start + ms).0).collect()
        };
        assert_eq!(shares(3000), [2, 2, 2], "the hold: 6 fleet players");
        assert_eq!(shares(6000), [4, 3, 3], "after the spike: 10, the remainder to the first id");
        assert_eq!(shares(5500), [3, 3, 2], "half way up the spike: 8");
        let (_, rates, fleet_target) = settle(own, &control, Some(&plan), &members, "a", start + 5500);
        assert_eq!(fleet_target, Some(8), "the plan comes before fleetTarget");
        assert_eq!(rates[Scenario::Matchmaking.index()].as_per_second(), 2.0, "the stage's rate first");
        assert_eq!(rates[Scenario::Logout.index()].as_per_second(), 0.25, "then the control's");
        assert_eq!(rates[Scenario::Login.index()], Rates::default().login, "then its own");
        let (_, rates, _) = settle(own, &control, Some(&plan), &members, "a", start + 3000);
        assert_eq!(rates[Scenario::Matchmaking.index()].as_per_second(), 0.5, "the hold names no rate");
        // Before the plan starts, and without one: fleetTarget; without either: its own.
        assert_eq!(settle(own, &control, Some(&plan), &members, "a", start - 1).2, Some(100));
        assert_eq!(settle(own, &control, None, &members, "a", start).0, 34);
        assert_eq!(settle(own, &HarnessControl::default(), None, &members, "a", start).0, 7);
    }

    #[test]
    fn bad_control_messages_are_refused_whole() {
        let unknown = HarnessControl {
            rates: Some(BTreeMap::from([("dance".to_owned(), 0.5)])),
            ..HarnessControl::default()
        };
        assert!(check_control(&unknown, 0).expect_err("unknown").contains("unknown scenario `dance`"));
        let negative = HarnessControl {
            rates: Some(BTreeMap::from([("logout".to_owned(), -1.0)])),
            ..HarnessControl::default()
        };
        assert!(check_control(&negative, 0).expect_err("negative").contains("at least 0"));
        assert!(
            check_control(&HarnessControl { fleet_target: Some(5), ..HarnessControl::default() }, 0).is_ok()
        );
    }
}
