//! Graceful shutdown, shared by every binary.
//!
//! [`on_signals`] returns a token that is cancelled on the first SIGINT or SIGTERM.
//! Every long-running task selects on it, stops taking new work, finishes what it has,
//! and returns; `main` then exits 0. A second signal means "now": the process exits at
//! once with 130, for the operator whose graceful shutdown is taking too long.
//!
//! As PID 1 in a container a process gets no default signal handling, so this is also
//! what makes `podman stop` fast for the game server.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Exit code for a forced exit on the second signal (128 + SIGINT).
pub const FORCED_EXIT_CODE: i32 = 130;

/// Starts listening for SIGINT and SIGTERM; must be called inside a tokio runtime.
pub fn on_signals() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!("{name} received: shutting down (send it again to exit at once)");
        cancel.cancel();
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(FORCED_EXIT_CODE);
    });
    Ok(token)
}
