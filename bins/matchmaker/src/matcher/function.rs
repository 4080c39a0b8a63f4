//! Match functions: which queued tickets play together, and on which side.
//!
//! The pipeline pops a window of a queue's oldest tickets into a lease, asks the queue's
//! function for groups, allocates a server per group, and returns whatever no group took
//! to the head of the queue. A function only chooses; it does no I/O and reads no clock
//! (the pop hands it Redis's time), so every rule is a unit test.
//!
//! **Every match is two sides of equal size**: the game server plays the first half of
//! its player list against the second half, so a function says which tickets go on which
//! side. A ticket is one player or a whole party, and it is never split: a party is always
//! in one match and on one side. A party that cannot fit waits.
//!
//! - [`Fifo`]: join order (the seed's rule): the oldest tickets that fit, in order.
//! - [`Rules`]: the configurable functions `skill` (ratings within a window that widens
//!   with the oldest ticket's wait; sides balanced by rating) and `latency` (a region
//!   where every member is under a ping cap that widens with wait). A skill queue may
//!   cap latency too.
//!
//! Whatever a function proposes is checked by [`check_proposal`] before anything is done
//! with it: a wrong group is dropped whole, and its tickets go back.

use std::collections::BTreeMap;

use mm_shared::protocol::{MATCH_SIZE, Ticket, limits};

/// One proposed match: the candidates (indices) on each side, and where it is played.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub sides: [Vec<usize>; 2],
    /// The region every member is close enough to (latency rules).
    pub region: Option<String>,
}

impl Group {
    /// Tickets of one player each, split in order: the first half against the second.
    pub fn halves(indices: Vec<usize>) -> Self {
        let mut first = indices;
        let second = first.split_off(first.len() / 2);
        Self { sides: [first, second], region: None }
    }

    /// Every candidate of the group, side by side.
    pub fn members(&self) -> impl Iterator<Item = usize> + '_ {
        self.sides.iter().flatten().copied()
    }
}

/// Chooses groups among candidate tickets.
pub trait MatchFunction: Send + Sync + 'static {
    /// For logs and `GET /matchmaking/queues`: `fifo`, `skill`, `latency`.
    fn name(&self) -> &'static str;

    /// How many tickets from the head of the queue it looks at per round.
    fn window(&self) -> usize;

    /// Players per match (even: two sides). A pop happens only when this many players
    /// are queued.
    fn match_size(&self) -> usize {
        MATCH_SIZE
    }

    /// Groups of exactly [`MatchFunction::match_size`] players, half on each side, as
    /// indices into `candidates` (oldest first). A ticket may be in one group at most;
    /// those in none go back to the queue. `now_ms` is Redis's clock at the pop, the clock
    /// of every ticket's `createdAt`.
    fn propose(&self, candidates: &[Ticket], now_ms: u64) -> Vec<Group>;
}

/// First come, first served: the oldest tickets that fit play together, the first half of
/// them against the second (the seed's rule: without parties, the ten oldest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fifo {
    pub match_size: usize,
    pub window: usize,
}

impl Default for Fifo {
    fn default() -> Self {
        Self { match_size: MATCH_SIZE, window: MATCH_SIZE }
    }
}

impl MatchFunction for Fifo {
    fn name(&self) -> &'static str {
        "fifo"
    }

    fn window(&self) -> usize {
        self.window.max(self.match_size)
    }

    fn match_size(&self) -> usize {
        self.match_size
    }

    fn propose(&self, candidates: &[Ticket], _now_ms: u64) -> Vec<Group> {
        let half = self.match_size / 2;
        let mut taken = vec![false; candidates.len()];
        let mut groups = Vec::new();
        loop {
            // The oldest tickets that still fit; a party that cannot fit is passed over
            // and waits for a later round.
            let (mut group, mut sizes) = (Vec::new(), Vec::new());
            for (index, ticket) in candidates.iter().enumerate() {
                if taken[index] {
                    continue;
                }
                sizes.push(ticket.size());
                if packable(&sizes, half) {
                    group.push(index);
                    if sizes.iter().sum::<usize>() == self.match_size {
                        break;
                    }
                } else {
                    sizes.pop();
                }
            }
            if sizes.iter().sum::<usize>() != self.match_size {
                return groups;
            }
            let Some(first) = split_in_order(&sizes, half) else { return groups };
            for &index in &group {
                taken[index] = true;
            }
            groups.push(sided(&group, &first, None));
        }
    }
}

/// A bound that widens with a ticket's wait: `start`, plus `per_second` for every second
/// waited, up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Widening {
    pub start: f64,
    pub per_second: f64,
    pub max: f64,
}

impl Widening {
    /// The bound after waiting `waited_ms`.
    pub fn at(&self, waited_ms: u64) -> f64 {
        (self.start + self.per_second * waited_ms as f64 / 1000.0).clamp(self.start, self.max.max(self.start))
    }

    /// Config validation (`key` names it in the message).
    pub fn check(&self, key: &str) -> Result<(), String> {
        let sane = [self.start, self.per_second, self.max].iter().all(|v| v.is_finite() && *v >= 0.0);
        if !sane || self.start > self.max {
            return Err(format!(
                "config key `{key}`: start, per_second and max must be numbers of at least 0, \
                 and start at most max"
            ));
        }
        Ok(())
    }
}

/// The rule-based functions: `skill` and `latency`, with sides and parties.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub name: &'static str,
    pub match_size: usize,
    pub window: usize,
    /// Ratings within this spread (highest minus lowest); `None`: ratings do not matter.
    pub rating_window: Option<Widening>,
    /// Every member under this latency (ms) to the match's region; `None`: no region.
    pub max_ping: Option<Widening>,
    /// Sides balanced by rating; otherwise the oldest tickets first.
    pub balance: bool,
    /// The rating of a ticket that has none.
    pub default_rating: f64,
}

impl Rules {
    /// `skill`: ratings close together, sides balanced.
    pub fn skill(match_size: usize, window: usize, rating_window: Widening) -> Self {
        Self {
            name: "skill",
            match_size,
            window,
            rating_window: Some(rating_window),
            max_ping: None,
            balance: true,
            default_rating: 0.0,
        }
    }

    /// `latency`: a region every member is close to; join order otherwise.
    pub fn latency(match_size: usize, window: usize, max_ping: Widening) -> Self {
        Self {
            name: "latency",
            match_size,
            window,
            rating_window: None,
            max_ping: Some(max_ping),
            balance: false,
            default_rating: 0.0,
        }
    }
}

/// A candidate as the rules see it.
struct Candidate<'a> {
    rating: f64,
    size: usize,
    waited: u64,
    latencies: &'a BTreeMap<String, f64>,
}

/// A group being put together around an anchor.
struct Built {
    members: Vec<usize>,
    sizes: Vec<usize>,
    worst_ping: f64,
}

/// What one group may hold: a rating spread and a region under a latency cap.
#[derive(Clone, Copy)]
struct Bounds<'a> {
    spread: Option<f64>,
    region: Option<(&'a str, f64)>,
}

impl MatchFunction for Rules {
    fn name(&self) -> &'static str {
        self.name
    }

    fn window(&self) -> usize {
        self.window.max(self.match_size)
    }

    fn match_size(&self) -> usize {
        self.match_size
    }

    fn propose(&self, tickets: &[Ticket], now_ms: u64) -> Vec<Group> {
        let half = self.match_size / 2;
        let candidates: Vec<Candidate<'_>> = tickets
            .iter()
            .map(|ticket| Candidate {
                rating: ticket.rating.filter(|r| r.is_finite()).unwrap_or(self.default_rating),
                size: ticket.size(),
                waited: now_ms.saturating_sub(ticket.created_at),
                latencies: &ticket.latencies,
            })
            .collect();
        // Nearest first: by rating when ratings matter, by join order otherwise.
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        if self.rating_window.is_some() {
            order.sort_by(|&a, &b| candidates[a].rating.total_cmp(&candidates[b].rating).then(a.cmp(&b)));
        }
        let mut position = vec![0; candidates.len()];
        for (at, &index) in order.iter().enumerate() {
            position[index] = at;
        }
        let mut taken = vec![false; candidates.len()];
        let mut groups = Vec::new();
        // Anchors oldest first: the longest wait is served first, with its wider bounds.
        for anchor in 0..candidates.len() {
            if taken[anchor] || candidates[anchor].size > half {
                continue;
            }
            let waited = candidates[anchor].waited;
            let spread = self.rating_window.map(|window| window.at(waited));
            let found = match self.max_ping {
                None => self
                    .build(&candidates, &order, &position, &taken, anchor, Bounds { spread, region: None })
                    .map(|built| (built, None)),
                Some(ping) => {
                    let cap = ping.at(waited);
                    let mut best: Option<(Built, &String)> = None;
                    for (region, ms) in candidates[anchor].latencies {
                        if *ms > cap || limits::check_token("region", region).is_err() {
                            continue;
                        }
                        let bounds = Bounds { spread, region: Some((region.as_str(), cap)) };
                        if let Some(built) =
                            self.build(&candidates, &order, &position, &taken, anchor, bounds)
                            && best.as_ref().is_none_or(|(best, _)| built.worst_ping < best.worst_ping)
                        {
                            best = Some((built, region));
                        }
                    }
                    best.map(|(built, region)| (built, Some(region.clone())))
                }
            };
            let Some((mut built, region)) = found else { continue };
            // Oldest first inside the group too: the in-order split then reads naturally.
            let mut pairs: Vec<(usize, usize)> = built.members.iter().copied().zip(built.sizes).collect();
            pairs.sort_unstable();
            built.members = pairs.iter().map(|(member, _)| *member).collect();
            let sizes: Vec<usize> = pairs.iter().map(|(_, size)| *size).collect();
            let first = if self.balance {
                let ratings: Vec<f64> = built.members.iter().map(|&m| candidates[m].rating).collect();
                balanced_split(&sizes, &ratings, half)
            } else {
                split_in_order(&sizes, half)
            };
            let Some(first) = first else { continue };
            for &member in &built.members {
                taken[member] = true;
            }
            groups.push(sided(&built.members, &first, region));
        }
        groups
    }
}

impl Rules {
    /// The nearest tickets to `anchor` (by rating, or join order) that keep the group
    /// within `bounds` and able to split into two sides, until it is full.
    fn build(
        &self,
        candidates: &[Candidate<'_>],
        order: &[usize],
        position: &[usize],
        taken: &[bool],
        anchor: usize,
        bounds: Bounds<'_>,
    ) -> Option<Built> {
        let half = self.match_size / 2;
        let eligible = |index: usize| -> Option<f64> {
            match bounds.region {
                None => Some(0.0),
                Some((region, cap)) => {
                    candidates[index].latencies.get(region).copied().filter(|ms| *ms <= cap)
                }
            }
        };
        let anchor_ping = eligible(anchor)?;
        let mut built =
            Built { members: vec![anchor], sizes: vec![candidates[anchor].size], worst_ping: anchor_ping };
        let mut players = candidates[anchor].size;
        let (mut low, mut high) = (candidates[anchor].rating, candidates[anchor].rating);
        let at = position[anchor];
        let (mut down, mut up) = (at, at + 1);
        let rating = |index: usize| candidates[index].rating;
        while players < self.match_size {
            // The nearer of the next candidate below and above (join order: only after).
            let below = (self.rating_window.is_some() && down > 0).then(|| order[down - 1]);
            let above = (up < order.len()).then(|| order[up]);
            let next = match (below, above) {
                (Some(b), Some(a)) => {
                    let anchor_rating = candidates[anchor].rating;
                    if anchor_rating - rating(b) <= rating(a) - anchor_rating { b } else { a }
                }
                (Some(b), None) => b,
                (None, Some(a)) => a,
                (None, None) => break,
            };
            if Some(next) == below {
                down -= 1;
            } else {
                up += 1;
            }
            if let Some(spread) = bounds.spread {
                let (new_low, new_high) = (low.min(rating(next)), high.max(rating(next)));
                if new_high - new_low > spread {
                    // Sorted by rating: everything further out on this side is out too,
                    // but the other side may still have room.
                    if Some(next) == below {
                        down = 0;
                    } else {
                        up = order.len();
                    }
                    continue;
                }
            }
            if taken[next] || players + candidates[next].size > self.match_size {
                continue;
            }
            let Some(ping) = eligible(next) else { continue };
            built.sizes.push(candidates[next].size);
            if !packable(&built.sizes, half) {
                built.sizes.pop();
                continue;
            }
            built.members.push(next);
            players += candidates[next].size;
            low = low.min(rating(next));
            high = high.max(rating(next));
            built.worst_ping = built.worst_ping.max(ping);
        }
        (players == self.match_size).then_some(built)
    }
}

/// The group's members on two sides, by `first` (true: the first side).
fn sided(members: &[usize], first: &[bool], region: Option<String>) -> Group {
    let mut sides = [Vec::new(), Vec::new()];
    for (&member, &on_first) in members.iter().zip(first) {
        sides[usize::from(!on_first)].push(member);
    }
    Group { sides, region }
}

/// Can tickets of these sizes go on two sides of `half` players each (solos filling the
/// rest)? A subset-sum over the few tickets of one match.
pub fn packable(sizes: &[usize], half: usize) -> bool {
    let total: usize = sizes.iter().sum();
    if total > 2 * half || sizes.iter().any(|&size| size > half) {
        return false;
    }
    // Bit s of `sums`: some subset adds up to s (s <= half).
    let mut sums: u128 = 1;
    let mask: u128 = if half >= 127 { u128::MAX } else { (1u128 << (half + 1)) - 1 };
    for &size in sizes {
        sums |= (sums << size) & mask;
    }
    (0..=half.min(127)).any(|s| sums & (1u128 << s) != 0 && total - s <= half)
}

/// Sides for tickets of `sizes` adding up to two sides of `half`: each ticket in order on
/// the first side while it fits (backtracking when that leads nowhere). Solo tickets in
/// order: the first half against the second.
pub fn split_in_order(sizes: &[usize], half: usize) -> Option<Vec<bool>> {
    fn place(sizes: &[usize], at: usize, room: [usize; 2], first: &mut Vec<bool>) -> bool {
        if at == sizes.len() {
            return room == [0, 0];
        }
        for side in 0..2 {
            if sizes[at] <= room[side] {
                let mut left = room;
                left[side] -= sizes[at];
                first.push(side == 0);
                if place(sizes, at + 1, left, first) {
                    return true;
                }
                first.pop();
            }
        }
        false
    }
    let mut first = Vec::with_capacity(sizes.len());
    place(sizes, 0, [half, half], &mut first).then_some(first)
}

/// Sides whose mean player ratings are closest, for tickets of `sizes` and `ratings` (a
/// party counts its rating once per member). Exhaustive for up to a dozen tickets (a match of ten);
/// beyond that, greedy (strongest first onto the weaker side that has room).
pub fn balanced_split(sizes: &[usize], ratings: &[f64], half: usize) -> Option<Vec<bool>> {
    let total: f64 = sizes.iter().zip(ratings).map(|(&size, &rating)| size as f64 * rating).sum();
    if sizes.len() <= 12 {
        let mut best: Option<(f64, u32)> = None;
        // The first ticket on the first side: each split is seen once.
        for mask in 0u32..(1 << sizes.len()) {
            if mask & 1 == 0 {
                continue;
            }
            let (mut players, mut sum) = (0, 0.0);
            for (index, (&size, &rating)) in sizes.iter().zip(ratings).enumerate() {
                if mask & (1 << index) != 0 {
                    players += size;
                    sum += size as f64 * rating;
                }
            }
            if players != half {
                continue;
            }
            let difference = (2.0 * sum - total).abs();
            if best.is_none_or(|(best, _)| difference < best) {
                best = Some((difference, mask));
            }
        }
        return best.map(|(_, mask)| (0..sizes.len()).map(|index| mask & (1 << index) != 0).collect());
    }
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]).then(ratings[b].total_cmp(&ratings[a])));
    let (mut room, mut sum) = ([half, half], [0.0, 0.0]);
    let mut first = vec![false; sizes.len()];
    for index in order {
        let preferred = if sum[0] <= sum[1] { 0 } else { 1 };
        let side = if sizes[index] <= room[preferred] { preferred } else { 1 - preferred };
        if sizes[index] > room[side] {
            return split_in_order(sizes, half);
        }
        room[side] -= sizes[index];
        sum[side] += sizes[index] as f64 * ratings[index];
        first[index] = side == 0;
    }
    Some(first)
}

/// A function's proposal after checking it: the valid groups, and the candidates left
/// for the queue. A bad group (a side of the wrong number of players, an index out of
/// range or used twice, a region some member gave no latency for) is dropped whole, so a
/// buggy function can delay tickets but never lose, duplicate or split one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub groups: Vec<Group>,
    pub leftover: Vec<usize>,
    pub rejected_groups: usize,
}

pub fn check_proposal(candidates: &[Ticket], match_size: usize, proposed: Vec<Group>) -> Proposal {
    let half = match_size / 2;
    let mut taken = vec![false; candidates.len()];
    let mut groups = Vec::new();
    let mut rejected_groups = 0;
    for group in proposed {
        let mut seen = std::collections::HashSet::new();
        let in_range =
            group.members().all(|index| index < candidates.len() && !taken[index] && seen.insert(index));
        let valid = in_range
            && match_size.is_multiple_of(2)
            && group
                .sides
                .iter()
                .all(|side| side.iter().map(|&index| candidates[index].size()).sum::<usize>() == half)
            && group.region.as_ref().is_none_or(|region| {
                limits::check_token("region", region).is_ok()
                    && group.members().all(|index| {
                        candidates[index].latencies.is_empty()
                            || candidates[index].latencies.contains_key(region)
                    })
            });
        if valid {
            for index in group.members() {
                taken[index] = true;
            }
            groups.push(group);
        } else {
            rejected_groups += 1;
        }
    }
    let leftover = (0..candidates.len()).filter(|&index| !taken[index]).collect();
    Proposal { groups, leftover, rejected_groups }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(index: usize) -> Ticket {
        let mut ticket = Ticket::solo(format!("t{index}"), format!("p{index}"));
        ticket.seq = index as u64;
        ticket
    }

    fn tickets(count: usize) -> Vec<Ticket> {
        (0..count).map(ticket).collect()
    }

    fn rated(ratings: &[f64]) -> Vec<Ticket> {
        ratings
            .iter()
            .enumerate()
            .map(|(index, &rating)| Ticket { rating: Some(rating), ..ticket(index) })
            .collect()
    }

    fn party(index: usize, size: usize) -> Ticket {
        let mut ticket = ticket(index);
        ticket.players = (0..size).map(|member| format!("p{index}-{member}")).collect();
        ticket.player_id = ticket.players[0].clone();
        ticket
    }

    fn players(candidates: &[Ticket], side: &[usize]) -> usize {
        side.iter().map(|&index| candidates[index].size()).sum()
    }

    fn spread(candidates: &[Ticket], group: &Group) -> f64 {
        let ratings: Vec<f64> = group.members().map(|i| candidates[i].rating.unwrap_or(0.0)).collect();
        ratings.iter().copied().fold(f64::MIN, f64::max) - ratings.iter().copied().fold(f64::MAX, f64::min)
    }

    const WINDOW: Widening = Widening { start: 100.0, per_second: 10.0, max: 500.0 };

    #[test]
    fn fifo_groups_the_oldest_in_order_first_half_against_second() {
        let fifo = Fifo::default();
        assert_eq!(fifo.propose(&tickets(10), 0), vec![Group::halves((0..10).collect())]);
        assert_eq!(fifo.propose(&tickets(25), 0).len(), 2);
        assert!(fifo.propose(&tickets(9), 0).is_empty());
    }

    #[test]
    fn fifo_keeps_parties_whole_on_one_side_and_a_party_that_cannot_fit_waits() {
        let fifo = Fifo { match_size: 10, window: 20 };
        // 3, 3, 3 cannot share two sides of five: the third waits, solos fill in.
        let mut pool = vec![party(0, 3), party(1, 3), party(2, 3)];
        pool.extend((3..10).map(ticket));
        let groups = fifo.propose(&pool, 0);
        assert_eq!(groups.len(), 1);
        let group = &groups[0];
        assert!(!group.members().any(|index| index == 2), "the third party waits");
        for side in &group.sides {
            assert_eq!(players(&pool, side), 5);
        }
        assert!(check_proposal(&pool, 10, groups).rejected_groups == 0);
    }

    #[test]
    fn skill_groups_close_ratings_and_never_mixes_far_clusters() {
        let mut ratings: Vec<f64> = (0..10).map(|i| 1000.0 + i as f64).collect();
        ratings.extend((0..10).map(|i| 2000.0 + i as f64));
        // Interleave the clusters in join order.
        let mut interleaved = Vec::new();
        for i in 0..10 {
            interleaved.push(ratings[i]);
            interleaved.push(ratings[10 + i]);
        }
        let pool = rated(&interleaved);
        let groups = Rules::skill(10, 100, WINDOW).propose(&pool, 0);
        assert_eq!(groups.len(), 2);
        for group in &groups {
            assert!(spread(&pool, group) < 100.0, "one cluster per match");
        }
    }

    #[test]
    fn the_rating_window_widens_with_the_oldest_tickets_wait() {
        // Ten tickets 40 apart: a spread of 360, over the start of 100.
        let mut pool = rated(&(0..10).map(|i| 1000.0 + 40.0 * i as f64).collect::<Vec<_>>());
        let rules = Rules::skill(10, 100, WINDOW);
        assert!(rules.propose(&pool, 0).is_empty(), "fresh tickets: too far apart");
        // After 26 s the oldest's window is 100 + 260 = 360: enough.
        pool[0].created_at = 0;
        let now = 26_000;
        for ticket in pool.iter_mut().skip(1) {
            ticket.created_at = now;
        }
        let groups = rules.propose(&pool, now);
        assert_eq!(groups.len(), 1, "the oldest ticket's wait widened its window");
        assert!(spread(&pool, &groups[0]) <= WINDOW.at(now));
        assert!(rules.propose(&pool, 25_000).is_empty(), "after 25 s the window is 350: not yet");
        // Never past the maximum.
        assert_eq!(WINDOW.at(3_600_000), 500.0);
        assert_eq!(WINDOW.at(0), 100.0);
    }

    #[test]
    fn teams_are_balanced_by_rating() {
        let pool = rated(&[1000.0, 1010.0, 1020.0, 1030.0, 1040.0, 1050.0, 1060.0, 1070.0, 1080.0, 1090.0]);
        let groups = Rules::skill(10, 100, WINDOW).propose(&pool, 0);
        assert_eq!(groups.len(), 1);
        let mean = |side: &[usize]| side.iter().map(|&i| pool[i].rating.unwrap_or(0.0)).sum::<f64>() / 5.0;
        let difference = (mean(&groups[0].sides[0]) - mean(&groups[0].sides[1])).abs();
        assert!(difference <= 2.0 + 1e-9, "best split of 0..90 step 10 differs by 2: {difference}");
        // In-order halves would differ by 50.
        let ordered = Group::halves((0..10).collect());
        assert!((mean(&ordered.sides[0]) - mean(&ordered.sides[1])).abs() >= 50.0);
    }

    #[test]
    fn parties_stay_on_one_side_and_a_party_too_big_waits() {
        let mut pool = vec![party(0, 4), party(1, 2), party(2, 6)];
        pool.extend((3..10).map(ticket));
        for ticket in &mut pool {
            ticket.rating = Some(1500.0);
        }
        let groups = Rules::skill(10, 100, WINDOW).propose(&pool, 0);
        assert_eq!(groups.len(), 1);
        assert!(!groups[0].members().any(|index| index == 2), "a party of six never fits a side of five");
        for side in &groups[0].sides {
            assert_eq!(players(&pool, side), 5);
        }
        assert_eq!(check_proposal(&pool, 10, groups).rejected_groups, 0);
    }

    #[test]
    fn latency_places_the_match_where_everyone_is_under_the_cap() {
        let cap = Widening { start: 50.0, per_second: 5.0, max: 120.0 };
        let mut pool = tickets(12);
        for (index, ticket) in pool.iter_mut().enumerate() {
            // Everyone is close to "eu" except two, who are close only to "us".
            let (eu, us) = if index < 10 { (20.0 + index as f64, 150.0) } else { (140.0, 30.0) };
            ticket.latencies = [("eu".to_owned(), eu), ("us".to_owned(), us)].into();
        }
        let groups = Rules::latency(10, 100, cap).propose(&pool, 0);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].region.as_deref(), Some("eu"));
        for index in groups[0].members() {
            assert!(pool[index].latencies["eu"] <= cap.at(0));
        }
        // Nobody under the cap anywhere: nothing, until the cap widens.
        for ticket in &mut pool {
            ticket.latencies = [("eu".to_owned(), 90.0)].into();
        }
        let rules = Rules::latency(10, 100, cap);
        assert!(rules.propose(&pool, 0).is_empty());
        assert_eq!(rules.propose(&pool, 10_000).len(), 1, "after 10 s the cap is 100 ms");
    }

    #[test]
    fn bad_groups_are_dropped_and_their_tickets_left_over() {
        let pool = tickets(25);
        let group = |sides: [Vec<usize>; 2]| Group { sides, region: None };
        let proposal = check_proposal(
            &pool,
            10,
            vec![
                Group::halves((0..10).collect()),
                Group::halves((5..15).collect()),  // overlaps the first group
                Group::halves((15..24).collect()), // nine
                group([(15..20).collect(), vec![20, 21, 22, 23, 99]]), // out of range
                group([vec![15, 15, 16, 17, 18], (19..24).collect()]), // duplicate
                group([(15..21).collect(), (21..25).collect()]), // six against four
                Group { region: Some("eu".into()), ..Group::halves((15..25).collect()) }, // no latencies: fine
            ],
        );
        assert_eq!(proposal.groups.len(), 2);
        assert_eq!(proposal.leftover, (10..15).collect::<Vec<_>>());
        assert_eq!(proposal.rejected_groups, 5);
        // A region some member gave latencies without is refused.
        let mut pool = tickets(10);
        pool[3].latencies = [("us".to_owned(), 10.0)].into();
        let proposal = check_proposal(
            &pool,
            10,
            vec![Group { region: Some("eu".into()), ..Group::halves((0..10).collect()) }],
        );
        assert_eq!(proposal.rejected_groups, 1);
    }

    /// Property: over random pools (ratings, parties, latencies, waits), every function's
    /// proposal passes the check untouched, keeps every party whole on one side, uses no
    /// ticket twice, honours its bounds for the oldest member's wait, and loses nothing
    /// (groups + leftovers = the pool).
    #[test]
    fn random_pools_keep_every_rule() {
        let cap = Widening { start: 40.0, per_second: 2.0, max: 150.0 };
        let window = Widening { start: 50.0, per_second: 5.0, max: 400.0 };
        let functions: Vec<Box<dyn MatchFunction>> = vec![
            Box::new(Fifo { match_size: 10, window: 200 }),
            Box::new(Rules::skill(10, 200, window)),
            Box::new(Rules { max_ping: Some(cap), ..Rules::skill(10, 200, window) }),
            Box::new(Rules::latency(10, 200, cap)),
            Box::new(Rules::skill(6, 200, window)),
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        let regions = ["eu", "us", "asia"];
        for round in 0..300 {
            let count = rng.usize(0..120);
            let now = 100_000;
            let pool: Vec<Ticket> = (0..count)
                .map(|index| {
                    let size = if rng.f64() < 0.7 { 1 } else { rng.usize(2..=6) };
                    let mut ticket = if size == 1 { ticket(index) } else { party(index, size) };
                    ticket.rating = Some(1500.0 + 300.0 * (rng.f64() - 0.5) * 4.0);
                    ticket.created_at = now - rng.u64(0..60_000);
                    for region in regions {
                        if rng.bool() {
                            ticket.latencies.insert(region.to_owned(), rng.f64() * 200.0);
                        }
                    }
                    ticket
                })
                .collect();
            for function in &functions {
                let size = function.match_size();
                let proposed = function.propose(&pool, now);
                let checked = check_proposal(&pool, size, proposed.clone());
                assert_eq!(
                    checked.rejected_groups,
                    0,
                    "round {round}: {} proposed a bad group",
                    function.name()
                );
                let used: usize = checked.groups.iter().map(|group| group.members().count()).sum();
                assert_eq!(
                    used + checked.leftover.len(),
                    pool.len(),
                    "round {round}: tickets lost or doubled"
                );
                for group in &checked.groups {
                    for side in &group.sides {
                        assert_eq!(
                            players(&pool, side),
                            size / 2,
                            "round {round}: a party split or a side short"
                        );
                    }
                    let oldest = group.members().map(|i| now - pool[i].created_at).max().unwrap_or(0);
                    if function.name() == "skill" {
                        assert!(spread(&pool, group) <= window.at(oldest) + 1e-9, "round {round}: spread");
                    }
                    if let Some(region) = &group.region {
                        for index in group.members() {
                            assert!(
                                pool[index].latencies[region] <= cap.at(oldest) + 1e-9,
                                "round {round}: ping"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn splits_and_packing() {
        assert!(packable(&[3, 2, 4], 5));
        assert!(!packable(&[3, 3, 3], 5));
        assert!(!packable(&[6], 5));
        assert_eq!(split_in_order(&[1; 10], 5), Some([vec![true; 5], vec![false; 5]].concat()));
        assert_eq!(split_in_order(&[3, 3, 2, 2], 5), Some(vec![true, false, true, false]));
        let split = balanced_split(&[1, 1, 1, 1], &[100.0, 0.0, 100.0, 0.0], 2).expect("split");
        assert_ne!(split[0], split[2], "the two strong players are on different sides");
    }
}
