//! The timer wheel behind every session's deadlines: one task for all sessions.
//!
//! A task per deadline would cost a task and a tokio timer entry per waiting session; one
//! `DelayQueue` holds them all and hands each expiry back to the registry. Each session has at
//! most one entry: arming it again moves that entry (the registry only ever moves it earlier),
//! so nothing stale outlives a session. An entry that comes due for a deadline that has since
//! gone is harmless: the registry asks the machine what is due now and re-arms.

use std::{collections::HashMap, sync::Weak, time::Duration};

use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_util::time::{delay_queue::Key, DelayQueue};

use crate::{
    clock::Clock,
    domain::{SessionId, Time},
    registry::Registry,
    telemetry::metrics,
};

/// How often the wheel and the session map give back memory after a large drop.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Where the timer task runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerThread {
    /// On a thread of its own, with its own small runtime: a deadline is issued on time even
    /// when the server's runtime is busy with thousands of woken watch streams.
    Dedicated,
    /// On the current runtime: what tests on tokio's paused clock need.
    Shared,
}

pub(crate) fn spawn(
    registry: Weak<Registry>,
    clock: Clock,
    requests: mpsc::UnboundedReceiver<(SessionId, Time)>,
    placement: TimerThread,
) -> std::io::Result<()> {
    match placement {
        TimerThread::Shared => {
            tokio::spawn(run(registry, clock, requests));
        }
        TimerThread::Dedicated => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()?;
            std::thread::Builder::new()
                .name("endcall-timers".into())
                .spawn(move || runtime.block_on(run(registry, clock, requests)))?;
        }
    }
    Ok(())
}

async fn run(
    registry: Weak<Registry>,
    clock: Clock,
    mut requests: mpsc::UnboundedReceiver<(SessionId, Time)>,
) {
    {
        let mut queue: DelayQueue<SessionId> = DelayQueue::new();
        let mut entries: HashMap<SessionId, (Key, Time), foldhash::fast::RandomState> =
            HashMap::default();
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Expiries first: under a burst of arming, deadlines must not wait behind it.
                biased;
                Some(expired) = queue.next() => {
                    let id = expired.into_inner();
                    let Some((_, at)) = entries.remove(&id) else { continue };
                    let Some(registry) = registry.upgrade() else { break };
                    registry.on_timer(&id, at);
                }
                request = requests.recv() => match request {
                    Some((id, at)) => {
                        let when = clock.instant_at(at);
                        match entries.get_mut(&id) {
                            Some((key, armed)) => {
                                queue.reset_at(key, when);
                                *armed = at;
                            }
                            None => {
                                let key = queue.insert_at(id.clone(), when);
                                entries.insert(id, (key, at));
                            }
                        }
                    }
                    // The registry is gone.
                    None => break,
                },
                _ = housekeeping.tick() => {
                    // After a burst of sessions is gone, tables sized for the burst would keep
                    // its memory for good.
                    if entries.len() < entries.capacity() / 4 {
                        entries.shrink_to_fit();
                        queue.compact();
                    }
                    let Some(registry) = registry.upgrade() else { break };
                    registry.shrink_if_sparse();
                }
            }
            metrics::timers_pending(queue.len());
        }
    }
}
