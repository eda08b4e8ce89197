//! Keep-alive publishing against the real `ringcast` binary (issue 3): many requests on
//! one connection, each answered in turn, and `GET /rooms/{room}` counting subscribers
//! over every shard.

mod common;

use common::{Server, Sse};
use std::time::Duration;

const PUBLISHES: u64 = 500;

#[test]
fn many_publishes_on_one_connection_and_room_info_across_shards() {
    let server = Server::start(&["--shards", "2"]);
    // Open subscribers until both shards hold some (SO_REUSEPORT spreads connections by
    // their address hash, so a few suffice); at least 8.
    let mut streams: Vec<Sse> = Vec::new();
    let mut per_shard = vec![0, 0];
    while streams.len() < 8 || per_shard.contains(&0) {
        assert!(
            streams.len() < 64,
            "subscribers all landed on one shard: {per_shard:?}"
        );
        streams.push(server.subscribe("ka", None));
        common::wait_until(Duration::from_secs(2), || {
            per_shard = server.metrics().per_shard("ringcast_subscribers");
            per_shard.iter().sum::<u64>() == streams.len() as u64
        });
    }

    let mut client = server.client();
    let mut last = None;
    for want in 1..=PUBLISHES {
        let response = client.request(
            "POST",
            "/rooms/ka/messages",
            &[],
            format!("m{want}").as_bytes(),
        );
        assert_eq!(response.status, 201, "publish {want}: {response:?}");
        assert_eq!(response.header("connection"), Some("keep-alive"));
        let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        let id = common::Id::of(&json["id"]);
        assert_eq!(id.seq, want, "{json}");
        assert!(last.is_none_or(|last: common::Id| last.epoch == id.epoch));
        last = Some(id);
    }
    let last = last.unwrap();
    // Still the same connection, still serving.
    let info = client.request("GET", "/rooms/ka", &[], b"");
    assert_eq!(info.status, 200, "{info:?}");
    let info: serde_json::Value = serde_json::from_slice(&info.body).unwrap();
    assert_eq!(info["room"], "ka");
    assert_eq!(info["last_id"], last);
    assert_eq!(
        info["subscribers"],
        streams.len(),
        "{info} (per shard {per_shard:?})"
    );
    assert_eq!(info["history_len"], 256, "default --history");
    // The same answer whichever shard a fresh connection lands on.
    for _ in 0..8 {
        let again = server.room("ka");
        assert_eq!(again["subscribers"], streams.len());
        assert_eq!(again["last_id"], last);
    }

    // Subscribers on both shards got all 500 in order.
    for sse in &mut streams {
        for want in 1..=PUBLISHES {
            let event = sse.next_event(Duration::from_secs(5));
            assert_eq!(
                (event.id, event.data),
                (Some(last.at(want)), format!("m{want}"))
            );
        }
    }
    // An unknown room is reported empty, not refused.
    let empty = server.room("nobody-here");
    assert_eq!(empty["subscribers"].as_u64(), Some(0));
    assert!(empty["last_id"].is_null(), "no message yet: {empty}");
}

/// `POST /publish` NDJSON: one result per non-blank line, in line order, with rooms owned
/// by both shards (local and cross-shard sequencing in one batch); bad lines get an error
/// naming their line number and do not stop the others; subscribers get the good ones.
#[test]
fn batch_publish_answers_every_line_in_order() {
    let server = Server::start(&["--shards", "2"]);
    let owned_by = |shard: usize| {
        (0..)
            .map(|i| format!("batch{i}"))
            .find(|room| ringcast_core::room::owner_shard(room, 2) == shard)
            .unwrap()
    };
    let (zero, one) = (owned_by(0), owned_by(1));
    let mut on_zero = server.subscribe(&zero, None);
    let mut on_one = server.subscribe(&one, None);
    let body = format!(
        "{{\"room\":\"{zero}\",\"data\":\"a\"}}\n\
         {{\"room\":\"{one}\",\"data\":{{\"k\":1}}}}\n\
         \n\
         not json\n\
         {{\"room\":\"a b\",\"data\":\"x\"}}\n\
         {{\"room\":\"{one}\"}}\n\
         {{\"room\":\"{zero}\",\"data\":\"b\"}}\n"
    );
    let mut client = server.client();
    let response = client.request("POST", "/publish", &[], body.as_bytes());
    assert_eq!(response.status, 200, "{response:?}");
    let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    let results = json["results"].as_array().expect("results array");
    assert_eq!(results.len(), 6, "{json}");
    let seq = |result: &serde_json::Value| common::Id::of(&result["id"]).seq;
    assert_eq!((seq(&results[0]), seq(&results[1])), (1, 1), "{json}");
    for (index, line) in [(2, "line 4:"), (3, "line 5:"), (4, "line 6:")] {
        let error = results[index]["error"].as_str().unwrap_or_default();
        assert!(error.starts_with(line), "result {index}: {json}");
    }
    assert_eq!(seq(&results[5]), 2, "{json}");
    assert_eq!(
        common::Id::of(&results[5]["id"]).epoch,
        common::Id::of(&results[0]["id"]).epoch,
        "one room, one epoch"
    );
    // The connection is kept alive after a batch.
    assert_eq!(client.publish(&one, "c").seq, 2);

    let got = |sse: &mut Sse| {
        let event = sse.next_event(Duration::from_secs(5));
        (event.id.unwrap().seq, event.data)
    };
    assert_eq!(got(&mut on_zero), (1, "a".to_owned()));
    assert_eq!(got(&mut on_zero), (2, "b".to_owned()));
    assert_eq!(got(&mut on_one), (1, r#"{"k":1}"#.to_owned()));
    assert_eq!(got(&mut on_one), (2, "c".to_owned()));
}
