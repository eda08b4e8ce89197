//! Hostile clients against the real `ringcast` binary (issue 14): ids with an epoch, absurd resume ids, idempotent publishes (cases 10, 12, 13).

mod common;

use common::redis::Redis;
use common::{Id, Item, Server, Sse, PATIENCE};
use std::time::Duration;

/// Reads past a reset notice: asserts it names `reason`, returns it.
fn expect_reset(sse: &mut Sse, reason: &str) -> common::Event {
    let reset = sse.next_event(PATIENCE);
    assert_eq!(reset.event.as_deref(), Some("reset"), "{reset:?}");
    let data: serde_json::Value = serde_json::from_str(&reset.data).unwrap();
    assert_eq!(data["reason"], reason, "{reset:?}");
    reset
}

/// Issue 14 case 10: publish 5, restart, publish 3. A client resuming with an id of the
/// first lifetime (2 or 5) got only the third new message, or nothing: ids restarted at 1,
/// so the old id was placed in the new lifetime's numbering and the rest silently skipped.
/// Now ids carry the room's epoch (`"{epoch}-{seq}"`): an id of the first lifetime, or a
/// bare number of a server from before epochs, gets `event: reset` and then every message
/// held; an id of the new lifetime resumes as before.
#[test]
fn a_resume_id_from_before_a_restart_gets_a_reset_and_everything_held() {
    let args = ["--shards", "2"];
    let first = Server::start(&args);
    let old: Vec<Id> = (1..=5)
        .map(|i| first.publish("restarted", &format!("old{i}")))
        .collect();
    drop(first);
    let server = Server::start(&args);
    let new: Vec<Id> = (1..=3)
        .map(|i| server.publish("restarted", &format!("new{i}")))
        .collect();
    assert_eq!(new.iter().map(|id| id.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(new[0].epoch > old[0].epoch, "{new:?} after {old:?}");
    let (two, five) = (old[1].to_string(), old[4].to_string());
    for (last, reason) in [
        (two.as_str(), "unknown epoch"),
        (five.as_str(), "unknown epoch"),
        ("2", "bare number"),
        ("5", "bare number"),
        ("next-please", "not an id"),
    ] {
        let mut sse = server.subscribe_after("restarted", last);
        let reset = expect_reset(&mut sse, reason);
        // The reset moves the client's last id to just before what is held.
        assert_eq!(reset.id, Some(new[0].at(0)), "{reset:?}");
        let data: serde_json::Value = serde_json::from_str(&reset.data).unwrap();
        assert_eq!(data["held_from"], new[0], "{reset:?}");
        let events: Vec<(Option<Id>, String)> = (0..3)
            .map(|_| sse.next_event(PATIENCE))
            .map(|e| (e.id, e.data))
            .collect();
        let want: Vec<(Option<Id>, String)> = new
            .iter()
            .enumerate()
            .map(|(i, id)| (Some(*id), format!("new{}", i + 1)))
            .collect();
        assert_eq!(events, want, "after {last}");
        let rest = sse.items_for(Duration::from_millis(200));
        assert!(
            rest.iter().all(|item| matches!(item, Item::Comment(_))),
            "{rest:?}"
        );
    }
    // An id of this lifetime resumes after it; one beyond the head cannot be placed.
    let mut sse = server.subscribe("restarted", Some(new[1]));
    assert_eq!(sse.next_event(PATIENCE).id, Some(new[2]));
    let mut sse = server.subscribe("restarted", Some(new[0].at(9)));
    expect_reset(&mut sse, "beyond the head");
    assert_eq!(sse.next_event(PATIENCE).id, Some(new[0]));
    assert!(
        common::wait_until(PATIENCE, || server.metrics().sum("ringcast_resets_total")
            == 6),
        "{}",
        server.metrics().0
    );
    // The room's facts show the same ids; garbage is refused.
    assert_eq!(server.room("restarted")["last_id"], new[2]);
    let long = "1".repeat(200);
    for garbage in [long.as_str(), "s\u{e9}"] {
        let response = server.client().request(
            "GET",
            "/rooms/restarted/events",
            &[("Last-Event-ID", garbage)],
            b"",
        );
        assert_eq!(response.status, 400, "{garbage:?}: {response:?}");
    }
}

/// Every id a client sees round-trips through JavaScript: a string, in publish answers,
/// batch results, room facts, SSE `id:` lines and gap notices.
#[test]
fn every_id_a_client_sees_is_a_string() {
    let server = Server::start(&["--shards", "2", "--history", "2"]);
    let mut client = server.client();
    let response = client.request("POST", "/rooms/js/messages", &[], b"one");
    assert_eq!(response.status, 201);
    let answer: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert!(answer["id"].is_string(), "{answer}");
    let first = Id::of(&answer["id"]);
    let batch = client.request(
        "POST",
        "/publish",
        &[],
        b"{\"room\":\"js\",\"data\":\"two\"}\n",
    );
    let batch: serde_json::Value = serde_json::from_slice(&batch.body).unwrap();
    assert_eq!(batch["results"][0]["id"], first.at(2), "{batch}");
    client.publish("js", "three");
    client.publish("js", "four");
    assert_eq!(server.room("js")["last_id"], first.at(4));
    let mut sse = server.subscribe("js", Some(first));
    let gap = sse.next_event(PATIENCE);
    assert_eq!(gap.event.as_deref(), Some("gap"), "{gap:?}");
    let range: serde_json::Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(
        (&range["from"], &range["to"]),
        (
            &first.at(2).to_string().into(),
            &first.at(2).to_string().into()
        )
    );
    assert_eq!(sse.next_event(PATIENCE).id, Some(first.at(3)));
    assert_eq!(sse.next_event(PATIENCE).id, Some(first.at(4)));
}

/// Issue 14 case 12: on a cluster node, `Last-Event-ID: 18446744073709551615` then a
/// publish ended the stream ("room limit reached"); the message never reached the
/// subscriber, whose cursor sat above every id Redis would ever give. Such an id cannot be
/// placed: the subscriber gets `event: reset`, then the message. So do stream ids that do not
/// fit and ones beyond the stream's last id (Redis is asked); a real stream id resumes.
#[test]
fn an_absurd_resume_id_on_a_cluster_node_is_reset_and_the_message_still_arrives() {
    let redis = Redis::start();
    let url = redis.url();
    let server = Server::start(&["--shards", "2", "--cluster-redis", &url]);
    let first = server.publish("absurd", "before");
    let cases = [
        ("18446744073709551615", "bare number"),
        (
            "18446744073709551615-18446744073709551615",
            "beyond the head",
        ),
        ("17000000000000-0", "beyond the head"),
    ];
    let mut streams: Vec<Sse> = cases
        .iter()
        .map(|(last, reason)| {
            let mut sse = server.subscribe_after("absurd", last);
            let reset = expect_reset(&mut sse, reason);
            let data: serde_json::Value = serde_json::from_str(&reset.data).unwrap();
            assert_eq!(data["held_from"], first, "{reset:?}");
            let before = sse.next_event(PATIENCE);
            assert_eq!((before.id, before.data.as_str()), (Some(first), "before"));
            sse
        })
        .collect();
    let mut resumed = server.subscribe("absurd", Some(first));
    let hello = server.publish("absurd", "hello");
    streams.push(resumed);
    for sse in &mut streams {
        let event = sse.next_event(PATIENCE);
        assert_eq!((event.id, event.data.as_str()), (Some(hello), "hello"));
    }
    resumed = streams.pop().unwrap();
    drop(resumed);
}
