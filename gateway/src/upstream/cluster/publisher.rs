//! The publisher threads: each takes appends (and resume replays) from its bounded queue,
//! pipelines them to Redis behind the breaker, and answers the shards by their mail queues.

use super::*;

pub(super) fn publisher_thread(hub: &Hub, receiver: &mpsc::Receiver<Job>) {
    let mut connection: Option<redis::Connection> = None;
    let mut batch = Vec::with_capacity(PIPELINE_MAX);
    let mut woken = vec![false; hub.replies.len()];
    loop {
        let Ok(job) = receiver.recv() else {
            return; // every sender dropped: the process is stopping
        };
        batch.push(job);
        while batch.len() < PIPELINE_MAX {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if connection.is_none() {
            match hub.connect() {
                Ok(c) => connection = Some(c),
                Err(err) => hub.error("connect", &err),
            }
        }
        let mut publishes = Vec::with_capacity(batch.len());
        for job in batch.drain(..) {
            match job {
                Job::Publish { .. } => publishes.push(job),
                Job::Replay { shard, ticket } => {
                    let replay = connection.as_mut().and_then(|c| match replay(c, &ticket) {
                        Ok(replay) => Some(replay),
                        Err(err) => {
                            hub.error("replay", &err);
                            None
                        }
                    });
                    if replay.is_none() {
                        connection = None;
                    }
                    push_reply(hub, shard, Reply::Event(Event::Replayed { ticket, replay }));
                    woken[shard] = true;
                }
            }
        }
        if !publishes.is_empty() {
            let results = append(hub, &mut connection, &publishes);
            let started = Instant::now();
            for (job, result) in publishes.into_iter().zip(results) {
                let Job::Publish {
                    shard,
                    ticket,
                    permit,
                    submitted,
                    ..
                } = job
                else {
                    continue;
                };
                let latency = started.saturating_duration_since(submitted);
                push_reply(
                    hub,
                    shard,
                    Reply::Publish {
                        ticket,
                        permit,
                        result,
                        latency,
                    },
                );
                woken[shard] = true;
            }
        }
        for (shard, woken) in woken.iter_mut().enumerate() {
            if std::mem::take(woken) {
                hub.wake(shard);
            }
        }
    }
}

pub(super) fn push_reply(hub: &Hub, shard: usize, reply: Reply) {
    if hub.replies[shard].push(reply).is_err() {
        // Cannot happen: a shard keeps at most SHARD_IN_FLIGHT_MAX calls out.
        debug_assert!(false, "cluster reply queue of shard {shard} full");
        tracing::error!(shard, "cluster reply queue full; reply dropped");
    }
}

/// Sends the publishes as one pipeline of XADDs; one result per job. A publish whose time
/// ran out in the queue is not sent (so it is certainly not stored).
pub(super) fn append(
    hub: &Hub,
    connection: &mut Option<redis::Connection>,
    jobs: &[Job],
) -> Vec<Result<Appended, RedisRefusal>> {
    let now = Instant::now();
    let mut results = vec![Err(RedisRefusal::Unreachable); jobs.len()];
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let mut sent = Vec::with_capacity(jobs.len());
    for (index, job) in jobs.iter().enumerate() {
        let Job::Publish {
            room,
            data,
            stamp,
            submitted,
            idempotency,
            ..
        } = job
        else {
            continue;
        };
        if now >= *submitted + hub.config.timeout {
            results[index] = Err(RedisRefusal::TimedOutUnsent);
            continue;
        }
        if let Some(idempotency) = idempotency {
            pipe.cmd("EVAL")
                .arg(APPEND_ONCE_LUA)
                .arg(2)
                .arg(stream_key(room))
                .arg(idempotency_record_key(room, &idempotency.key))
                .arg(hub.config.history)
                .arg(data.as_ref())
                .arg(*stamp)
                .arg(&hub.config.node_id)
                .arg(idempotency.window.as_millis().max(1) as u64);
            sent.push(index);
            continue;
        }
        pipe.cmd("XADD")
            .arg(stream_key(room))
            .arg("MAXLEN")
            .arg("~")
            .arg(hub.config.history)
            .arg("*")
            .arg("data")
            .arg(data.as_ref())
            .arg("stamp")
            .arg(*stamp)
            .arg("node")
            .arg(&hub.config.node_id);
        sent.push(index);
    }
    if sent.is_empty() {
        return results;
    }
    let Some(c) = connection.as_mut() else {
        return results;
    };
    match pipe.query::<Vec<Value>>(c) {
        Ok(values) => {
            for (index, value) in sent.into_iter().zip(values) {
                results[index] = match appended(&value) {
                    Some(appended) => Ok(appended),
                    None => {
                        tracing::warn!(?value, "XADD answered no usable id");
                        Err(RedisRefusal::Refused)
                    }
                };
            }
        }
        Err(err) => {
            hub.error("XADD", &err);
            // Sent: Redis may have appended (and will, once it runs what it read).
            let reason = if err.is_timeout() {
                RedisRefusal::TimedOutUnknown
            } else {
                RedisRefusal::LostUnknown
            };
            for index in sent {
                results[index] = Err(reason);
            }
            *connection = None;
        }
    }
    results
}

/// The answer to an `XADD` (a stream id) or to [`APPEND_ONCE_LUA`] (`[replayed, id]`).
pub(super) fn appended(value: &Value) -> Option<Appended> {
    if let Some([flag, id]) = list(value) {
        return Some(Appended {
            id: sse_id(value_str(id)?)?,
            replayed: integer(flag)? == 1,
        });
    }
    Some(Appended {
        id: sse_id(value_str(value)?)?,
        replayed: false,
    })
}

/// The highest SSE id the stream at `key` no longer holds (trimmed or deleted), `None` when
/// there is no such stream. Trimming (`MAXLEN ~`) removes from the head and Redis does not
/// count it in `max-deleted-entry-id`, so when `entries-added` exceeds `length` everything
/// before `first-entry` counts as gone. Without those fields (Redis < 7.0) the entry before
/// the first held is taken as deleted. Conservative: a gap may be announced over ids that
/// never existed, never the other way round.
pub(super) fn deleted_through(
    connection: &mut redis::Connection,
    key: &str,
) -> redis::RedisResult<Option<u64>> {
    let info: Value = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query(connection)
        .or_else(|err| {
            if err.code() == Some("ERR") {
                Ok(Value::Nil) // no such key: nothing is held
            } else {
                Err(err)
            }
        })?;
    let Some(fields) = pairs(&info) else {
        return Ok(None);
    };
    let mut deleted = None;
    let mut first = None;
    let mut added = None;
    let mut length = None;
    for (name, value) in fields {
        match value_str(name) {
            Some("max-deleted-entry-id") => {
                deleted = Some(value_str(value).and_then(sse_id).unwrap_or(0));
            }
            Some("first-entry") => first = entry(value).map(|(id, _, _)| id),
            Some("entries-added") => added = integer(value),
            Some("length") => length = integer(value),
            _ => {}
        }
    }
    let before_first = first.map_or(0, |id| id.saturating_sub(1));
    Ok(Some(match (deleted, added, length) {
        (Some(deleted), Some(added), Some(length)) if added > length => deleted.max(before_first),
        (Some(deleted), Some(_), Some(_)) => deleted,
        _ => before_first,
    }))
}

pub(super) fn integer(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => value_str(other).and_then(|text| text.parse().ok()),
    }
}

/// Entries of `ticket.room` after `ticket.after` and before the replica's oldest one, led by
/// a gap notice when the stream no longer holds some of them.
pub(super) fn replay(
    connection: &mut redis::Connection,
    ticket: &ReplayTicket,
) -> redis::RedisResult<Replay> {
    let key = stream_key(&ticket.room);
    if ticket.beyond_head
        && last_generated(connection, &key)?.is_none_or(|last| ticket.after > last)
    {
        return Ok(Replay {
            frames: Vec::new(),
            after: ticket.after,
            beyond_head: true,
        });
    }
    // No stream: everything before the replica is gone.
    let deleted = deleted_through(connection, &key)?.unwrap_or(ticket.before.saturating_sub(1));
    let mut frames = Vec::new();
    let mut cursor = ticket.after;
    if deleted > ticket.after {
        let to = deleted.min(ticket.before.saturating_sub(1));
        frames.push(Frame::gap(
            &ticket.room,
            EventId::from_stream_packed(ticket.after + 1),
            EventId::from_stream_packed(to),
        ));
        cursor = to;
    }
    if cursor + 1 >= ticket.before {
        return Ok(Replay {
            frames,
            after: cursor,
            beyond_head: false,
        });
    }
    let entries: Value = redis::cmd("XRANGE")
        .arg(&key)
        .arg(format!("({}", stream_id(cursor)))
        .arg(format!("({}", stream_id(ticket.before)))
        .arg("COUNT")
        .arg(REPLAY_MAX)
        .query(connection)?;
    let list = list(&entries).unwrap_or(&[]);
    let complete = list.len() < REPLAY_MAX;
    for value in list {
        if let Some((id, data, _)) = entry(value) {
            frames.push(Frame::message(
                &ticket.room,
                EventId::from_stream_packed(id),
                &data,
            ));
            cursor = id;
        }
    }
    // Complete: nothing lies between the last entry and the replica's oldest, so the
    // replica continues from `before − 1` with no gap.
    let after = if complete {
        ticket.before.saturating_sub(1).max(cursor)
    } else {
        cursor
    };
    Ok(Replay {
        frames,
        after,
        beyond_head: false,
    })
}

/// The last id the stream at `key` ever gave out (`last-generated-id`), `None` when there is
/// no such stream.
pub(super) fn last_generated(
    connection: &mut redis::Connection,
    key: &str,
) -> redis::RedisResult<Option<u64>> {
    let info: Value = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query(connection)
        .or_else(|err| {
            if err.code() == Some("ERR") {
                Ok(Value::Nil) // no such key
            } else {
                Err(err)
            }
        })?;
    Ok(pairs(&info).and_then(|fields| {
        fields.into_iter().find_map(|(name, value)| {
            (value_str(name) == Some("last-generated-id"))
                .then(|| value_str(value).and_then(sse_id))
                .flatten()
        })
    }))
}
