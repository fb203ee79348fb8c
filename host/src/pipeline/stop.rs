//! The one signal a partition's work obeys: stop (the partition is revoked, or the host is
//! shutting down). One small type instead of a channel threaded by hand (mini-redis's
//! `shutdown.rs` is the model): what waits, waits through it, and learns it was stopped as an
//! `Err(Stopped)` it can pass up with `?`.

use std::time::Duration;
use tokio::sync::watch;

/// Told to stop: what was in progress is abandoned (its record is delivered again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

/// A partition's stop signal. Cheap to clone: every piece of work of the partition holds one.
#[derive(Debug, Clone)]
pub struct Stop {
    rx: watch::Receiver<bool>,
}

impl Stop {
    /// A signal and the sender that raises it.
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self { rx })
    }

    /// Whether the stop was raised.
    pub fn is_stopped(&self) -> bool {
        *self.rx.borrow()
    }

    /// `Err(Stopped)` once the stop was raised.
    pub fn check(&self) -> Result<(), Stopped> {
        if self.is_stopped() { Err(Stopped) } else { Ok(()) }
    }

    /// Resolves when the stop is raised (or its sender is gone).
    pub async fn stopped(&mut self) {
        let _ = self.rx.wait_for(|s| *s).await;
    }

    /// Sleeps `d`, or `Err(Stopped)` when the stop comes first.
    pub async fn sleep(&mut self, d: Duration) -> Result<(), Stopped> {
        tokio::select! {
            () = self.stopped() => Err(Stopped),
            () = tokio::time::sleep(d) => Ok(()),
        }
    }

    /// Runs `work` until it ends, or `Err(Stopped)` when the stop comes first (the work is
    /// dropped).
    pub async fn unless_stopped<T>(&mut self, work: impl Future<Output = T>) -> Result<T, Stopped> {
        tokio::select! {
            () = self.stopped() => Err(Stopped),
            out = work => Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sleep_ends_early_when_stopped_and_every_clone_sees_it() {
        let (tx, mut stop) = Stop::new();
        assert_eq!(stop.sleep(Duration::from_millis(1)).await, Ok(()));
        let mut other = stop.clone();
        let sleeping = tokio::spawn(async move { other.sleep(Duration::from_secs(60)).await });
        tx.send_replace(true);
        assert_eq!(sleeping.await.expect("join"), Err(Stopped));
        assert!(stop.is_stopped() && stop.check().is_err());
        assert_eq!(stop.unless_stopped(std::future::pending::<()>()).await, Err(Stopped));
    }
}
