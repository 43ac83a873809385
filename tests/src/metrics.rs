//! The outcome counter `ixproxy_requests_total{outcome}` as a gateway's admin listener exposes
//! it in the Prometheus text format, and the per-outcome deltas the runner checks around each
//! case.
//!
//! Both runtimes print the same lines: the native gateway's `/metrics`
//! (`ixproxy_requests_total{outcome="forwarded"} 3`), and Envoy's `/stats/prometheus`, where the
//! filter's counter `wasmcustom.ixproxy_requests_total.outcome.forwarded` loses its custom
//! namespace (so no `envoy_` prefix) and the bootstrap's stats tag rule turns the last name
//! segment into the `outcome` label. A name that merely contains `ixproxy_requests_total` (the
//! tag rule missing: `ixproxy_requests_total_outcome_forwarded`) is an error, not a zero.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ixproxy_core::Outcome;

use crate::client::{send, RawRequest};

/// The metric both runtimes count client requests in.
pub const OUTCOME_METRIC: &str = "ixproxy_requests_total";
/// How long a runtime may take to record a request's outcome after the client saw the end of
/// its response (access-log phase, aborted transfers).
pub const COUNT_DEADLINE: Duration = Duration::from_secs(2);
/// Pause between two scrapes while waiting for a count.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Timeout of one scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// The value of [`OUTCOME_METRIC`] per `outcome` label at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutcomeCounts(BTreeMap<String, u64>);

impl OutcomeCounts {
    /// Reads every `ixproxy_requests_total{…outcome="<label>"…} <value>` line of a Prometheus
    /// text exposition; other metrics, comments and blank lines are skipped. A metric that is
    /// absent altogether reads as all zeros.
    ///
    /// # Errors
    /// A sample of the metric without an `outcome` label or with an unparsable value, or a
    /// metric whose name contains [`OUTCOME_METRIC`] without being it (an untagged counter).
    pub fn parse(text: &str) -> Result<OutcomeCounts, String> {
        let mut counts = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            if name != OUTCOME_METRIC {
                if name.contains(OUTCOME_METRIC) {
                    return Err(format!(
                        "{name} is not {OUTCOME_METRIC}{{outcome}}: {line:?}"
                    ));
                }
                continue;
            }
            let rest = &line[name_end..];
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => rest
                    .split_once('}')
                    .ok_or_else(|| format!("unterminated labels: {line:?}"))?,
                None => ("", rest),
            };
            let outcome = labels
                .split(',')
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(key, _)| *key == "outcome")
                .map(|(_, value)| value.trim_matches('"'))
                .ok_or_else(|| format!("no outcome label: {line:?}"))?;
            // The value, then an optional timestamp.
            let value = value.split_whitespace().next().unwrap_or_default();
            let value = value
                .parse::<u64>()
                .ok()
                .or_else(|| {
                    let float = value.parse::<f64>().ok()?;
                    (float >= 0.0 && float.fract() == 0.0).then_some(float as u64)
                })
                .ok_or_else(|| format!("bad value: {line:?}"))?;
            *counts.entry(outcome.to_owned()).or_insert(0) += value;
        }
        Ok(OutcomeCounts(counts))
    }

    /// The count of one outcome label, `None` when the exposition has no sample for it.
    pub fn get(&self, label: &str) -> Option<u64> {
        self.0.get(label).copied()
    }

    /// What changed from `before` to `self`, per label.
    pub fn since(&self, before: &OutcomeCounts) -> Deltas {
        let mut deltas = Deltas::default();
        for label in self.0.keys().chain(before.0.keys()) {
            let now = self.0.get(label).copied().unwrap_or(0);
            let then = before.0.get(label).copied().unwrap_or(0);
            let delta = i128::from(now) - i128::from(then);
            if delta != 0 {
                deltas.0.insert(label.clone(), delta);
            }
        }
        deltas
    }
}

/// Changes of [`OUTCOME_METRIC`] per label; labels that did not change are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deltas(BTreeMap<String, i128>);

impl Deltas {
    /// One more for each of `outcomes` (repeats add up), nothing for every other label.
    pub fn of(outcomes: impl IntoIterator<Item = Outcome>) -> Deltas {
        let mut deltas = Deltas::default();
        for outcome in outcomes {
            *deltas.0.entry(outcome.as_str().to_owned()).or_insert(0) += 1;
        }
        deltas
    }
}

impl fmt::Display for Deltas {
    /// `{forwarded: +1, origin_timeout: +8}`, or `{}` for no change at all.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(label, delta)| format!("{label}: {delta:+}"))
            .collect();
        write!(f, "{{{}}}", parts.join(", "))
    }
}

/// The current counts from `GET path` on the admin listener `admin`.
///
/// # Errors
/// The admin listener did not answer 200, or the text does not parse (see
/// [`OutcomeCounts::parse`]).
pub fn scrape(admin: SocketAddr, path: &str) -> Result<OutcomeCounts, String> {
    let req = RawRequest::get(&admin.to_string(), path);
    let response =
        send(admin, &req, SCRAPE_TIMEOUT).map_err(|e| format!("GET {path} on {admin}: {e}"))?;
    if response.status != 200 {
        return Err(format!("GET {path} on {admin}: status {}", response.status));
    }
    OutcomeCounts::parse(&response.body_text()).map_err(|e| format!("GET {path} on {admin}: {e}"))
}

/// Panics unless `gateway`'s admin listener shows each `(outcome, count)` of `expected`: for the
/// runtime-specific tests that check absolute counts after a known sequence of requests.
pub fn assert_outcome_counts<G: crate::Gateway>(gateway: &G, expected: &[(&str, u64)]) {
    let (admin, path) = gateway.metrics_endpoint();
    let counts = scrape(admin, path).unwrap_or_else(|e| panic!("{} metrics: {e}", G::NAME));
    for (outcome, count) in expected {
        assert_eq!(
            counts.get(outcome),
            Some(*count),
            "{}: ixproxy_requests_total{{outcome=\"{outcome}\"}} in {counts:?}",
            G::NAME
        );
    }
}

/// The value of the sample of metric `name` whose labels are exactly `labels` (in any order)
/// in a Prometheus text exposition; `None` when there is no such sample. Both runtimes order
/// labels their own way (the native gateway sorts them, Envoy keeps its tag rules' order).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut wanted: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    wanted.sort();
    text.lines().map(str::trim).find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (found, value) = match rest.strip_prefix('{') {
            Some(rest) => {
                let (inside, value) = rest.split_once('}')?;
                let mut found: Vec<(String, String)> = inside
                    .split(',')
                    .filter(|p| !p.trim().is_empty())
                    .filter_map(|p| p.split_once('='))
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
                    .collect();
                found.sort();
                (found, value)
            }
            None if rest.starts_with(' ') => (Vec::new(), rest),
            None => return None,
        };
        (found == wanted).then(|| value.split_whitespace().next()?.parse().ok())?
    })
}

/// Why [`await_deltas`] gave up.
#[derive(Debug, Clone)]
pub struct Mismatch {
    /// What went wrong, naming the runtime and the expected and observed deltas.
    pub problem: String,
    /// The last counts read, when a scrape worked.
    pub last: Option<OutcomeCounts>,
}

/// Scrapes until the counts have moved from `before` by exactly `expected` or
/// [`COUNT_DEADLINE`] has passed (bounded polling: a runtime may count a moment after the
/// client saw the end of the response), and returns the counts that matched.
///
/// # Errors
/// A [`Mismatch`] naming `runtime` with the expected and the observed deltas, or a failed
/// scrape.
pub fn await_deltas(
    admin: SocketAddr,
    path: &str,
    runtime: &str,
    before: &OutcomeCounts,
    expected: &Deltas,
) -> Result<OutcomeCounts, Mismatch> {
    let deadline = Instant::now() + COUNT_DEADLINE;
    loop {
        let after = scrape(admin, path).map_err(|e| Mismatch {
            problem: format!("{runtime} metrics: {e}"),
            last: None,
        })?;
        let observed = after.since(before);
        if observed == *expected {
            return Ok(after);
        }
        if Instant::now() >= deadline {
            return Err(Mismatch {
                problem: format!(
                    "{runtime} counted {observed} in {OUTCOME_METRIC} (expected {expected}, \
                     waited {COUNT_DEADLINE:?})"
                ),
                last: Some(after),
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `ixproxy serve`'s `/metrics` prints (prometheus crate text encoder).
    const NATIVE: &str = "# HELP ixproxy_requests_total Client requests by outcome.\n\
        # TYPE ixproxy_requests_total counter\n\
        ixproxy_requests_total{outcome=\"bad_signature\"} 0\n\
        ixproxy_requests_total{outcome=\"forwarded\"} 2\n\
        ixproxy_requests_total{outcome=\"origin_timeout\"} 1\n\
        # TYPE ixproxy_config_reloads_total counter\n\
        ixproxy_config_reloads_total{result=\"ok\"} 0\n";

    #[test]
    fn reads_the_outcome_counter_and_nothing_else() {
        let counts = OutcomeCounts::parse(NATIVE).expect("parses");
        let zero = OutcomeCounts::default();
        assert_eq!(
            counts.since(&zero).to_string(),
            "{forwarded: +2, origin_timeout: +1}"
        );
        // Other labels and a timestamp are allowed; Envoy prints the same sample lines.
        let envoy = "# TYPE ixproxy_requests_total counter\n\
            ixproxy_requests_total{source=\"a\",outcome=\"forwarded\"} 3 1700000000\n\
            envoy_cluster_upstream_rq_total{envoy_cluster_name=\"ixproxy_plain\"} 9\n";
        let later = OutcomeCounts::parse(envoy).expect("parses");
        assert_eq!(
            later.since(&counts).to_string(),
            "{forwarded: +1, origin_timeout: -1}"
        );
        assert_eq!(OutcomeCounts::parse("").expect("empty"), zero);
    }

    #[test]
    fn an_untagged_or_unlabelled_counter_is_an_error() {
        for bad in [
            "ixproxy_requests_total_outcome_forwarded 1\n",
            "envoy_ixproxy_requests_total{outcome=\"forwarded\"} 1\n",
            "ixproxy_requests_total 1\n",
            "ixproxy_requests_total{outcome=\"forwarded\"} many\n",
        ] {
            assert!(OutcomeCounts::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expected_deltas_add_up_and_print() {
        let mut outcomes = vec![Outcome::OriginTimeout; 8];
        outcomes.push(Outcome::Forwarded);
        assert_eq!(
            Deltas::of(outcomes).to_string(),
            "{forwarded: +1, origin_timeout: +8}"
        );
        assert_eq!(Deltas::of([]).to_string(), "{}");
    }
}
