//! How long a TaskTracker waits before it tries its JobTrackers again.
//!
//! After a JobTracker restart every TaskTracker of the cluster reconnects
//! at once; the first tries must come quickly (the JobTracker is often back
//! within a second) and must not all land at the same instant. So the step
//! starts small and doubles up to a low cap, and each wait is a random time
//! between half and all of the current step.

use std::time::Duration;

/// The reconnect waits of one TaskTracker.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Steps from `min`, doubling, up to `max` (`min <= max`, as the config
    /// checks).
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            step: min,
        }
    }

    /// A JobTracker answered: the next wait starts from the first step.
    pub(crate) fn reset(&mut self) {
        self.step = self.min;
    }

    /// The wait before the next try, with a random number of the system.
    pub(crate) fn next_wait(&mut self) -> Duration {
        self.next_wait_with(rand::random::<f64>())
    }

    /// The wait before the next try; `unit` in `[0, 1]` picks where in
    /// `[step / 2, step]` it falls (a random number in production).
    pub(crate) fn next_wait_with(&mut self, unit: f64) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            1.0
        };
        let wait = self.step.mul_f64(0.5 + 0.5 * unit);
        self.step = self.step.saturating_mul(2).min(self.max);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_start_small_double_and_stay_under_the_cap() {
        let (min, max) = (100 * MS, 1000 * MS);
        let mut lowest = Backoff::new(min, max);
        let mut highest = Backoff::new(min, max);
        let low: Vec<Duration> = (0..7).map(|_| lowest.next_wait_with(0.0)).collect();
        let high: Vec<Duration> = (0..7).map(|_| highest.next_wait_with(1.0)).collect();
        assert_eq!(
            low,
            [50, 100, 200, 400, 500, 500, 500].map(|ms| ms * MS),
            "half of each step at the least"
        );
        assert_eq!(
            high,
            [100, 200, 400, 800, 1000, 1000, 1000].map(|ms| ms * MS),
            "the whole step at the most, never above the cap"
        );
    }

    #[test]
    fn every_wait_falls_between_half_and_all_of_its_step() {
        let mut backoff = Backoff::new(100 * MS, 1000 * MS);
        let steps = [100, 200, 400, 800, 1000, 1000];
        for (i, unit) in [0.25, 0.5, 0.75, 0.1, 0.9, 0.6].into_iter().enumerate() {
            let step = steps[i] * MS;
            let wait = backoff.next_wait_with(unit);
            assert!(
                wait >= step / 2 && wait <= step,
                "{i}: {wait:?} for {step:?}"
            );
            assert_eq!(wait, step.mul_f64(0.5 + 0.5 * unit));
        }
        // Out-of-range numbers stay within the bounds too.
        let mut odd = Backoff::new(100 * MS, 1000 * MS);
        assert_eq!(odd.next_wait_with(-3.0), 50 * MS);
        assert_eq!(odd.next_wait_with(7.0), 200 * MS);
        assert_eq!(odd.next_wait_with(f64::NAN), 400 * MS);
    }

    #[test]
    fn a_reset_starts_from_the_first_step_again() {
        let mut backoff = Backoff::new(100 * MS, 1000 * MS);
        for _ in 0..10 {
            backoff.next_wait_with(1.0);
        }
        backoff.reset();
        assert_eq!(backoff.next_wait_with(1.0), 100 * MS);
    }

    #[test]
    fn random_waits_spread_within_the_first_step() {
        let waits: Vec<Duration> = (0..200)
            .map(|_| Backoff::new(100 * MS, 1000 * MS).next_wait())
            .collect();
        assert!(waits.iter().all(|w| *w >= 50 * MS && *w <= 100 * MS));
        // Many TaskTrackers do not all pick the same instant.
        let mut distinct = waits.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 100, "{} distinct waits", distinct.len());
    }
}
