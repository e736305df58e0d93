//! Sessions around the pure machine: the registry (ordering, timers, expiry, limits), the
//! journal that makes them durable, and the clock that maps tokio's time onto the machine's.

pub(crate) mod clock;
pub(crate) mod journal;
pub(crate) mod registry;
