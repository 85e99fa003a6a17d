//! Which JobTracker of a cluster leads: the seam for the work only one
//! tracker may do at a time.
//!
//! Some work must run on one tracker only: firing cron and repeat cycles
//! ([`crate::run_scheduler`]) and sweeping the runs of a shared store whose
//! leases expired. That work runs under [`while_leading`]: it starts when
//! this tracker becomes leader, is dropped at once when it stops leading,
//! and starts again (with the new term) when it leads again. Everything
//! else (serving clients and TaskTrackers, dispatch, feedback) runs on
//! every tracker.
//!
//! A single tracker (the embedded default) always leads: [`AlwaysLeader`].
//! A cluster plugs in an election over a coordination service; the code
//! that uses it does not change.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A leadership term: it grows each time a tracker of the cluster becomes
/// leader, so work done under an older term can be told apart.
pub type Term = u64;

/// Whether this tracker leads, and in which term.
pub trait Election: Send + Sync + 'static {
    /// The term this tracker leads in, `None` while it does not lead; a
    /// task waits for leadership to start or end with `changed()`.
    fn leadership(&self) -> watch::Receiver<Option<Term>>;

    /// The term this tracker leads in now, if it leads.
    fn term(&self) -> Option<Term> {
        *self.leadership().borrow()
    }

    /// Whether this tracker leads now.
    fn is_leader(&self) -> bool {
        self.term().is_some()
    }
}

/// The election of a tracker that is alone: it leads from the start, in
/// term 1, for good.
pub struct AlwaysLeader {
    leadership: watch::Sender<Option<Term>>,
}

impl AlwaysLeader {
    /// Leads in term 1.
    pub fn new() -> Arc<Self> {
        Arc::new(AlwaysLeader {
            leadership: watch::Sender::new(Some(1)),
        })
    }
}

impl Election for AlwaysLeader {
    fn leadership(&self) -> watch::Receiver<Option<Term>> {
        self.leadership.subscribe()
    }
}

/// Runs the work `start(term)` builds while this tracker leads, until
/// `shutdown` fires: it starts when leadership starts, is dropped at once
/// when leadership ends or changes term, and starts again for the next
/// term. `running` says which term the work runs in now (`None`: it does
/// not run), for whoever watches (metrics, tests).
pub async fn while_leading<F, Fut>(
    election: Arc<dyn Election>,
    shutdown: CancellationToken,
    running: watch::Sender<Option<Term>>,
    mut start: F,
) where
    F: FnMut(Term) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut leadership = election.leadership();
    loop {
        let term = *leadership.borrow_and_update();
        if let Some(term) = term {
            tracing::info!(term, "leading: once-only work starts");
            running.send_replace(Some(term));
            let work = start(term);
            tokio::pin!(work);
            let mut ended = false;
            tokio::select! {
                _ = &mut work => ended = true,
                r = leadership.changed() => if r.is_err() {
                    // The election is gone: nobody can tell this tracker
                    // it stopped leading, so it stops now.
                    running.send_replace(None);
                    return;
                },
                _ = shutdown.cancelled() => {}
            }
            // Dropping the work here stops it before anything else runs.
            running.send_replace(None);
            tracing::info!(term, "once-only work stopped");
            if shutdown.is_cancelled() {
                return;
            }
            if !ended {
                continue;
            }
        }
        // Not leading (or the work ended by itself): wait for a change.
        tokio::select! {
            r = leadership.changed() => if r.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    struct Flip(watch::Sender<Option<Term>>);

    impl Election for Flip {
        fn leadership(&self) -> watch::Receiver<Option<Term>> {
            self.0.subscribe()
        }
    }

    struct Running(Arc<AtomicBool>);

    impl Drop for Running {
        fn drop(&mut self) {
            self.0.store(false, Ordering::SeqCst);
        }
    }

    async fn until(rx: &mut watch::Receiver<Option<Term>>, want: Option<Term>) {
        rx.wait_for(|t| *t == want).await.expect("watch open");
    }

    #[tokio::test(start_paused = true)]
    async fn work_runs_only_while_leading_and_stops_at_once() {
        let election = Arc::new(Flip(watch::Sender::new(None)));
        let shutdown = CancellationToken::new();
        let (running_tx, mut running) = watch::channel(None);
        let ticks = Arc::new(AtomicU64::new(0));
        let alive = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(while_leading(
            election.clone(),
            shutdown.clone(),
            running_tx,
            {
                let ticks = ticks.clone();
                let alive = alive.clone();
                move |_term| {
                    let ticks = ticks.clone();
                    alive.store(true, Ordering::SeqCst);
                    let guard = Running(alive.clone());
                    async move {
                        let _guard = guard;
                        loop {
                            ticks.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        }
                    }
                }
            },
        ));

        // Not leading: nothing runs, however long it waits.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 0);

        election.0.send_replace(Some(7));
        until(&mut running, Some(7)).await;
        tokio::time::sleep(std::time::Duration::from_millis(95)).await;
        assert!(ticks.load(Ordering::SeqCst) >= 5);

        election.0.send_replace(None);
        until(&mut running, None).await;
        assert!(!alive.load(Ordering::SeqCst), "the work was dropped");
        let stopped_at = ticks.load(Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), stopped_at);

        // Leading again, in a new term: the work starts again.
        election.0.send_replace(Some(8));
        until(&mut running, Some(8)).await;
        assert!(alive.load(Ordering::SeqCst));

        shutdown.cancel();
        task.await.expect("ends at shutdown");
        assert!(!alive.load(Ordering::SeqCst));
        assert_eq!(*running.borrow(), None);
    }

    #[test]
    fn a_lone_tracker_always_leads() {
        let e = AlwaysLeader::new();
        assert_eq!(e.term(), Some(1));
        assert!(e.is_leader());
    }
}
