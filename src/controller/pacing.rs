//! Paces the isolation probes of settled tenants.
//!
//! Probes and onboarding share the controller's reconcile slots. Unbounded,
//! the probes of the tenants already Ready can take every slot (measured: at
//! 357 Ready tenants and a 20 s interval no new tenant was picked up for
//! minutes), and kube-runtime's scheduler hands a freed slot to whichever
//! pending object its hash set yields first, not the one waiting longest.
//! So a probe runs only while it holds one of a few probe slots; one that
//! finds none returns at once and comes back a little later, and the slots
//! left are onboarding's. When the tenants outgrow what the probe slots can
//! measure in one interval, the interval stretches instead of the probes
//! piling up, and the stretch is shown (`tenantry_probe_interval_seconds`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::reflector::Store;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::{Tenant, TenantPhase};

/// Weight of the newest probe in the running mean of probe durations.
const SMOOTHING: f64 = 0.1;
/// The probe slots are planned to be busy at most this share of the time, so
/// a slower spell does not at once make every probe late.
const TARGET_UTILISATION: f64 = 0.8;

pub struct ProbePacer {
    slots: Arc<Semaphore>,
    slot_count: usize,
    /// Running mean of one probe's duration, in microseconds (0: none yet).
    mean_probe_micros: Arc<AtomicU64>,
    /// The Tenants this process manages, to count those probed.
    tenants: Store<Tenant>,
    /// When the Ready tenants were last counted, and how many there were:
    /// counting walks the store, so it is done at most every COUNT_EVERY.
    ready_count: Mutex<Option<(Instant, usize)>>,
}

const COUNT_EVERY: Duration = Duration::from_secs(10);

/// A held probe slot; its holder's probe time feeds the running mean.
pub struct ProbeSlot {
    _permit: OwnedSemaphorePermit,
    started: Instant,
    mean_probe_micros: Arc<AtomicU64>,
}

impl ProbePacer {
    pub fn new(slot_count: usize, tenants: Store<Tenant>) -> Self {
        let slot_count = slot_count.max(1);
        Self {
            slots: Arc::new(Semaphore::new(slot_count)),
            slot_count,
            mean_probe_micros: Arc::default(),
            tenants,
            ready_count: Mutex::default(),
        }
    }

    /// A probe slot if one is free now; never waits, so a probe without a
    /// slot gives its reconcile slot back at once.
    pub fn try_slot(&self) -> Option<ProbeSlot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(ProbeSlot {
            _permit: permit,
            started: Instant::now(),
            mean_probe_micros: self.mean_probe_micros.clone(),
        })
    }

    /// The time the probe slots need to probe every Ready tenant once (only
    /// those are probed on a timer), from the probes measured so far.
    pub fn round(&self) -> Duration {
        let mean = Duration::from_micros(self.mean_probe_micros.load(Ordering::Relaxed));
        probe_round(self.ready_tenants(), mean, self.slot_count)
    }

    fn ready_tenants(&self) -> usize {
        let mut counted = self.ready_count.lock().expect("lock");
        match *counted {
            Some((at, count)) if at.elapsed() < COUNT_EVERY => count,
            _ => {
                let count = self
                    .tenants
                    .state()
                    .iter()
                    .filter(|t| t.status.as_ref().and_then(|s| s.phase) == Some(TenantPhase::Ready))
                    .count();
                *counted = Some((Instant::now(), count));
                count
            }
        }
    }

    /// How long a probe that found no free slot waits before it asks again:
    /// long enough that the retries of many such probes cost little, short
    /// against the interval, and jittered so they do not return together.
    pub fn retry_delay(&self, interval: Duration) -> Duration {
        let max = (interval / 20).clamp(Duration::from_secs(2), Duration::from_secs(60));
        super::jitter(Duration::from_secs(1), max)
    }
}

impl Drop for ProbeSlot {
    fn drop(&mut self) {
        record_probe(&self.mean_probe_micros, self.started.elapsed());
    }
}

fn record_probe(mean_probe_micros: &AtomicU64, took: Duration) {
    let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    // A lost update between two probes ending together only weights the
    // mean slightly differently; no lock is worth that.
    let before = mean_probe_micros.load(Ordering::Relaxed);
    let mean = if before == 0 {
        took
    } else {
        (before as f64 * (1.0 - SMOOTHING) + took as f64 * SMOOTHING) as u64
    };
    mean_probe_micros.store(mean.max(1), Ordering::Relaxed);
}

/// `configured`, or the probe round when that is longer.
pub fn paced_interval(
    configured: Duration,
    tenants: usize,
    mean_probe: Duration,
    slots: usize,
) -> Duration {
    configured.max(probe_round(tenants, mean_probe, slots))
}

/// The time `slots` probe slots, kept at most TARGET_UTILISATION busy, need
/// to probe `tenants` tenants once each.
pub fn probe_round(tenants: usize, mean_probe: Duration, slots: usize) -> Duration {
    let needed =
        mean_probe.as_secs_f64() * tenants as f64 / (slots.max(1) as f64 * TARGET_UTILISATION);
    Duration::try_from_secs_f64(needed).unwrap_or(Duration::MAX)
}

/// The probe slots for `concurrency` reconcile slots when none are
/// configured: a quarter, at least one, so onboarding keeps three quarters.
pub fn default_probe_slots(concurrency: u16) -> usize {
    usize::from(concurrency / 4).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_interval_holds_while_the_slots_keep_up() {
        // 1,000 tenants, 50 ms each, 4 slots: 15.6 s of probing per round.
        let interval = paced_interval(
            Duration::from_secs(300),
            1_000,
            Duration::from_millis(50),
            4,
        );
        assert_eq!(interval, Duration::from_secs(300));
        // Nothing measured yet: nothing to stretch for.
        assert_eq!(
            paced_interval(Duration::from_secs(300), 10_000, Duration::ZERO, 4),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn the_interval_stretches_when_the_tenants_outgrow_the_slots() {
        // 10,000 tenants, 200 ms each, 4 slots at 80%: 625 s per round.
        let interval = paced_interval(
            Duration::from_secs(300),
            10_000,
            Duration::from_millis(200),
            4,
        );
        assert_eq!(interval, Duration::from_secs(625));
        // Twice the slots, half the round.
        let interval = paced_interval(
            Duration::from_secs(300),
            10_000,
            Duration::from_millis(200),
            8,
        );
        assert_eq!(interval, Duration::from_millis(312_500));
    }

    #[test]
    fn no_more_probes_run_at_once_than_there_are_slots() {
        let pacer = pacer(2, 0);
        let first = pacer.try_slot().expect("a free slot");
        let _second = pacer.try_slot().expect("a free slot");
        assert!(pacer.try_slot().is_none(), "a third probe must wait");
        drop(first);
        assert!(pacer.try_slot().is_some(), "a slot is free again");
    }

    fn pacer(slots: usize, tenants: usize) -> ProbePacer {
        let mut writer = kube::runtime::reflector::store::Writer::<Tenant>::default();
        for i in 0..tenants {
            let spec = crate::api::TenantSpec {
                display_name: None,
                class: None,
                database: Default::default(),
                storage: Default::default(),
                credentials: crate::api::CredentialsSpec {
                    namespace: "apps".into(),
                    secret_name: None,
                },
                deletion: Default::default(),
                suspended: false,
            };
            let mut tenant = Tenant::new(&format!("t{i}"), spec);
            // Every other tenant is Ready; only those are probed on a timer.
            tenant.status = Some(crate::api::TenantStatus {
                phase: Some(if i % 2 == 0 {
                    TenantPhase::Ready
                } else {
                    TenantPhase::Provisioning
                }),
                ..Default::default()
            });
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(tenant));
        }
        ProbePacer::new(slots, writer.as_reader())
    }

    #[test]
    fn the_round_follows_the_probes_that_ended_and_the_tenants_there_are() {
        let pacer = pacer(2, 2_000);
        assert_eq!(pacer.round(), Duration::ZERO);
        record_probe(&pacer.mean_probe_micros, Duration::from_millis(100));
        // 1,000 Ready tenants at 100 ms on 2 slots at 80%: 62.5 s.
        assert_eq!(pacer.round(), Duration::from_millis(62_500));
        // A slower probe moves the mean a tenth of the way.
        record_probe(&pacer.mean_probe_micros, Duration::from_millis(1_100));
        assert_eq!(pacer.round(), Duration::from_millis(125_000));
    }

    #[test]
    fn a_probe_without_a_slot_comes_back_soon_but_not_at_once() {
        let pacer = pacer(1, 0);
        for _ in 0..100 {
            let delay = pacer.retry_delay(Duration::from_secs(300));
            assert!((Duration::from_secs(1)..=Duration::from_secs(15)).contains(&delay));
        }
        let delay = pacer.retry_delay(Duration::from_secs(5));
        assert!(delay <= Duration::from_secs(2));
    }

    #[test]
    fn onboarding_keeps_three_quarters_of_the_slots() {
        assert_eq!(default_probe_slots(16), 4);
        assert_eq!(default_probe_slots(2), 1);
        assert_eq!(default_probe_slots(1), 1);
    }
}
