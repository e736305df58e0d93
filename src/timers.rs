//! The timer wheel behind every session's deadlines: one task for all sessions.
//!
//! A task per deadline would cost a task and a tokio timer entry per waiting session; one
//! `DelayQueue` holds them all and hands each expiry back to the registry. Entries are never
//! cancelled: the registry treats a stale expiry as "check what is due now".

use std::sync::Weak;

use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_util::time::DelayQueue;

use crate::{
    clock::Clock,
    domain::{SessionId, Time},
    registry::Registry,
    telemetry::metrics,
};

pub(crate) fn spawn(
    registry: Weak<Registry>,
    clock: Clock,
    mut requests: mpsc::UnboundedReceiver<(SessionId, Time)>,
) {
    tokio::spawn(async move {
        let mut queue: DelayQueue<(SessionId, Time)> = DelayQueue::new();
        loop {
            tokio::select! {
                request = requests.recv() => match request {
                    Some((id, at)) => {
                        queue.insert_at((id, at), clock.instant_at(at));
                    }
                    // The registry is gone.
                    None => break,
                },
                Some(expired) = queue.next() => {
                    let (id, at) = expired.into_inner();
                    let Some(registry) = registry.upgrade() else { break };
                    registry.on_timer(&id, at);
                }
            }
            metrics::timers_pending(queue.len());
        }
    });
}
