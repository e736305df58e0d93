//! Carrying out the sidecar's own teardowns: each room the registry hands over (its worker was
//! lost, or never closed after `SHUTDOWN_SESSION`) is deleted through LiveKit's server API, and
//! the result goes back to the registry, which records it and then reports the session.
//!
//! One task takes the orders from an unbounded queue (the registry must never wait on it: it
//! hands orders over with a session just settled, and their number is bounded by the sessions
//! held) and runs each deletion as a task of its own, at most [`CONCURRENT_DELETIONS`] at a
//! time, off every RPC's path.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Weak},
};

use tokio::sync::{mpsc, Semaphore};
use tracing::{error, info, warn};

use endcall_core::domain::{RoomName, TeardownDone, TeardownOrder, TeardownResult};

use crate::sessions::registry::Registry;

/// Deletions under way at once: enough to hang up thousands of calls within a second or two
/// when a node's workers all die together, few enough not to flood LiveKit.
pub(crate) const CONCURRENT_DELETIONS: usize = 64;

/// A room deletion under way; it resolves to what came of it, retries included.
pub(crate) type Deleting<'a> = Pin<Box<dyn Future<Output = TeardownDone> + Send + 'a>>;

/// Deletes a room, hanging up everyone in it (LiveKit's `RoomService.DeleteRoom`).
pub(crate) trait RoomDeleter: Send + Sync + 'static {
    /// Deletes `room`, retrying as it sees fit; the result is never "pending".
    fn delete_room<'a>(&'a self, room: &'a RoomName) -> Deleting<'a>;
}

/// The registry's side: where its hooks put each order.
#[derive(Clone)]
pub(crate) struct TeardownQueue {
    orders: mpsc::UnboundedSender<TeardownOrder>,
}

impl TeardownQueue {
    pub(crate) fn push(&self, order: TeardownOrder) {
        // Fails only once the worker is gone, at the very end of a shutdown: the order stays
        // pending in the session (and in the journal, with `--state-dir`).
        let _ = self.orders.send(order);
    }
}

/// The other end of a [`TeardownQueue`], until [`Teardowns::start`] gives it a worker.
pub(crate) struct Teardowns {
    orders: mpsc::UnboundedReceiver<TeardownOrder>,
}

/// A queue and its receiving end; orders wait in it until the worker starts.
pub(crate) fn queue() -> (TeardownQueue, Teardowns) {
    let (orders, receiver) = mpsc::unbounded_channel();
    (TeardownQueue { orders }, Teardowns { orders: receiver })
}

impl Teardowns {
    /// Starts the worker on the current runtime. It holds the registry weakly, so it ends
    /// with it. Without a deleter (no LiveKit configured), each order is finished at once as
    /// `NOT_CONFIGURED`.
    pub(crate) fn start(self, registry: Weak<Registry>, deleter: Option<Arc<dyn RoomDeleter>>) {
        tokio::spawn(run(self.orders, registry, deleter));
    }
}

async fn run(
    mut orders: mpsc::UnboundedReceiver<TeardownOrder>,
    registry: Weak<Registry>,
    deleter: Option<Arc<dyn RoomDeleter>>,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_DELETIONS));
    while let Some(order) = orders.recv().await {
        let Some(deleter) = deleter.clone() else {
            warn!(
                session_id = %order.session,
                room = %order.room,
                cause = order.cause.as_str(),
                "the call could not be hung up: no LiveKit URL and credentials are configured \
                 (--livekit-url, LIVEKIT_API_KEY, LIVEKIT_API_SECRET)"
            );
            let done = TeardownDone {
                result: TeardownResult::NotConfigured,
                attempts: 0,
                error: None,
            };
            finish(&registry, &order, done);
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let done = deleter.delete_room(&order.room).await;
            drop(slot);
            log(&order, &done);
            finish(&registry, &order, done);
        });
    }
}

fn finish(registry: &Weak<Registry>, order: &TeardownOrder, done: TeardownDone) {
    if let Some(registry) = registry.upgrade() {
        registry.finish_teardown(&order.session, done);
    }
}

fn log(order: &TeardownOrder, done: &TeardownDone) {
    let session_id = order.session.as_str();
    let room = order.room.as_str();
    let cause = order.cause.as_str();
    let result = done.result.as_str();
    if done.result.succeeded() {
        info!(
            session_id,
            room,
            cause,
            result,
            attempts = done.attempts,
            "call hung up"
        );
    } else {
        error!(
            session_id,
            room,
            cause,
            result,
            attempts = done.attempts,
            error = done.error.as_deref().unwrap_or(""),
            "the call could not be hung up"
        );
    }
}
