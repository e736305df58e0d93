//! The gRPC edge: the service and its watch streams, the one proto-to-domain conversion, the
//! codec, errors mapped to status codes, request limits, authentication and TLS.

pub(crate) mod auth;
pub(crate) mod codec;
pub(crate) mod convert;
pub(crate) mod error;
pub(crate) mod limits;
pub(crate) mod proto;
pub(crate) mod service;
pub(crate) mod tls;
mod watch;
