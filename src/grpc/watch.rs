//! `WatchSession`: one session's directives, replayed after `after_seq`, then followed live
//! until the session has closed and its last directive is sent. The stream is also the
//! worker's lease on the session (`docs/contract.md`, the worker's lease): it holds it from
//! its first poll until it ends or the client lets go of it.

use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use endcall_core::domain::IssuedDirective;

use super::{convert::DirectiveMapper, error::ApiError, proto::v1 as pb};
use crate::{
    sessions::registry::{Registry, WatchPoll},
    telemetry::metrics,
};

/// Directives taken per registry poll of a watch stream; bounds the time a shard lock is held
/// and the memory one poll copies.
pub(super) const WATCH_BATCH: usize = 64;

/// One watch stream, read by the response body itself.
///
/// HTTP/2 polls this stream for its next message, so a directive wakes one task (the stream's)
/// and is encoded as it is sent: no task of our own, and no buffer, per open stream. A client
/// that stops reading costs at most the directives a session can issue
/// (`MAX_DIRECTIVES_PER_SESSION`: at most 44,316 bytes with every reminder's instructions at
/// their longest, less than one HTTP/2 window), and the stream still ends, giving its
/// `--max-watchers` slot back, once the session has closed and they are sent.
pub(super) struct Follow {
    registry: Arc<Registry>,
    mapper: DirectiveMapper,
    /// Cancelled when the server starts draining: the stream ends with UNAVAILABLE.
    draining: CancellationToken,
    id: String,
    /// The seq of the last directive handed out: the next poll starts after it.
    cursor: u64,
    /// Taken from the last poll, not handed out yet.
    batch: std::vec::IntoIter<IssuedDirective>,
    /// The last poll was a full batch: poll again before waiting.
    more: bool,
    /// The session closed (or was dropped) and everything is handed out once `batch` is.
    finished: bool,
    /// `None` once the stream has ended (or if the session was gone at the poll).
    changed: Option<watch::Receiver<()>>,
    /// Held from the call until the stream ends, or the client lets go of it first.
    open: Option<(OwnedSemaphorePermit, metrics::WatcherGuard, LeaseHeld)>,
}

/// The session's lease, taken by the stream's first poll (`poll_watch` with `opening`) and
/// given back when this is dropped.
struct LeaseHeld {
    registry: Arc<Registry>,
    id: String,
}

impl Drop for LeaseHeld {
    fn drop(&mut self) {
        self.registry.stream_closed(&self.id);
    }
}

impl Follow {
    pub(super) fn new(
        registry: Arc<Registry>,
        mapper: DirectiveMapper,
        draining: CancellationToken,
        id: String,
        cursor: u64,
        first: WatchPoll,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        let lease = LeaseHeld {
            registry: Arc::clone(&registry),
            id: id.clone(),
        };
        let mut follow = Follow {
            registry,
            mapper,
            draining,
            id,
            cursor,
            batch: Vec::new().into_iter(),
            more: false,
            finished: false,
            changed: None,
            open: Some((slot, metrics::WatcherGuard::new(), lease)),
        };
        follow.take(first);
        follow
    }

    fn take(&mut self, poll: WatchPoll) {
        self.more = poll.directives.len() == WATCH_BATCH;
        self.finished = poll.finished;
        self.batch = poll.directives.into_iter();
        self.changed = poll.changed;
    }

    pub(super) fn into_stream(self) -> impl Stream<Item = Result<pb::Directive, Status>> + Send {
        futures_util::stream::unfold(self, |mut follow| async move {
            let item = follow.next().await?;
            Some((item, follow))
        })
    }

    /// The stream's next message: a directive, or a closing error; `None` ends the stream.
    async fn next(&mut self) -> Option<Result<pb::Directive, Status>> {
        loop {
            if let Some(directive) = self.batch.next() {
                self.cursor = directive.seq;
                return Some(Ok(self.mapper.directive(&self.id, &directive)));
            }
            if self.finished {
                self.end();
                return None;
            }
            if !self.more {
                let Some(changed) = self.changed.as_mut() else {
                    self.end();
                    return None;
                };
                tokio::select! {
                    result = changed.changed() => {
                        if result.is_err() {
                            // The session was dropped after its retention.
                            self.end();
                            return None;
                        }
                    }
                    () = self.draining.cancelled() => {
                        self.end();
                        return Some(Err(Status::unavailable(
                            "server is draining: reconnect with after_seq set to the last seq received",
                        )));
                    }
                }
            }
            match self
                .registry
                .poll_watch(&self.id, self.cursor, WATCH_BATCH, false)
            {
                Ok(poll) => self.take(poll),
                Err(err) => {
                    self.end();
                    return Some(Err(ApiError::from(err).into()));
                }
            }
        }
    }

    /// Nothing more will be sent: the slot, the lease and the subscription go now, before the
    /// client lets go of the stream.
    fn end(&mut self) {
        self.finished = true;
        self.more = false;
        self.changed = None;
        self.open = None;
    }
}
