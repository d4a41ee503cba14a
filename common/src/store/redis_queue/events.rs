//! The events stream: notes, readers that follow it from a cursor, and its parsing.

use crate::queue::Error;

use super::records::StreamEvent;
use super::{RedisQueue, backend};

/// Reads the events stream from a cursor on.
pub struct EventReader {
    connection: redis::aio::MultiplexedConnection,
    stream: String,
}

impl EventReader {
    /// Events after `cursor` (`0-0` for all kept, `$` for new ones only), waiting up to
    /// `block_ms` for the first.
    pub async fn read(
        &mut self,
        cursor: &str,
        block_ms: u64,
        count: usize,
    ) -> Result<Vec<StreamEvent>, Error> {
        let reply: redis::Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(cursor)
            .query_async(&mut self.connection)
            .await
            .map_err(backend)?;
        // XREAD answers [[stream, entries]] (RESP2), or nil on timeout.
        let entries = match reply {
            redis::Value::Array(streams) => streams
                .into_iter()
                .filter_map(|s| match s {
                    redis::Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                    _ => None,
                })
                .flat_map(parse_stream_entries)
                .collect(),
            _ => Vec::new(),
        };
        Ok(entries)
    }
}

pub(super) fn text(value: &redis::Value) -> String {
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        _ => String::new(),
    }
}

pub(super) fn parse_stream_entries(value: redis::Value) -> Vec<StreamEvent> {
    let redis::Value::Array(entries) = value else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let redis::Value::Array(parts) = entry else {
                return None;
            };
            let [id, redis::Value::Array(fields)] = parts.as_slice() else {
                return None;
            };
            let mut event = StreamEvent {
                id: text(id),
                ..StreamEvent::default()
            };
            for pair in fields.chunks(2) {
                let [name, value] = pair else { continue };
                let value = text(value);
                match text(name).as_str() {
                    "type" => event.kind = value,
                    "t" => event.trial = value,
                    "s" => event.sweep = value,
                    "st" => event.state = value,
                    "w" => event.worker = value,
                    "m" => event.message = value,
                    _ => {}
                }
            }
            Some(event)
        })
        .collect()
}

impl RedisQueue {
    /// Adds an event of the coordinator's own (e.g. `aggregated`) to the stream.
    pub async fn note(&self, kind: &str, sweep: &str, message: &str) -> Result<(), Error> {
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("XADD")
            .arg(self.keys.events())
            .arg("MAXLEN")
            .arg("~")
            .arg(100_000)
            .arg("*")
            .arg("type")
            .arg(kind)
            .arg("s")
            .arg(sweep)
            .arg("m")
            .arg(message)
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// A reader of the events stream on its own connection (its reads block).
    pub async fn events(&self) -> Result<EventReader, Error> {
        let connection = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(backend)?;
        Ok(EventReader {
            connection,
            stream: self.keys.events(),
        })
    }

    /// The id of the newest event, or `0-0`.
    pub async fn last_event_id(&self) -> Result<String, Error> {
        let mut connection = self.connection.clone();
        let info: redis::Value = redis::cmd("XREVRANGE")
            .arg(self.keys.events())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        let entries = parse_stream_entries(info);
        Ok(entries
            .into_iter()
            .next()
            .map_or_else(|| "0-0".to_owned(), |e| e.id))
    }
}
