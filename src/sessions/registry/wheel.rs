//! The timer wheel behind every session's deadlines: one task for all sessions.
//!
//! A task per deadline would cost a task and a tokio timer entry per waiting session; one
//! `DelayQueue` holds them all and hands each expiry back to the registry. Each session has at
//! most one entry: arming it again moves that entry (the registry only ever moves it earlier),
//! so nothing stale outlives a session. The entry's key is kept in the session's registry entry
//! and only this task touches it. An entry that comes due for a deadline that has since gone is
//! harmless: the registry asks the machine what is due now and re-arms.
//!
//! Arming must not cost a thread wake-up per event: most deadlines (a 30 s playout guard, a
//! 2 h idle expiry) fall long after the wheel's next expiry anyway. So arms are queued, and the
//! timer task is woken only when an arm is due before the time it will wake up by itself (it
//! publishes that time), or when a queue has grown long enough to be worth draining. The queue
//! is sharded by session: workers arming different sessions rarely meet on a lock, and one
//! session's arms, made under its registry lock, stay in the order it made them.

use std::{
    hash::BuildHasher as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use crossbeam_utils::CachePadded;
use futures_util::FutureExt as _;
use tokio::sync::Notify;
use tokio_stream::StreamExt as _;
use tokio_util::time::DelayQueue;

/// A session's entry in the wheel.
pub(super) type TimerKey = tokio_util::time::delay_queue::Key;

use super::Registry;
use crate::{sessions::clock::Clock, telemetry::metrics};
use endcall_core::domain::{SessionId, Time};

/// How often the wheel and the session map give back memory after a large drop, and the
/// registry's housekeeping hook runs; also how soon the timer task notices that the registry
/// is gone.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Queued arms in one shard that wake the timer task even if none is due soon: bounds the
/// queue's memory.
const DRAIN_AT: usize = 1024;

/// Shards of the arm queue per core: enough that two workers seldom want the same one.
const SHARDS_PER_CORE: usize = 4;

/// Expiries handled in one go before the queued arms are looked at again: a burst of due
/// deadlines is worked off at the wheel's pace, not one per round of arm bookkeeping.
const EXPIRY_BATCH: usize = 256;

/// "Awake": the timer task is draining the queue, so no arm needs to wake it.
const AWAKE: u64 = 0;

/// Where the timer task runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerThread {
    /// On a thread of its own, with its own small runtime: a deadline is issued on time even
    /// when the server's runtime is busy with thousands of woken watch streams.
    Dedicated,
    /// On the current runtime: what tests on tokio's paused clock need.
    Shared,
}

/// One shard's queued arms, on a cache line of its own so that two workers pushing to
/// neighbouring shards do not contend anyway.
type ArmQueue = CachePadded<Mutex<Vec<(SessionId, Time)>>>;

/// The registry's side: queues arms for the timer task.
pub(crate) struct Arms {
    shards: Box<[ArmQueue]>,
    /// Picks a session's shard; seeded per process, like the registry's map.
    hasher: foldhash::fast::RandomState,
    /// When the timer task will next wake by itself (µs since the epoch), or `AWAKE`.
    next_wake: AtomicU64,
    wake: Notify,
}

impl Arms {
    pub(crate) fn new() -> Arc<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_shards(cores * SHARDS_PER_CORE)
    }

    fn with_shards(shards: usize) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..shards.max(1)).map(|_| ArmQueue::default()).collect(),
            hasher: foldhash::fast::RandomState::default(),
            next_wake: AtomicU64::new(u64::MAX),
            wake: Notify::new(),
        })
    }

    fn shard(&self, id: &SessionId) -> &ArmQueue {
        let hash = self.hasher.hash_one(id.as_str());
        // The modulo of a u64 by the shard count is below it, so it fits a usize.
        &self.shards[(hash % self.shards.len() as u64) as usize]
    }

    /// Asks for `id`'s timer to fire at `at` (moving its entry if it has one).
    pub(crate) fn arm(&self, id: SessionId, at: Time) {
        let queued = {
            let mut queue = lock(self.shard(&id));
            queue.push((id, at));
            queue.len()
        };
        // SeqCst pairs with the timer task's publish-then-recheck: either it sees this arm in
        // the queue, or this load sees the time it is going to sleep until.
        let next_wake = self.next_wake.load(Ordering::SeqCst);
        if (next_wake != AWAKE && at.as_micros() < next_wake) || queued == DRAIN_AT {
            // A permit is kept if the task is not waiting yet: the wake cannot be lost.
            self.wake.notify_one();
        }
    }

    /// Moves every queued arm into `into`, each shard's in the order they were made. The
    /// shards keep their capacity, so steady traffic queues without allocating.
    fn take(&self, into: &mut Vec<(SessionId, Time)>) {
        for shard in &self.shards {
            into.append(&mut lock(shard));
        }
    }

    fn is_empty(&self) -> bool {
        self.shards.iter().all(|shard| lock(shard).is_empty())
    }
}

/// A poisoned shard only means a panic elsewhere mid-push; its queue is still whole.
fn lock(
    shard: &Mutex<Vec<(SessionId, Time)>>,
) -> std::sync::MutexGuard<'_, Vec<(SessionId, Time)>> {
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn spawn(
    registry: Weak<Registry>,
    clock: Clock,
    arms: Arc<Arms>,
    placement: TimerThread,
) -> std::io::Result<()> {
    match placement {
        TimerThread::Shared => {
            tokio::spawn(run(registry, clock, arms));
        }
        TimerThread::Dedicated => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()?;
            std::thread::Builder::new()
                .name("endcall-timers".into())
                .spawn(move || runtime.block_on(run(registry, clock, arms)))?;
        }
    }
    Ok(())
}

/// A wheel holding just the entries of `old`, sized for them; each session's key is updated.
///
/// Used instead of `DelayQueue::compact`, which shrinks the wheel but from then on keeps a
/// key-remapping table with an entry for every timer ever inserted (about 36 bytes per
/// waiting session at a million).
fn rebuilt(old: &DelayQueue<SessionId>, registry: &Registry) -> DelayQueue<SessionId> {
    let mut queue = DelayQueue::with_capacity(old.len());
    registry.rekey_timers(|id, key| queue.insert_at(id.clone(), old.deadline(&key)));
    queue
}

async fn run(registry: Weak<Registry>, clock: Clock, arms: Arc<Arms>) {
    let mut queue: DelayQueue<SessionId> = DelayQueue::new();
    let mut batch = Vec::new();
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Drain the queued arms, then publish when we will wake by ourselves; an arm that
        // slipped in between is caught by the re-check.
        loop {
            arms.next_wake.store(AWAKE, Ordering::SeqCst);
            arms.take(&mut batch);
            if !batch.is_empty() {
                let Some(registry) = registry.upgrade() else {
                    return;
                };
                for (id, at) in batch.drain(..) {
                    let when = clock.instant_at(at);
                    match registry.timer_key(&id) {
                        Some(Some(key)) => queue.reset_at(&key, when),
                        Some(None) => {
                            let key = queue.insert_at(id.clone(), when);
                            registry.set_timer_key(&id, key);
                        }
                        None => {} // Dropped since it asked.
                    }
                }
            }
            let next = queue.peek().map_or(u64::MAX, |key| {
                clock.time_at(queue.deadline(&key)).as_micros()
            });
            arms.next_wake.store(next, Ordering::SeqCst);
            if arms.is_empty() {
                break;
            }
        }
        metrics::timers_pending(queue.len());
        tokio::select! {
            // Expiries first: deadlines must not wait behind anything else.
            biased;
            Some(expired) = queue.next() => {
                let Some(registry) = registry.upgrade() else { break };
                let mut due = expired;
                for handled in 1.. {
                    let key = due.key();
                    registry.on_timer(&due.into_inner(), key);
                    if handled == EXPIRY_BATCH {
                        break;
                    }
                    // Only what is already due: never waits.
                    match queue.next().now_or_never() {
                        Some(Some(next)) => due = next,
                        _ => break,
                    }
                }
            }
            () = arms.wake.notified() => {}
            _ = housekeeping.tick() => {
                // After a burst of sessions is gone, tables sized for the burst would keep
                // its memory for good.
                let Some(registry) = registry.upgrade() else { break };
                if queue.len() < queue.capacity() / 4 {
                    queue = rebuilt(&queue, &registry);
                }
                registry.shrink_if_sparse();
                registry.hooks.housekeeping();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The arm queue on its own; the wheel is covered by the registry's paused-clock tests.

    use super::*;

    fn at(micros: u64) -> Time {
        Time::from_micros(micros)
    }

    fn woken(arms: &Arms) -> bool {
        arms.wake.notified().now_or_never().is_some()
    }

    #[test]
    fn a_sessions_arms_come_out_in_the_order_it_made_them_whatever_their_shards() {
        let arms = Arms::with_shards(8);
        let ids: Vec<SessionId> = (0..64).map(|i| SessionId::new(&format!("s-{i}"))).collect();
        // Interleaved across sessions, each moving its deadline earlier three times.
        for round in 0..3u64 {
            for id in &ids {
                arms.arm(id.clone(), at(1_000 - round));
            }
        }
        let used = arms.shards.iter().filter(|s| !lock(s).is_empty()).count();
        assert!(used > 1, "64 sessions all in one shard of 8");
        let mut taken = Vec::new();
        arms.take(&mut taken);
        assert_eq!(taken.len(), 3 * ids.len());
        for id in &ids {
            let times: Vec<u64> = taken
                .iter()
                .filter(|(armed, _)| armed == id)
                .map(|(_, t)| t.as_micros())
                .collect();
            assert_eq!(times, [1_000, 999, 998], "{id:?}");
        }
    }

    #[test]
    fn take_empties_every_shard_and_they_keep_their_capacity() {
        let arms = Arms::with_shards(4);
        for i in 0..100 {
            arms.arm(SessionId::new(&format!("s-{i}")), at(i));
        }
        assert!(!arms.is_empty());
        let mut taken = Vec::new();
        arms.take(&mut taken);
        assert_eq!(taken.len(), 100);
        assert!(arms.is_empty());
        assert!(arms.shards.iter().any(|s| lock(s).capacity() > 0));
    }

    #[test]
    fn an_arm_wakes_the_task_only_if_due_before_its_own_wake_up_or_a_shard_is_full() {
        let arms = Arms::with_shards(1);
        let id = SessionId::new("s");
        // Before the task has published anything it sleeps until "never": any arm wakes it.
        arms.arm(id.clone(), at(5_000));
        assert!(woken(&arms));
        arms.take(&mut Vec::new());

        arms.next_wake.store(1_000, Ordering::SeqCst);
        arms.arm(id.clone(), at(2_000));
        assert!(!woken(&arms), "due after the task wakes anyway");
        arms.arm(id.clone(), at(500));
        assert!(woken(&arms), "due before the task would wake");

        // While the task is draining (AWAKE) no arm wakes it, until a shard is full.
        arms.next_wake.store(AWAKE, Ordering::SeqCst);
        arms.take(&mut Vec::new());
        for _ in 1..DRAIN_AT {
            arms.arm(id.clone(), at(1));
        }
        assert!(!woken(&arms));
        arms.arm(id.clone(), at(1));
        assert!(woken(&arms), "the {DRAIN_AT}th queued arm");
    }
}
