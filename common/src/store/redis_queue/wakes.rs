//! The wake channel: a Redis pub/sub channel on which a coordinator says that work may have
//! appeared (a submit, a trial queued again, a seat or lease freed), so that the lease calls
//! parked in every other coordinator sharing the Redis are matched at once, not polled.
//! A message is only a hint; what is leasable is read from the queue.

use futures_util::{Stream, StreamExt};

use crate::queue::Error;

use super::{RedisQueue, backend};

impl RedisQueue {
    /// Tells every subscriber that work may have appeared; `from` names the sender (its own
    /// subscription hears the message too, and can skip it).
    pub async fn publish_wake(&self, from: &str) -> Result<(), Error> {
        let mut connection = self.connection.clone();
        let _: u64 = redis::cmd("PUBLISH")
            .arg(self.keys.wake())
            .arg(from)
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Subscribes to the wake channel on a connection of its own; the stream yields each
    /// message's sender and ends when the connection is lost (subscribe again then: messages
    /// sent meanwhile are gone, so treat a new subscription as a wake).
    pub async fn wakes(&self) -> Result<impl Stream<Item = String> + Send + use<>, Error> {
        let mut pubsub = self.client.get_async_pubsub().await.map_err(backend)?;
        pubsub.subscribe(self.keys.wake()).await.map_err(backend)?;
        Ok(pubsub
            .into_on_message()
            .map(|m| m.get_payload::<String>().unwrap_or_default()))
    }
}
