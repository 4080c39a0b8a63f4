//! PURE: who each simulated player is, behind the backend's back.
//!
//! A player's *true skill* (which only the harness knows: players send it to their game
//! server, which decides the winner from it, with luck) and home region follow from the
//! population's seed and the player's id alone: the same id is the same player in every
//! run and on every instance, so ratings kept across runs still describe the same skill.
//! Each matchmaking attempt then draws its queue and party size from the configured
//! shares, and its latencies from the home region's model with jitter.
//!
//! Also here: Spearman's rank correlation, which says how well ratings have come to
//! order the players by true skill.

use std::collections::BTreeMap;

use crate::config::PopulationSection;

/// A player's hidden traits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Traits {
    pub true_skill: f64,
    /// Index into the population's regions (none without regions).
    pub home: Option<usize>,
}

/// The population, ready to draw from.
#[derive(Debug, Clone)]
pub struct Population {
    config: PopulationSection,
    /// Party sizes and their shares.
    parties: Vec<(usize, f64)>,
    /// Queue names and their shares.
    queues: Vec<(String, f64)>,
}

impl Population {
    pub fn new(config: &PopulationSection) -> Self {
        let parties =
            config.parties.iter().filter_map(|(size, share)| Some((size.parse().ok()?, *share))).collect();
        let queues = config.queues.iter().map(|(name, share)| (name.clone(), *share)).collect();
        Self { config: config.clone(), parties, queues }
    }

    /// The traits of `player_id` (the same every time).
    pub fn traits(&self, player_id: &str) -> Traits {
        let mut rng = fastrand::Rng::with_seed(hash(self.config.seed, player_id));
        let cluster = pick(&mut rng, self.config.skill.iter().map(|c| c.share));
        let true_skill = cluster
            .and_then(|index| self.config.skill.get(index))
            .map_or(1500.0, |cluster| cluster.mean + cluster.sd * normal(&mut rng));
        let home = pick(&mut rng, self.config.regions.iter().map(|r| r.share));
        Traits { true_skill, home }
    }

    /// Latencies a player of `traits` reports for one join (none without regions).
    pub fn latencies(&self, traits: &Traits, rng: &mut fastrand::Rng) -> BTreeMap<String, f64> {
        let Some(region) = traits.home.and_then(|home| self.config.regions.get(home)) else {
            return BTreeMap::new();
        };
        region
            .latency_ms
            .iter()
            .map(|(name, base)| {
                let ms = base + rng.f64() * region.jitter_ms;
                (name.clone(), (ms * 10.0).round() / 10.0)
            })
            .collect()
    }

    /// The queue of one matchmaking attempt.
    pub fn queue(&self, rng: &mut fastrand::Rng) -> &str {
        pick(rng, self.queues.iter().map(|(_, share)| *share))
            .and_then(|index| self.queues.get(index))
            .map_or(mm_shared::protocol::keys::DEFAULT_QUEUE_NAME, |(name, _)| name.as_str())
    }

    /// The party size of one matchmaking attempt.
    pub fn party_size(&self, rng: &mut fastrand::Rng) -> usize {
        pick(rng, self.parties.iter().map(|(_, share)| *share))
            .and_then(|index| self.parties.get(index))
            .map_or(1, |(size, _)| *size)
    }

    /// The queues matchmaking attempts go to (bounded: the report's and metrics' keys).
    pub fn queue_names(&self) -> Vec<String> {
        self.queues.iter().map(|(name, _)| name.clone()).collect()
    }
}

/// An index drawn with probability proportional to its share (`None`: no positive share).
fn pick(rng: &mut fastrand::Rng, shares: impl Iterator<Item = f64> + Clone) -> Option<usize> {
    let total: f64 = shares.clone().filter(|s| *s > 0.0).sum();
    if total <= 0.0 {
        return None;
    }
    let mut at = rng.f64() * total;
    let mut last = None;
    for (index, share) in shares.enumerate() {
        if share <= 0.0 {
            continue;
        }
        last = Some(index);
        if at < share {
            return Some(index);
        }
        at -= share;
    }
    last
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut fastrand::Rng) -> f64 {
    let u = rng.f64().max(f64::MIN_POSITIVE);
    let v = rng.f64();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// FNV-1a of the seed and the id: stable across runs, platforms and versions.
fn hash(seed: u64, id: &str) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for byte in id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Spearman's rank correlation of (x, y) pairs, ties ranked by their mean rank. `None`
/// with fewer than three pairs or when either side does not vary.
pub fn spearman(pairs: &[(f64, f64)]) -> Option<f64> {
    if pairs.len() < 3 {
        return None;
    }
    let ranks = |values: Vec<f64>| -> Vec<f64> {
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
        let mut ranks = vec![0.0; values.len()];
        let mut start = 0;
        while start < order.len() {
            let mut end = start;
            while end + 1 < order.len() && values[order[end + 1]] == values[order[start]] {
                end += 1;
            }
            let rank = (start + end) as f64 / 2.0;
            for &index in &order[start..=end] {
                ranks[index] = rank;
            }
            start = end + 1;
        }
        ranks
    };
    let x = ranks(pairs.iter().map(|p| p.0).collect());
    let y = ranks(pairs.iter().map(|p| p.1).collect());
    let n = x.len() as f64;
    let (mean_x, mean_y) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut covariance, mut var_x, mut var_y) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(&y) {
        covariance += (a - mean_x) * (b - mean_y);
        var_x += (a - mean_x).powi(2);
        var_y += (b - mean_y).powi(2);
    }
    if var_x == 0.0 || var_y == 0.0 {
        return None;
    }
    Some(covariance / (var_x * var_y).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RegionModel, SkillCluster};

    fn population() -> Population {
        Population::new(&PopulationSection {
            seed: 5,
            skill: vec![
                SkillCluster { share: 1.0, mean: 1000.0, sd: 10.0 },
                SkillCluster { share: 1.0, mean: 2000.0, sd: 10.0 },
            ],
            regions: vec![RegionModel {
                name: "eu".into(),
                share: 1.0,
                latency_ms: [("eu".to_owned(), 20.0), ("us".to_owned(), 100.0)].into(),
                jitter_ms: 5.0,
            }],
            parties: [("1".to_owned(), 3.0), ("2".to_owned(), 1.0)].into(),
            queues: [("default".to_owned(), 1.0), ("skill".to_owned(), 1.0)].into(),
        })
    }

    #[test]
    fn traits_follow_from_the_id_alone_and_clusters_split_the_population() {
        let population = population();
        assert_eq!(population.traits("p1"), population.traits("p1"));
        let skills: Vec<f64> = (0..1000).map(|i| population.traits(&format!("p{i}")).true_skill).collect();
        let low = skills.iter().filter(|s| **s < 1500.0).count();
        assert!((400..600).contains(&low), "about half in each cluster: {low}");
        assert!(skills.iter().all(|s| (900.0..1100.0).contains(s) || (1900.0..2100.0).contains(s)));
    }

    #[test]
    fn joins_draw_queues_parties_and_latencies_by_share() {
        let population = population();
        let mut rng = fastrand::Rng::with_seed(1);
        let solos = (0..4000).filter(|_| population.party_size(&mut rng) == 1).count();
        assert!((2800..3200).contains(&solos), "three quarters alone: {solos}");
        let skill = (0..4000).filter(|_| population.queue(&mut rng) == "skill").count();
        assert!((1800..2200).contains(&skill), "{skill}");
        let traits = population.traits("p1");
        let latencies = population.latencies(&traits, &mut rng);
        assert!((20.0..=25.0).contains(&latencies["eu"]) && (100.0..=105.0).contains(&latencies["us"]));
        let none = Population::new(&PopulationSection::default());
        assert!(none.latencies(&none.traits("p1"), &mut rng).is_empty());
        assert_eq!(none.queue(&mut rng), "default");
        assert_eq!(none.party_size(&mut rng), 1);
    }

    #[test]
    fn spearman_ranks() {
        let ordered: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, (i * i) as f64)).collect();
        assert!((spearman(&ordered).expect("varies") - 1.0).abs() < 1e-12);
        let reversed: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, -(i as f64))).collect();
        assert!((spearman(&reversed).expect("varies") + 1.0).abs() < 1e-12);
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 1500.0)).collect();
        assert_eq!(spearman(&flat), None, "every rating the same: no order yet");
        assert_eq!(spearman(&[(1.0, 2.0)]), None);
    }
}
