//! Match functions: which queued tickets play together.
//!
//! The pipeline pops a window of the oldest tickets into a lease, asks the function for
//! groups of [`MATCH_SIZE`], allocates a server per group, and returns whatever no group
//! took to the head of the queue. A function only chooses; it does no I/O, so a skill,
//! region or party function is a new type here and a unit test, not a change to the
//! pipeline.

use mm_shared::protocol::{MATCH_SIZE, Ticket};

/// Chooses groups among candidate tickets.
pub trait MatchFunction: Send + Sync + 'static {
    /// For logs: `fifo`, `skill`, ...
    fn name(&self) -> &'static str;

    /// How many tickets from the head of the queue it looks at per round. At least
    /// [`MATCH_SIZE`]; a pop happens only when [`MATCH_SIZE`] are queued.
    fn window(&self) -> usize;

    /// Groups of exactly [`MATCH_SIZE`] tickets, as indices into `candidates` (oldest
    /// first). A ticket may be in at most one group; those in none go back to the queue.
    fn propose(&self, candidates: &[Ticket]) -> Vec<Vec<usize>>;
}

/// First come, first served: the ten oldest tickets play together (the seed's rule).
#[derive(Debug, Clone, Copy, Default)]
pub struct Fifo;

impl MatchFunction for Fifo {
    fn name(&self) -> &'static str {
        "fifo"
    }

    fn window(&self) -> usize {
        MATCH_SIZE
    }

    fn propose(&self, candidates: &[Ticket]) -> Vec<Vec<usize>> {
        (0..candidates.len() / MATCH_SIZE)
            .map(|group| (group * MATCH_SIZE..(group + 1) * MATCH_SIZE).collect())
            .collect()
    }
}

/// A function's proposal after checking it: groups that are valid, and the candidates
/// left for the queue. A bad group (wrong size, an index out of range or used twice) is
/// dropped whole, so a buggy function can delay tickets but never lose or duplicate one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub groups: Vec<Vec<usize>>,
    pub leftover: Vec<usize>,
    pub rejected_groups: usize,
}

pub fn check_proposal(candidates: usize, proposed: Vec<Vec<usize>>) -> Proposal {
    let mut taken = vec![false; candidates];
    let mut groups = Vec::new();
    let mut rejected_groups = 0;
    for group in proposed {
        let mut seen = std::collections::HashSet::new();
        let valid = group.len() == MATCH_SIZE
            && group.iter().all(|&index| index < candidates && !taken[index] && seen.insert(index));
        if valid {
            for &index in &group {
                taken[index] = true;
            }
            groups.push(group);
        } else {
            rejected_groups += 1;
        }
    }
    let leftover = (0..candidates).filter(|&index| !taken[index]).collect();
    Proposal { groups, leftover, rejected_groups }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mm_shared::protocol::TicketStatus;

    fn tickets(count: usize) -> Vec<Ticket> {
        (0..count)
            .map(|index| Ticket {
                id: format!("t{index}"),
                player_id: format!("p{index}"),
                status: TicketStatus::Searching,
                created_at: 0,
                match_id: None,
                server: None,
                reason: None,
                attempts: 0,
                expires_at: 0,
                seq: index as u64,
            })
            .collect()
    }

    #[test]
    fn fifo_groups_the_oldest_in_order() {
        assert_eq!(Fifo.propose(&tickets(10)), vec![(0..10).collect::<Vec<_>>()]);
        assert_eq!(Fifo.propose(&tickets(25)).len(), 2);
        assert!(Fifo.propose(&tickets(9)).is_empty());
    }

    #[test]
    fn bad_groups_are_dropped_and_their_tickets_left_over() {
        let proposal = check_proposal(
            25,
            vec![
                (0..10).collect(),
                (5..15).collect(),                            // overlaps the first group
                (15..24).collect(),                           // nine
                vec![15, 16, 17, 18, 19, 20, 21, 22, 23, 99], // out of range
                vec![15, 15, 16, 17, 18, 19, 20, 21, 22, 23], // duplicate
            ],
        );
        assert_eq!(proposal.groups, vec![(0..10).collect::<Vec<_>>()]);
        assert_eq!(proposal.leftover, (10..25).collect::<Vec<_>>());
        assert_eq!(proposal.rejected_groups, 4);
    }
}
