//! Runs released at their instant that have not begun yet.
//!
//! When thousands of runs sent ahead fall due at the same instant, starting
//! them on time comes first: while any of them has not begun, the
//! TaskTracker puts off reporting the outcomes of those already done and
//! sending anything to the JobTracker (whose work on those messages would
//! take the same cores). The hold is bounded by [`MAX_HOLD`]: a runner that
//! is slow to be polled never holds outcomes back for longer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Longest a release holds back outcomes and outbound messages.
pub(crate) const MAX_HOLD: Duration = Duration::from_millis(50);

/// Counts released runs whose task has not begun.
#[derive(Debug, Default)]
pub(crate) struct Starting {
    pending: AtomicUsize,
    /// When the current hold ends at the latest, as milliseconds of the
    /// runtime clock since `epoch`; 0 when there is none.
    hold_until_ms: AtomicUsize,
    epoch: std::sync::OnceLock<Instant>,
    all_begun: Notify,
}

impl Starting {
    /// `n` runs were released; holds until they began, or for at most
    /// [`MAX_HOLD`] from now.
    pub(crate) fn released(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.pending.fetch_add(n, Ordering::AcqRel);
        let until = self.now_ms() + MAX_HOLD.as_millis() as usize;
        self.hold_until_ms.store(until, Ordering::Release);
    }

    /// One released run's task began (or will never begin).
    pub(crate) fn begun(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.all_begun.notify_waiters();
        }
    }

    /// The instant the current hold ends at the latest, if one is on.
    pub(crate) fn holding_until(&self) -> Option<Instant> {
        if self.pending.load(Ordering::Acquire) == 0 {
            return None;
        }
        let until = self.hold_until_ms.load(Ordering::Acquire);
        let until = self.epoch() + Duration::from_millis(until as u64);
        (Instant::now() < until).then_some(until)
    }

    /// Resolves once no hold is on: every released run began, or the hold
    /// ran out.
    pub(crate) async fn hold_over(&self) {
        loop {
            let begun = self.all_begun.notified();
            tokio::pin!(begun);
            // Registered before the check, so a run beginning in between
            // is not missed.
            begun.as_mut().enable();
            let Some(until) = self.holding_until() else {
                return;
            };
            tokio::select! {
                _ = &mut begun => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    fn epoch(&self) -> Instant {
        *self.epoch.get_or_init(Instant::now)
    }

    fn now_ms(&self) -> usize {
        self.epoch().elapsed().as_millis() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_hold_ends_when_every_run_began() {
        let starting = Arc::new(Starting::default());
        assert!(starting.holding_until().is_none());
        starting.released(2);
        assert!(starting.holding_until().is_some());
        let waiter = tokio::spawn({
            let starting = starting.clone();
            async move { starting.hold_over().await }
        });
        tokio::task::yield_now().await;
        starting.begun();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let before = Instant::now();
        starting.begun();
        waiter.await.unwrap();
        assert!(starting.holding_until().is_none());
        // Ended by the runs, not by the bound.
        assert!(before.elapsed() < MAX_HOLD);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_never_outlasts_its_bound() {
        let starting = Starting::default();
        starting.released(1);
        let before = Instant::now();
        starting.hold_over().await;
        let held = before.elapsed();
        assert!(
            held <= MAX_HOLD && held >= MAX_HOLD - Duration::from_millis(1),
            "{held:?}"
        );
        assert!(starting.holding_until().is_none());
    }
}
