//! The live event stream: events handlers publish (on `ok` records) fan out to `GET /events`
//! subscribers through a bounded broadcast channel. A subscriber that falls behind is dropped;
//! consumption never waits for one.

use crate::record::Event;
use tokio::sync::broadcast;

/// Events kept for slow subscribers before they are dropped.
pub const CAPACITY: usize = 4096;

/// The event hub.
#[derive(Debug, Clone)]
pub struct EventHub {
    tx: broadcast::Sender<Event>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self { tx: broadcast::channel(CAPACITY).0 }
    }
}

impl EventHub {
    /// Publishes events; without subscribers they are discarded.
    pub fn publish(&self, events: impl IntoIterator<Item = Event>) {
        for event in events {
            let _ = self.tx.send(event);
        }
    }

    /// A new subscription.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
