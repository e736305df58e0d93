//! The built binary as an operator runs it: signals and the drain, flags, the probe
//! subcommand, logs and metrics. One module per theme.

mod flags;
mod logs;
mod metrics;
mod probe;
mod signals;
