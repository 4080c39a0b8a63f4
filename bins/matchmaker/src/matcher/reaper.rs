//! The reaper: what keeps tickets moving when a matcher dies or nobody reads them.
//!
//! Every `matcher.reap_interval`, each matchmaker process
//! - returns the tickets of leases past their deadline to the head of the queue (their
//!   matcher crashed or stalled; the attempt counts, so a batch that kills matchers
//!   cannot loop forever). They keep their match id, so their group, popped again,
//!   retries under it; tickets that used up their attempts release it;
//! - expires overdue tickets at the head of the queue (join order puts them there), and
//!   releases the match ids that orphans;
//! - samples the queue depth and the number of leases for the gauges.
//!
//! Several reapers may run at once: each lease is returned by exactly one of them, since
//! the give-back script deletes the lease and re-checks its deadline by Redis's clock.

use crate::metrics::{TicketEvent, tickets};
use crate::release::Why;
use crate::tickets::{GiveBack, StoreError};

use super::Matcher;

/// Queue entries a sweep looks at per pass (overdue tickets beyond wait for the next pass).
const SWEEP_LIMIT: usize = 1000;
/// Expired leases returned per pass.
const LEASE_LIMIT: usize = 100;

/// What one reaper pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reaped {
    pub expired_tickets: usize,
    pub leases_returned: usize,
    pub tickets_returned: usize,
    pub tickets_failed: usize,
}

impl Matcher {
    /// One reaper pass.
    pub async fn reap(&self) -> Result<Reaped, StoreError> {
        let mut reaped = Reaped::default();
        let swept = self.tickets.sweep(SWEEP_LIMIT).await?;
        if !swept.expired.is_empty() {
            reaped.expired_tickets = swept.expired.len();
            tickets(TicketEvent::Expired, swept.expired.len());
            self.releaser.release_all(&swept.orphaned, Why::Expired);
            self.events.tickets_changed(&swept.expired).await;
        }
        let reason = self.lease_reason();
        for batch_id in self.tickets.overdue_leases(LEASE_LIMIT).await? {
            let how = GiveBack::Expired { reason: &reason, max_attempts: self.config.max_attempts };
            let returned = self.tickets.give_back(&batch_id, &[], how).await?;
            if !returned.applied {
                continue;
            }
            tracing::warn!(
                batch = %batch_id,
                returned = returned.queued.len(),
                failed = returned.failed.len(),
                "lease expired: its matcher did not finish; tickets went back to the queue"
            );
            metrics::counter!("mm_matchmaker_lease_expirations_total").increment(1);
            reaped.leases_returned += 1;
            reaped.tickets_returned += returned.queued.len();
            reaped.tickets_failed += returned.failed.len();
            self.releaser.release_all(&returned.orphaned, Why::Failed);
            tickets(TicketEvent::Requeued, returned.queued.len());
            tickets(TicketEvent::Failed, returned.failed.len());
            self.events.tickets_changed(&returned.failed).await;
        }
        if reaped.tickets_returned > 0 {
            self.wake.notify_waiters();
        }
        let (depth, leases) = self.tickets.gauges().await?;
        metrics::gauge!("mm_matchmaker_queue_depth", "queue" => self.queue.clone()).set(depth as f64);
        metrics::gauge!("mm_matchmaker_leases_in_flight", "queue" => self.queue.clone()).set(leases as f64);
        Ok(reaped)
    }
}
