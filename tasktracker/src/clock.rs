//! The wall clock a TaskTracker reads: the Unix times it reports (a run's
//! start and end, heartbeats) and the instants at which jobs sent ahead of
//! their time start.
//!
//! The JobTracker names those instants in Unix milliseconds, so waiting for
//! one is a question for the wall clock, not for the runtime's monotonic
//! timer. [`SystemClock`] is the real one; [`ManualClock`] moves only when
//! told to, so a test can hold a job before its instant for as long as it
//! likes and then release it exactly at it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::watch;

/// A wait for an instant of a [`Clock`].
pub type ClockSleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Where a TaskTracker reads the time. See [`SystemClock`] and
/// [`ManualClock`].
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch, now.
    fn now_ms(&self) -> i64;

    /// Resolves once [`now_ms`](Clock::now_ms) has reached `at_ms`; at
    /// once if it has.
    fn sleep_until_ms(&self, at_ms: i64) -> ClockSleep;
}

/// The system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

/// Longest single timer wait for an instant: the wall clock may be set
/// while waiting, so a far instant is looked at again after this.
const MAX_TIMER_WAIT: Duration = Duration::from_secs(3600);

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        lts_common::now_ms()
    }

    fn sleep_until_ms(&self, at_ms: i64) -> ClockSleep {
        Box::pin(async move {
            loop {
                let left = at_ms.saturating_sub(lts_common::now_ms());
                let Ok(left) = u64::try_from(left) else {
                    return;
                };
                if left == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(left).min(MAX_TIMER_WAIT)).await;
            }
        })
    }
}

/// A clock that moves only when [`set`](ManualClock::set) or
/// [`advance`](ManualClock::advance) is called; waits on it end when it
/// reaches their instant. For tests of what happens at an instant.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<i64>,
}

impl ManualClock {
    /// A clock standing at `now_ms` (Unix milliseconds).
    pub fn new(now_ms: i64) -> ManualClock {
        ManualClock {
            now: watch::Sender::new(now_ms),
        }
    }

    /// A clock standing at the system's time now.
    pub fn at_system_time() -> ManualClock {
        Self::new(lts_common::now_ms())
    }

    /// Moves the clock to `now_ms`; it never goes back.
    pub fn set(&self, now_ms: i64) {
        self.now.send_if_modified(|now| {
            let moved = now_ms > *now;
            if moved {
                *now = now_ms;
            }
            moved
        });
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.set(self.now_ms().saturating_add(by));
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        *self.now.borrow()
    }

    fn sleep_until_ms(&self, at_ms: i64) -> ClockSleep {
        let mut now = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; should it go, the
            // instant can never come.
            if now.wait_for(|now| *now >= at_ms).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_a_wait_exactly_when_it_reaches_the_instant() {
        let clock = ManualClock::new(1_000);
        let wait = tokio::spawn(clock.sleep_until_ms(1_500));
        clock.advance(Duration::from_millis(499));
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert!(!wait.is_finished(), "still waiting at 1499");
        clock.set(1_000);
        assert_eq!(clock.now_ms(), 1_499, "it never goes back");
        clock.advance(Duration::from_millis(1));
        wait.await.unwrap();
        // An instant already reached does not wait.
        clock.sleep_until_ms(1_200).await;
    }

    #[tokio::test]
    async fn the_system_clock_waits_for_the_instant() {
        let at = lts_common::now_ms() + 40;
        SystemClock.sleep_until_ms(at).await;
        assert!(lts_common::now_ms() >= at);
        SystemClock.sleep_until_ms(at - 1_000).await;
    }
}
