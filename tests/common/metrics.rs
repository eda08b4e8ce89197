//! A `/metrics` scrape and the samples the tests read from it.

/// A `/metrics` scrape.
#[derive(Debug, Clone)]
pub struct Metrics(pub String);

impl Metrics {
    /// Every sample of `name` as (labels, value).
    pub fn samples(&self, name: &str) -> Vec<(String, f64)> {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let rest = line.strip_prefix(name)?;
                let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
                    let (labels, value) = rest.split_once('}')?;
                    (labels.to_owned(), value)
                } else if rest.starts_with(' ') {
                    (String::new(), rest)
                } else {
                    return None;
                };
                Some((labels, value.trim().parse().ok()?))
            })
            .collect()
    }

    /// `name` summed over every shard (panics if the metric is missing).
    pub fn sum(&self, name: &str) -> u64 {
        let samples = self.samples(name);
        assert!(!samples.is_empty(), "no metric {name} in:\n{}", self.0);
        samples.iter().map(|(_, v)| *v).sum::<f64>() as u64
    }

    /// `name` summed over the samples labelled `reason="<reason>"` (0 when there is none).
    pub fn by_reason(&self, name: &str, reason: &str) -> u64 {
        let label = format!("reason=\"{reason}\"");
        self.samples(name)
            .iter()
            .filter(|(labels, _)| labels.contains(&label))
            .map(|(_, v)| *v as u64)
            .sum()
    }

    /// `name{shard="N"}` for each shard, in shard order.
    pub fn per_shard(&self, name: &str) -> Vec<u64> {
        let mut by_shard: Vec<(usize, u64)> = self
            .samples(name)
            .into_iter()
            .filter_map(|(labels, v)| {
                let shard = labels.split("shard=\"").nth(1)?.split('"').next()?;
                Some((shard.parse().ok()?, v as u64))
            })
            .collect();
        by_shard.sort();
        by_shard.into_iter().map(|(_, v)| v).collect()
    }
}
