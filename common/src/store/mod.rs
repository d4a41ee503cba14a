//! Redis, the source of truth of the cluster: the key schema and the Redis queue backend.

pub mod keys;
pub mod redis_queue;

pub use redis_queue::{
    ClaimSet, Completion, EventReader, LeaseAnswer, Progress, RedisQueue, Reestimate, Snapshot,
    StreamEvent, Submitted, SweepRecord, SweepSubmit, TrialRecord, WorkerRecord,
};
