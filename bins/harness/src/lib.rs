//! The load harness: simulated players against the gateway, driven by a compositor and
//! controlled as a fleet over NATS.
//!
//! | module | does |
//! |---|---|
//! | [`config`] | `[harness]` and its sub-tables; exact rates; validation |
//! | [`compositor`] | pure: rates × idle players × elapsed → executions; dispatch; starvation |
//! | [`pool`] | alive/target counts and the idle queue players park in |
//! | [`player`] | one task per player: login → idle ⇄ scenario → follow-ups → idle |
//! | [`population`] | pure: each player's hidden true skill and home region; each attempt's queue, party size, latencies |
//! | [`quality`] | match quality per queue and wait, rating convergence (Spearman) |
//! | [`scenarios`] | what each scenario does against the gateway |
//! | [`http`] | the one shared HTTP client |
//! | [`stats`] | counters and HDR histograms; the stats message; Prometheus |
//! | [`fleet`] | KV membership, heartbeat, `harness.control`, target division |
//! | [`stages`] | load shapes: the stage plan (ramp, hold, spike) the target follows |
//! | [`run`] | a run's loops (spawner, compositor clock, stats), drain and stop |
//! | [`report`] | the JSON report, the human table, thresholds |
//! | [`timeline`] | the run over time (bounded samples) and the distributions, for the charts |
//! | [`report_html`] | the self-contained HTML report with charts |
//! | [`progress`] | the live line on a terminal |
//!
//! The binary (`main.rs`) is a thin layer over [`run::Run`]; tests and benchmarks use the
//! same API in-process.

#![deny(unsafe_code)]

pub mod compositor;
pub mod config;
pub mod fleet;
pub mod http;
pub mod player;
pub mod pool;
pub mod population;
pub mod progress;
pub mod quality;
pub mod report;
pub mod report_html;
pub mod run;
pub mod scenario;
pub mod scenarios;
pub mod stages;
pub mod stats;
pub mod timeline;
