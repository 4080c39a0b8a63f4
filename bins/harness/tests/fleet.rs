//! Scale-out with real processes: harness binaries share a fleet target through a real
//! nats-server, rebalance when one stops or dies, and obey `harness.control`.
//!
//! No gateway is needed: players that cannot log in still count as alive (they keep
//! retrying), and targets, rates and membership are all visible in the `harness` bucket
//! and on `harness.stats.*`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use mm_shared::protocol::{HarnessInstance, HarnessStats, buckets, subjects};
use mm_testkit::{NatsServer, ServiceProcess, free_port};
use serde_json::json;

/// A harness instance with fast fleet timings, pointed at a closed gateway port.
fn harness(nats: &NatsServer, instance: &str, players: u64) -> ServiceProcess {
    harness_with(nats, instance, players, &[])
}

/// [`harness`] with more command-line arguments.
fn harness_with(nats: &NatsServer, instance: &str, players: u64, extra: &[&str]) -> ServiceProcess {
    let admin = format!("127.0.0.1:{}", free_port());
    let gateway = format!("http://127.0.0.1:{}", free_port());
    let players = players.to_string();
    let env = [
        ("MM_NATS__URL", nats.url()),
        ("MM_HARNESS__ADMIN_LISTEN", admin.clone()),
        ("MM_HARNESS__PLAYERS", players),
        ("MM_HARNESS__SPAWN_INTERVAL", "1ms".to_owned()),
        ("MM_HARNESS__FLEET__HEARTBEAT", "200ms".to_owned()),
        ("MM_HARNESS__FLEET__STALE_AFTER", "1500ms".to_owned()),
        ("MM_HARNESS__FLEET__STATS_INTERVAL", "200ms".to_owned()),
        ("MM_HARNESS__PROGRESS", "never".to_owned()),
        // Players never log in here (no gateway); fast retries let them retire quickly.
        ("MM_HARNESS__LOGIN__RETRY_MIN", "100ms".to_owned()),
        ("MM_HARNESS__LOGIN__RETRY_MAX", "300ms".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut args = vec!["--instance", instance, "--gateway", &gateway, "--duration", "5m"];
    args.extend_from_slice(extra);
    let mut process = ServiceProcess::start("harness", &args, &env).expect("harness starts");
    process.wait_healthy(&admin).expect("harness healthy");
    process
}

/// What the test sees of the fleet: the bucket's instances and the latest stats.
struct Observer {
    nats: async_nats::Client,
    kv: async_nats::jetstream::kv::Store,
    stats: async_nats::Subscriber,
    latest: BTreeMap<String, HarnessStats>,
    /// Every stats message heard, by instance: (its target, the fleet target it ran under).
    history: BTreeMap<String, Vec<(u64, Option<u64>)>>,
}

impl Observer {
    async fn connect(nats: &NatsServer) -> Self {
        let client = async_nats::connect(nats.url()).await.expect("nats");
        let stats = client.subscribe(subjects::HARNESS_STATS_ALL).await.expect("subscribe");
        let jetstream = async_nats::jetstream::new(client.clone());
        // The first instance creates the bucket; wait for it.
        let mut kv = None;
        for _ in 0..100 {
            if let Ok(store) = jetstream.get_key_value(buckets::HARNESS).await {
                kv = Some(store);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            nats: client,
            kv: kv.expect("the harness bucket exists"),
            stats,
            latest: BTreeMap::new(),
            history: BTreeMap::new(),
        }
    }

    async fn control(&self, message: serde_json::Value) {
        let payload = serde_json::to_vec(&message).expect("json");
        self.nats.publish(subjects::HARNESS_CONTROL, payload.into()).await.expect("publish");
        self.nats.flush().await.expect("flush");
    }

    /// Instance id → its registration, as the bucket holds it now.
    async fn registered(&self) -> BTreeMap<String, HarnessInstance> {
        let mut registered = BTreeMap::new();
        let keys: Vec<String> = match self.kv.keys().await {
            Ok(keys) => keys.filter_map(|key| async move { key.ok() }).collect().await,
            Err(_) => return registered,
        };
        for key in keys {
            if key == buckets::HARNESS_CONTROL_KEY {
                continue;
            }
            if let Ok(Some(value)) = self.kv.get(&key).await
                && let Ok(entry) = serde_json::from_slice::<HarnessInstance>(&value)
            {
                registered.insert(key, entry);
            }
        }
        registered
    }

    /// Reads stats and the bucket until `check` holds (or 15 s pass: then panics with
    /// what was seen last).
    async fn until(
        &mut self,
        what: &str,
        check: impl Fn(&BTreeMap<String, HarnessInstance>, &BTreeMap<String, HarnessStats>) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let registered = self.registered().await;
            if check(&registered, &self.latest) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let targets: BTreeMap<_, _> =
                    registered.iter().map(|(id, e)| (id.clone(), e.target)).collect();
                let stats: BTreeMap<_, _> =
                    self.latest.iter().map(|(id, s)| (id.clone(), (s.target, s.players.alive))).collect();
                panic!(
                    "timed out waiting until {what}; registered targets {targets:?}, stats (target, alive) {stats:?}"
                );
            }
            let until = tokio::time::Instant::now() + Duration::from_millis(200);
            while let Ok(Some(message)) = tokio::time::timeout_at(until, self.stats.next()).await {
                if let Ok(stats) = serde_json::from_slice::<HarnessStats>(&message.payload) {
                    self.history
                        .entry(stats.instance.clone())
                        .or_default()
                        .push((stats.target, stats.fleet_target));
                    self.latest.insert(stats.instance.clone(), stats);
                }
            }
        }
    }
}

fn targets(registered: &BTreeMap<String, HarnessInstance>) -> Vec<(&str, u64)> {
    registered.iter().map(|(id, entry)| (id.as_str(), entry.target)).collect()
}

fn alive(stats: &BTreeMap<String, HarnessStats>, id: &str) -> u64 {
    stats.get(id).map_or(0, |s| s.players.alive)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_target_is_divided_and_rebalanced_when_instances_come_and_go() {
    let nats = NatsServer::start().expect("nats-server");
    let mut a = harness(&nats, "h-a", 4);
    let mut b = harness(&nats, "h-b", 6);
    let mut fleet = Observer::connect(&nats).await;
    fleet
        .until("each instance runs its own --players", |registered, stats| {
            targets(registered) == [("h-a", 4), ("h-b", 6)]
                && alive(stats, "h-a") == 4
                && alive(stats, "h-b") == 6
        })
        .await;

    fleet.control(json!({"fleetTarget": 21})).await;
    fleet
        .until("21 players are split 11 + 10 (sorted ids, remainder first)", |registered, stats| {
            targets(registered) == [("h-a", 11), ("h-b", 10)]
                && alive(stats, "h-a") == 11
                && alive(stats, "h-b") == 10
        })
        .await;

    // A graceful stop deletes the entry: the survivor takes over at once.
    let status = b.terminate(Duration::from_secs(10)).expect("h-b stops");
    assert!(status.success(), "h-b exits 0 on SIGTERM:\n{}", b.log());
    fleet
        .until("h-a runs all 21 after h-b left", |registered, stats| {
            targets(registered) == [("h-a", 21)] && alive(stats, "h-a") == 21
        })
        .await;

    // A late joiner learns the fleet target from the bucket, not from its own --players.
    let mut c = harness(&nats, "h-c", 1);
    fleet
        .until("the late joiner h-c takes its share of the fleet target", |registered, stats| {
            targets(registered) == [("h-a", 11), ("h-c", 10)] && alive(stats, "h-c") == 10
        })
        .await;

    // A crash leaves the entry behind; it goes stale and the leader removes it.
    c.process().stop_with(libc::SIGKILL, Duration::from_secs(5)).expect("h-c killed");
    fleet
        .until("h-a takes over the dead h-c's share and its entry is gone", |registered, stats| {
            targets(registered) == [("h-a", 21)] && alive(stats, "h-a") == 21
        })
        .await;
    assert!(a.log().contains("stopped heartbeating"), "h-a noticed the crash:\n{}", a.log());

    // Without a fleet target each instance goes back to its own --players.
    fleet.control(json!({"reset": true})).await;
    fleet
        .until("h-a is back at its own 4 players", |registered, stats| {
            targets(registered) == [("h-a", 4)] && alive(stats, "h-a") == 4
        })
        .await;
    let status = a.terminate(Duration::from_secs(10)).expect("h-a stops");
    assert!(status.success(), "h-a exits 0:\n{}", a.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_message_changes_rates_on_every_instance() {
    let nats = NatsServer::start().expect("nats-server");
    let _a = harness(&nats, "r-a", 2);
    let _b = harness(&nats, "r-b", 2);
    let mut fleet = Observer::connect(&nats).await;
    // Rates go through JSON, which need not round-trip the last bit of an f64.
    let rate = |stats: &HarnessStats, scenario: &str| {
        stats.scenarios.get(scenario).map(|s| (s.rate * 1e9).round() / 1e9)
    };
    let per = |seconds: f64| Some((1e9 / seconds).round() / 1e9);
    let both = |stats: &BTreeMap<String, HarnessStats>, check: &dyn Fn(&HarnessStats) -> bool| {
        ["r-a", "r-b"].iter().all(|id| stats.get(*id).is_some_and(check))
    };
    fleet
        .until("both report the seed's rates", |_, stats| {
            both(stats, &|s| rate(s, "matchmaking") == per(300.0) && rate(s, "fetch_store") == per(2700.0))
        })
        .await;

    fleet.control(json!({"rates": {"matchmaking": 0.5, "fetch_store": 0}})).await;
    // Refused whole: one unknown scenario and nothing of it applies.
    fleet.control(json!({"rates": {"dance": 1.0, "logout": 0.25}})).await;
    fleet.control(json!({"rates": {"login": 0.125}})).await;
    fleet
        .until("both apply the valid messages and ignore the bad one", |_, stats| {
            both(stats, &|s| {
                rate(s, "matchmaking") == Some(0.5)
                    && rate(s, "fetch_store") == Some(0.0)
                    && rate(s, "login") == Some(0.125)
                    && rate(s, "logout") == per(1800.0)
            })
        })
        .await;

    fleet.control(json!({"reset": true})).await;
    fleet
        .until("a reset brings back the configured rates", |_, stats| {
            both(stats, &|s| rate(s, "matchmaking") == per(300.0) && rate(s, "login") == Some(0.0))
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_cannot_watch_the_bucket_keeps_heartbeating() {
    // This user may do everything but create a consumer on the bucket: joining (open,
    // put, get) works, watching never does.
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        r#"authorization {
  users = [ { user: plain, password: plain, permissions: {
    publish: { allow: ">", deny: ["$JS.API.CONSUMER.CREATE.KV_harness", "$JS.API.CONSUMER.CREATE.KV_harness.>"] }
    subscribe: ">"
  } } ]
}
no_auth_user: plain
"#,
    )
    .expect("config written");
    let nats = NatsServer::start_with(&["-c", conf.to_str().expect("utf-8 path")]).expect("nats-server");
    let mut blind = harness(&nats, "blind", 1);
    let fleet = Observer::connect(&nats).await;
    // Well past the first failed watch (a heartbeat period here; the client's own
    // request timeout is 5 s) and past `stale_after` (1.5 s).
    tokio::time::sleep(Duration::from_secs(7)).await;
    // By key: listing keys takes a consumer, which this user may not create either.
    let value = fleet.kv.get("blind").await.expect("kv get").expect("registered");
    let entry: HarnessInstance = serde_json::from_slice(&value).expect("an instance entry");
    let age = mm_shared::protocol::now_ms().saturating_sub(entry.heartbeat_at);
    assert!(age < 1500, "the heartbeat stopped {age} ms ago:\n{}", blind.log());
    assert!(blind.process().exited().is_none(), "the harness died:\n{}", blind.log());
    assert!(blind.log().contains("cannot watch the harness bucket"), "{}", blind.log());
}

/// A fleet member with `[[harness.stages]]` follows its plan as its own target; a fleet
/// target set over `harness.control` takes precedence, and without it the plan resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_member_follows_its_plan_under_the_fleet_target() {
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("stages.toml");
    std::fs::write(
        &config,
        "[[harness.stages]]\nduration = \"3s\"\nplayers = 10\n\
         [[harness.stages]]\nduration = \"2s\"\nplayers = 10\n\
         [[harness.stages]]\nduration = \"1m\"\nplayers = 10\n",
    )
    .expect("config written");
    let admin = format!("127.0.0.1:{}", free_port());
    let gateway = format!("http://127.0.0.1:{}", free_port());
    let env = [
        ("MM_NATS__URL", nats.url()),
        ("MM_HARNESS__ADMIN_LISTEN", admin.clone()),
        ("MM_HARNESS__SPAWN_INTERVAL", "1ms".to_owned()),
        ("MM_HARNESS__FLEET__HEARTBEAT", "200ms".to_owned()),
        ("MM_HARNESS__FLEET__STATS_INTERVAL", "200ms".to_owned()),
        ("MM_HARNESS__PROGRESS", "never".to_owned()),
        ("MM_HARNESS__LOGIN__RETRY_MIN", "100ms".to_owned()),
        ("MM_HARNESS__LOGIN__RETRY_MAX", "300ms".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let config = config.to_str().expect("utf-8").to_owned();
    let args = ["--config", config.as_str(), "--instance", "h-staged", "--gateway", &gateway];
    let mut process = ServiceProcess::start("harness", &args, &env).expect("harness starts");
    process.wait_healthy(&admin).expect("harness healthy");
    let mut fleet = Observer::connect(&nats).await;
    let target = |stats: &BTreeMap<String, HarnessStats>| stats.get("h-staged").map_or(0, |s| s.target);
    fleet.until("the ramp is under way", |_, stats| (1..10).contains(&target(stats))).await;
    fleet.until("the ramp reached 10", |_, stats| target(stats) == 10).await;
    fleet.control(json!({"fleetTarget": 3})).await;
    fleet.until("the fleet target takes precedence", |_, stats| target(stats) == 3).await;
    fleet.control(json!({"reset": true})).await;
    fleet.until("without it, the plan's target again", |_, stats| target(stats) == 10).await;
    drop(process);
}

/// A fleet plan over `harness.control`: two instances ramp, hold and spike on their shares
/// of the plan's players, a third that joins mid-plan comes in at the same point of it,
/// and a report marks the plan's stages in its run's time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_follows_one_plan_of_stages() {
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("p-a.json");
    let report_arg = report.to_str().expect("utf-8").to_owned();
    let mut a = harness_with(&nats, "p-a", 1, &["--report", &report_arg]);
    let _b = harness(&nats, "p-b", 1);
    let mut fleet = Observer::connect(&nats).await;
    fleet
        .until("each runs its own single player", |registered, stats| {
            targets(registered) == [("p-a", 1), ("p-b", 1)]
                && alive(stats, "p-a") == 1
                && alive(stats, "p-b") == 1
        })
        .await;

    // Ramp to 6 fleet players over 2 s, hold 3 s, spike to 10 in 1 s, hold there 20 s.
    let started_at = mm_shared::protocol::now_ms();
    fleet
        .control(json!({"stages": {"startedAtMs": started_at, "stages": [
            {"duration": "2s", "players": 6},
            {"duration": "3s", "players": 6},
            {"duration": "1s", "players": 10, "rates": {"matchmaking": "1/10s"}},
            {"duration": "20s", "players": 10},
        ]}}))
        .await;
    let split = |stats: &BTreeMap<String, HarnessStats>, expected: &[(&str, u64)], fleet_target: u64| {
        expected.iter().all(|(id, share)| {
            stats.get(*id).is_some_and(|s| {
                s.target == *share && s.players.alive == *share && s.fleet_target == Some(fleet_target)
            })
        })
    };
    fleet
        .until("the hold: 6 fleet players, 3 each", |registered, stats| {
            targets(registered) == [("p-a", 3), ("p-b", 3)] && split(stats, &[("p-a", 3), ("p-b", 3)], 6)
        })
        .await;
    let elapsed = mm_shared::protocol::now_ms() - started_at;
    assert!(elapsed < 5000, "the hold was seen in the hold, {elapsed} ms into the plan");
    fleet
        .until("the spike: 10 fleet players, 5 each, with the spike's rate", |registered, stats| {
            targets(registered) == [("p-a", 5), ("p-b", 5)]
                && split(stats, &[("p-a", 5), ("p-b", 5)], 10)
                && stats["p-a"].scenarios.get("matchmaking").is_some_and(|s| s.rate == 0.1)
        })
        .await;

    // A late joiner reads the plan from the bucket and joins at the plan's point (10
    // fleet players), not at its own start (0) nor at its own --players.
    let _c = harness(&nats, "p-c", 1);
    fleet
        .until("the joiner takes its share: 10 = 4 + 3 + 3", |registered, stats| {
            targets(registered) == [("p-a", 4), ("p-b", 3), ("p-c", 3)]
                && split(stats, &[("p-a", 4), ("p-b", 3), ("p-c", 3)], 10)
        })
        .await;
    let joined = mm_shared::protocol::now_ms() - started_at;
    assert!(joined < 26_000, "the joiner came in before the plan's end ({joined} ms)");
    let seen = &fleet.history["p-c"];
    assert!(
        seen.iter().all(|(_, fleet_target)| *fleet_target == Some(10)),
        "every stats message of the joiner ran under the plan's point, 10: {seen:?}"
    );

    // The report of p-a marks the plan's stages in its own run's time.
    let status = a.terminate(Duration::from_secs(10)).expect("p-a stops");
    assert!(status.success(), "p-a exits 0:\n{}", a.log());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report written")).expect("json");
    let run_started_at = report["started_at"].as_u64().expect("started_at");
    let rows = report["fleet_stages"].as_array().expect("fleet_stages");
    // In whole milliseconds: the report's seconds are a division by 1000.
    let starts: Vec<i64> = rows
        .iter()
        .map(|row| (row["start_seconds"].as_f64().expect("start") * 1000.0).round() as i64)
        .collect();
    let plan_start = i64::try_from(started_at).expect("ms") - i64::try_from(run_started_at).expect("ms");
    assert_eq!(starts, [plan_start, plan_start + 2000, plan_start + 5000, plan_start + 6000], "{rows:?}");
    assert!(plan_start > 0, "the plan began after p-a started: {plan_start} ms");
    let players: Vec<u64> = rows.iter().map(|row| row["players"].as_u64().expect("players")).collect();
    assert_eq!(players, [6, 6, 10, 10]);
    assert_eq!(rows[2]["rates"], json!({"matchmaking": 0.1}));
    let last = rows[3]["duration_seconds"].as_f64().expect("duration");
    assert!(last > 0.0 && last < 20.0, "the last stage is cut at the end of the run: {last}");
}
