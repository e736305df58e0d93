//! Server-wide limits on what clients may take at once: requests in flight, requests per
//! second, open watch streams.
//!
//! Over a limit a request is refused at once with RESOURCE_EXHAUSTED whose message names the
//! flag, never queued: a queue in front of an overloaded sidecar turns its overload into every
//! agent's latency and its memory into whatever the queue holds. RESOURCE_EXHAUSTED rather than
//! UNAVAILABLE because gRPC clients (and retry policies) retry UNAVAILABLE at once, which would
//! hammer the one sidecar a worker has; RESOURCE_EXHAUSTED is what the contract answers for
//! every limit, and the worker's events are idempotent, so it may retry them after a backoff.

use std::{
    convert::Infallible,
    future::Future,
    num::NonZeroU32,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::future::{self, Either, Ready};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{body::Body, codegen::http, server::NamedService, Status};
use tower::{load_shed::error::Overloaded, BoxError, Layer, Service, ServiceBuilder};
use tracing::debug;

use crate::{grpc::error::ApiError, telemetry::metrics};

/// The request limits of one server (see `--max-concurrent-requests` and
/// `--max-requests-per-second`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_concurrent: usize,
    pub per_second: Option<NonZeroU32>,
}

/// The layers, outermost first (see `limit`); named so that no call pays for boxing them.
type Stack<S> = tower::util::Either<PerSecond<Shed<S>>, Shed<S>>;
type Shed<S> = tower::load_shed::LoadShed<tower::limit::ConcurrencyLimit<S>>;
type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

/// One gRPC service behind the request limits, still carrying its name so the router can mount
/// it. Only `EndCallService` is wrapped: health must answer a kubelet even under overload (a
/// shed probe would restart a sidecar that is merely busy), and reflection is a developer's
/// tool.
pub(crate) struct Limited<S> {
    inner: Stack<S>,
    max_concurrent: usize,
    /// A readiness error of the stack, answered by the next call.
    broken: Option<String>,
}

impl<S: Clone> Clone for Limited<S> {
    fn clone(&self) -> Self {
        Limited {
            inner: self.inner.clone(),
            max_concurrent: self.max_concurrent,
            broken: None,
        }
    }
}

impl<S: NamedService> NamedService for Limited<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Limited<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The stack's readiness cannot fail today (the semaphore is never closed, the service
        // is infallible, and load shedding turns "not ready" into a refusal); should it ever,
        // that call gets a status instead of a reset connection.
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(err)) => {
                self.broken = Some(err.to_string());
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if let Some(message) = self.broken.take() {
            return Box::pin(future::ready(Ok(Status::unavailable(message).into_http())));
        }
        let max_concurrent = self.max_concurrent;
        let response = self.inner.call(request);
        Box::pin(async move { Ok(refusal_as_status(response.await, max_concurrent)) })
    }
}

/// Puts `service` behind the request limits. Each clone shares the same limits: tonic clones
/// the service per connection and per request.
pub(crate) fn limit<S>(service: S, limits: RequestLimits) -> Limited<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let max_concurrent = limits.max_concurrent;
    let stack = ServiceBuilder::new()
        // The rate is checked before a concurrency permit is taken, so a refusal costs nothing.
        .option_layer(limits.per_second.map(PerSecondLayer::new))
        // No free permit means "refuse now", not "wait for one" (which would queue unboundedly).
        .load_shed()
        // Bounds the requests being decoded and handled at once, and so their memory.
        .concurrency_limit(max_concurrent)
        .service(service);
    // tonic's router takes infallible services: `Limited` turns a refusal into a gRPC status.
    Limited {
        inner: stack,
        max_concurrent,
        broken: None,
    }
}

/// A request refused by `--max-requests-per-second`.
#[derive(Debug, thiserror::Error)]
#[error("too many requests per second (limit {limit}, --max-requests-per-second)")]
pub(crate) struct RateLimited {
    limit: NonZeroU32,
}

fn refusal_as_status(
    result: Result<http::Response<Body>, BoxError>,
    max_concurrent: usize,
) -> http::Response<Body> {
    let err = match result {
        Ok(response) => return response,
        Err(err) => err,
    };
    let (reason, message) = if err.is::<Overloaded>() {
        (
            "concurrency_limit",
            format!(
                "too many requests in flight (limit {max_concurrent}, --max-concurrent-requests)"
            ),
        )
    } else if err.is::<RateLimited>() {
        ("rate_limit", err.to_string())
    } else {
        // Nothing below returns another error (the service is infallible); if one ever does,
        // the client still gets a status rather than a reset stream.
        return Status::unknown(err.to_string()).into_http();
    };
    metrics::rejected(reason);
    // DEBUG, not WARN: under overload a line per refusal would add to the load being shed;
    // endcall_requests_rejected_total counts them.
    debug!(reason, "request shed");
    Status::resource_exhausted(message).into_http()
}

/// `--max-requests-per-second`, as a layer. tower's own `RateLimit` waits for the next slot
/// (and is not `Clone`, so it would need a `Buffer`, a queue); this one refuses at once.
/// governor's GCRA allows a burst of one second's worth, then the steady rate.
#[derive(Clone)]
struct PerSecondLayer {
    limiter: Arc<DefaultDirectRateLimiter>,
    limit: NonZeroU32,
}

impl PerSecondLayer {
    fn new(limit: NonZeroU32) -> Self {
        PerSecondLayer {
            limiter: Arc::new(RateLimiter::direct(Quota::per_second(limit))),
            limit,
        }
    }
}

impl<S> Layer<S> for PerSecondLayer {
    type Service = PerSecond<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PerSecond {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
struct PerSecond<S> {
    inner: S,
    layer: PerSecondLayer,
}

impl<S, R> Service<R> for PerSecond<S>
where
    S: Service<R, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<Ready<Result<S::Response, BoxError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        match self.layer.limiter.check() {
            Ok(()) => Either::Right(self.inner.call(request)),
            Err(_) => Either::Left(future::ready(Err(RateLimited {
                limit: self.layer.limit,
            }
            .into()))),
        }
    }
}

/// `--max-watchers`: each open `WatchSession` stream holds one slot until it ends or its
/// client lets go of it. Streams are counted here rather than by the request limit, which a
/// stream would otherwise hold for the whole call.
#[derive(Clone, Debug)]
pub struct WatchSlots {
    slots: Arc<Semaphore>,
    limit: usize,
}

impl WatchSlots {
    pub fn new(limit: usize) -> Self {
        let limit = limit.min(Semaphore::MAX_PERMITS);
        WatchSlots {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// A slot for one more stream, or the refusal naming the flag.
    pub fn acquire(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyWatchers { limit: self.limit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_slots_are_given_back_when_dropped() {
        let slots = WatchSlots::new(1);
        let first = slots.acquire().unwrap();
        let refused = slots.acquire().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.to_string().contains("--max-watchers"), "{refused}");
        drop(first);
        assert!(slots.acquire().is_ok());
    }
}
