//! The player pool: how many players are alive, which are idle, and handing them work.
//!
//! An idle player parks on a oneshot channel whose sender sits in the pool's idle queue;
//! that sender (8 bytes here, ~80 on the heap) is the whole cost of being available.
//! Dispatching pops a sender and sends the scenario; retiring sends `Retire`; closing the
//! pool drops every sender, which wakes every idle player to leave.
//!
//! `alive` counts players that are alive and will stay so: it is decremented at the
//! moment a player is chosen to leave (logout, retirement), not when its task ends, so
//! the spawner and the retirer never act twice on the same player.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, oneshot};

use crate::scenario::Scenario;
use crate::scenarios::party::PartyInvite;

/// What an idle player is told to do.
#[derive(Debug, Clone)]
pub enum Command {
    Run(Scenario),
    /// A party leader recruited this player: join its party and play its match.
    Member(Arc<PartyInvite>),
    /// The target shrank: leave.
    Retire,
}

impl PartialEq for Command {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Run(a), Self::Run(b)) => a == b,
            (Self::Member(a), Self::Member(b)) => Arc::ptr_eq(a, b),
            (Self::Retire, Self::Retire) => true,
            _ => false,
        }
    }
}

/// Where an idle player waits for its next command.
pub type Slot = oneshot::Sender<Command>;

#[derive(Default)]
pub struct Pool {
    idle: Mutex<Idle>,
    alive: AtomicU64,
    target: AtomicU64,
    /// Wakes the spawner when the target changes or a player leaves.
    changed: Notify,
}

#[derive(Default)]
struct Idle {
    slots: VecDeque<Slot>,
    closed: bool,
}

impl Pool {
    pub fn new(target: u64) -> Self {
        Self { target: AtomicU64::new(target), ..Self::default() }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Parks an idle player's slot. `false` when the pool is closed (the run is ending).
    pub fn park(&self, slot: Slot) -> bool {
        let mut idle = self.idle();
        if idle.closed {
            return false;
        }
        idle.slots.push_back(slot);
        true
    }

    /// Idle players ready for work now.
    pub fn idle_count(&self) -> u64 {
        self.idle().slots.len() as u64
    }

    /// Gives `scenario` to the player idle longest. `false` when nobody is idle.
    pub fn give(&self, scenario: Scenario) -> bool {
        loop {
            let Some(slot) = self.idle().slots.pop_front() else { return false };
            // A player whose receiver is gone has left already; try the next one.
            if slot.send(Command::Run(scenario)).is_ok() {
                return true;
            }
        }
    }

    /// Hands `invite` to up to `count` players idle longest (a party leader recruiting
    /// its members). How many got it.
    pub fn recruit(&self, count: usize, invite: &Arc<PartyInvite>) -> usize {
        let mut recruited = 0;
        while recruited < count {
            let Some(slot) = self.idle().slots.pop_front() else { break };
            if slot.send(Command::Member(invite.clone())).is_ok() {
                recruited += 1;
            }
        }
        recruited
    }

    pub fn alive(&self) -> u64 {
        self.alive.load(Ordering::Relaxed)
    }

    pub fn target(&self) -> u64 {
        self.target.load(Ordering::Relaxed)
    }

    pub fn set_target(&self, target: u64) {
        if self.target.swap(target, Ordering::Relaxed) != target {
            self.changed.notify_one();
        }
    }

    /// Counts one more player if the pool is under target; returns the new count.
    pub fn claim_spawn(&self) -> Option<u64> {
        let target = self.target();
        self.alive
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |alive| (alive < target).then_some(alive + 1))
            .ok()
            .map(|previous| previous + 1)
    }

    /// Counts one player less if the pool is over target: that player must leave.
    pub fn claim_retirement(&self) -> bool {
        let target = self.target();
        self.alive
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |alive| (alive > target).then(|| alive - 1))
            .is_ok()
    }

    /// A player left on its own (logout, shutdown): the spawner may replace it.
    pub fn left(&self) {
        let _ = self.alive.fetch_update(Ordering::AcqRel, Ordering::Acquire, |alive| alive.checked_sub(1));
        self.changed.notify_one();
    }

    /// Retires idle players while the pool is over target. Returns how many.
    pub fn retire_idle(&self) -> u64 {
        let mut retired = 0;
        while self.alive() > self.target() {
            let Some(slot) = self.idle().slots.pop_back() else { break };
            if !self.claim_retirement() {
                self.idle().slots.push_back(slot);
                break;
            }
            // A closed receiver means the player is leaving anyway; it was counted out.
            let _ = slot.send(Command::Retire);
            retired += 1;
        }
        retired
    }

    /// Players missing to reach the target.
    pub fn deficit(&self) -> u64 {
        self.target().saturating_sub(self.alive())
    }

    /// Waits until the target changes or a player leaves.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Ends the pool: no more parking, and every idle player wakes to leave.
    pub fn close(&self) {
        let slots = {
            let mut idle = self.idle();
            idle.closed = true;
            std::mem::take(&mut idle.slots)
        };
        drop(slots);
        self.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_and_retire_claims_respect_the_target() {
        let pool = Pool::new(2);
        assert_eq!(pool.claim_spawn(), Some(1));
        assert_eq!(pool.claim_spawn(), Some(2));
        assert_eq!(pool.claim_spawn(), None, "at target");
        assert!(!pool.claim_retirement(), "not over target");
        pool.set_target(1);
        assert!(pool.claim_retirement());
        assert!(!pool.claim_retirement(), "exactly one had to go");
        pool.left();
        assert_eq!((pool.alive(), pool.deficit()), (0, 1));
    }

    #[tokio::test]
    async fn idle_players_get_work_retirement_and_closure() {
        let pool = Pool::new(3);
        let mut receivers = Vec::new();
        for _ in 0..3 {
            pool.claim_spawn();
            let (slot, receiver) = oneshot::channel();
            assert!(pool.park(slot));
            receivers.push(receiver);
        }
        assert!(pool.give(Scenario::FetchStore));
        assert_eq!(pool.idle_count(), 2);
        pool.set_target(2);
        assert_eq!(pool.retire_idle(), 1);
        assert_eq!(pool.idle_count(), 1);
        pool.close();
        assert!(!pool.give(Scenario::Logout));
        let (slot, _receiver) = oneshot::channel();
        assert!(!pool.park(slot), "a closed pool parks nobody");
        let mut commands = Vec::new();
        for receiver in receivers {
            commands.push(receiver.await.ok());
        }
        assert_eq!(
            commands,
            vec![Some(Command::Run(Scenario::FetchStore)), None, Some(Command::Retire)],
            "first parked got the work, last parked was retired, the other woke to a closed pool"
        );
    }
}
