//! Cluster mode (`--cluster-redis`): three real `ringcast` nodes sharing rooms through a real
//! `redis-server` that the test starts on a free port (and kills and restarts for the outage
//! test). Fails with a clear message when `redis-server` is not installed (`.ci/run`
//! installs it).

mod common;

use common::{wait_until, Event, Id, Server, PATIENCE};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` on a given port, killed on drop. Durable as an operator runs it for
/// the promise that an acknowledged publish survives a Redis crash (docs/CLUSTER.md): every
/// write is in the append-only file, fsynced, before Redis answers it, and a restart on the
/// same port reloads it from the same directory (removed on drop).
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl Redis {
    fn start_on(port: u16) -> Redis {
        let dir =
            std::env::temp_dir().join(format!("ringcast-test-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&dir)
            .args(["--bind", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot start redis-server ({err}): install it (apt-get install redis-server); .ci/run does")
            });
        // PING answers only once the append-only file is loaded (LOADING before).
        let url = format!("redis://127.0.0.1:{port}");
        let up = wait_until(PATIENCE, || {
            redis::Client::open(url.as_str())
                .and_then(|client| client.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
        assert!(up, "redis-server did not answer on {port}");
        Redis {
            child: Some(child),
            port,
            dir,
        }
    }

    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Redis::start_on(port)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no shutdown, nothing saved beyond what every write already fsynced.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `blocked_clients` of `INFO clients`: connections waiting in a blocking command
    /// (a follower's `XREAD BLOCK`).
    fn blocked_clients(&self) -> u64 {
        let mut connection = redis::Client::open(self.url())
            .and_then(|client| client.get_connection())
            .expect("connect to redis-server");
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query(&mut connection)
            .expect("INFO clients");
        info.lines()
            .find_map(|line| line.strip_prefix("blocked_clients:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("INFO clients has blocked_clients")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        // The restarted server of the outage test shares the directory: the last one out
        // removes it (a second removal finds nothing).
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether every thread of process `pid` is stopped (state `T` in `/proc`): a SIGSTOP has
/// taken effect, so the process sends nothing more until SIGCONT.
fn stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
        })
    })
}

fn node(redis: &Redis, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--shards", "2", "--cluster-redis", url.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// `POST /rooms/{room}/messages` on a keep-alive client: `Ok(id)` on 201, `Err(status)`.
fn try_publish(client: &mut common::Client, room: &str, data: &str) -> Result<Id, u16> {
    let response = client.request(
        "POST",
        &format!("/rooms/{room}/messages"),
        &[],
        data.as_bytes(),
    );
    match response.status {
        201 => {
            let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
            Ok(Id::of(&json["id"]))
        }
        503 => {
            assert!(response.header("retry-after").is_some(), "{response:?}");
            Err(503)
        }
        other => panic!("publish answered {other}: {response:?}"),
    }
}

fn events(sse: &mut common::Sse, count: usize) -> Vec<Event> {
    (0..count).map(|_| sse.next_event(PATIENCE)).collect()
}

#[test]
fn publish_on_one_node_reaches_the_others_in_one_order_with_the_same_ids() {
    let redis = Redis::start();
    let (a, b, c) = (node(&redis, &[]), node(&redis, &[]), node(&redis, &[]));
    let mut on_b = b.subscribe("lobby", None);
    let mut on_c = c.subscribe("lobby", None);
    let mut publisher = a.client();
    let ids: Vec<Id> = (0..50)
        .map(|i| publisher.publish("lobby", &format!("m{i}")))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let want: Vec<(Option<Id>, String)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (Some(*id), format!("m{i}")))
        .collect();
    for (name, sse) in [("B", &mut on_b), ("C", &mut on_c)] {
        let got: Vec<_> = events(sse, 50)
            .into_iter()
            .map(|e| (e.id, e.data))
            .collect();
        assert_eq!(got, want, "node {name}");
    }
    // Every node answers the room's facts with the same last id.
    for server in [&b, &c] {
        assert_eq!(server.room("lobby")["last_id"], *ids.last().unwrap());
    }
}

#[test]
fn a_subscriber_moved_to_another_node_with_last_event_id_misses_nothing() {
    let redis = Redis::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    // C keeps a short history, so the resume point is older than its replica and must be
    // replayed from the stream.
    let c = node(&redis, &["--history", "4"]);
    let mut publisher = a.client();
    let mut on_b = b.subscribe("moving", None);
    let first: Vec<Id> = (0..5)
        .map(|i| publisher.publish("moving", &format!("m{i}")))
        .collect();
    let seen = events(&mut on_b, 5);
    assert_eq!(seen.last().unwrap().id, Some(first[4]));
    drop(on_b);
    // Published while the client is between nodes; C already follows the room.
    let _warm = c.subscribe("moving", None);
    let later: Vec<Id> = (5..25)
        .map(|i| publisher.publish("moving", &format!("m{i}")))
        .collect();
    wait_until(PATIENCE, || {
        c.room("moving")["last_id"] == *later.last().unwrap()
    });
    let mut on_c = c.subscribe("moving", Some(first[4]));
    let got = events(&mut on_c, 20);
    assert!(
        got.iter().all(|e| e.event.is_none()),
        "no gap notice: {got:?}"
    );
    let got: Vec<_> = got.into_iter().map(|e| (e.id.unwrap(), e.data)).collect();
    let want: Vec<_> = later
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, format!("m{}", i + 5)))
        .collect();
    assert_eq!(got, want);
    // And it goes on live.
    let next = publisher.publish("moving", "live");
    assert_eq!(on_c.next_event(PATIENCE).id, Some(next));
}

#[test]
fn redis_outage_loses_no_acknowledged_publish_and_delivers_no_refused_one() {
    let mut redis = Redis::start();
    let port = redis.port;
    let (a, b, c) = (node(&redis, &[]), node(&redis, &[]), node(&redis, &[]));
    let mut on_b = b.subscribe("outage", None);
    let mut on_c = c.subscribe("outage", None);
    let mut publisher = a.client();
    let mut acked: Vec<(Id, String)> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    let mut publish = |i: usize, acked: &mut Vec<(Id, String)>, refused: &mut Vec<String>| {
        let data = format!("m{i}");
        match try_publish(&mut publisher, "outage", &data) {
            Ok(id) => acked.push((id, data)),
            Err(_) => refused.push(data),
        }
    };
    let mut i = 0;
    for _ in 0..20 {
        publish(i, &mut acked, &mut refused);
        i += 1;
    }
    redis.kill();
    // Publishing goes on through the outage: every answer is 201 or 503.
    let down_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < down_until {
        publish(i, &mut acked, &mut refused);
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let ready = a.client().request("GET", "/readyz", &[], b"");
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(ready.text().contains("redis unreachable"), "{ready:?}");
    let metrics = a.metrics();
    assert!(metrics.sum("ringcast_redis_errors_total") > 0);
    assert_eq!(metrics.sum("ringcast_redis_up"), 0);
    assert!(
        metrics
            .0
            .contains("ringcast_breaker_state{upstream=\"redis\""),
        "breaker state exposed"
    );
    let _redis = Redis::start_on(port);
    // The nodes recover by themselves: publishes succeed again within a few seconds.
    let recovered = wait_until(Duration::from_secs(10), || {
        let before = acked.len();
        publish(i, &mut acked, &mut refused);
        i += 1;
        acked.len() > before
    });
    assert!(recovered, "publishes did not succeed after Redis came back");
    for _ in 0..20 {
        publish(i, &mut acked, &mut refused);
        i += 1;
    }
    assert!(!refused.is_empty(), "the outage refused some publishes");
    let ready = wait_until(PATIENCE, || {
        a.client().request("GET", "/readyz", &[], b"").status == 200
    });
    assert!(ready, "readyz recovers");
    for (name, sse) in [("B", &mut on_b), ("C", &mut on_c)] {
        let mut got: Vec<(Id, String)> = Vec::new();
        while got.len() < acked.len() {
            match sse.next_item(PATIENCE) {
                Ok(Some(common::Item::Event(e))) => got.push((e.id.unwrap(), e.data)),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        assert_eq!(got, acked, "node {name}: every 201, once, in order");
        // Nothing else arrives (no refused publish, no duplicate).
        let extra = sse.items_for(Duration::from_millis(300));
        assert!(
            extra
                .iter()
                .all(|item| !matches!(item, common::Item::Event(_))),
            "node {name}: unexpected {extra:?}; refused were {refused:?}"
        );
    }
}

#[test]
fn a_node_that_fell_behind_the_stream_cap_tells_its_live_subscribers_what_they_missed() {
    let redis = Redis::start();
    // A caps the stream at its history (4, trimmed by Redis in whole nodes of ~100); B
    // keeps a long history, so its subscriber is not cut as lapped but must be told.
    let a = node(&redis, &["--history", "4"]);
    let b = node(&redis, &["--history", "5000"]);
    let mut publisher = a.client();
    let mut on_b = b.subscribe("behind", None);
    let mut published: Vec<Id> = (0..3)
        .map(|i| publisher.publish("behind", &format!("m{i}")))
        .collect();
    let before = events(&mut on_b, 3);
    assert_eq!(before.last().unwrap().id, Some(published[2]));
    // B stops reading Redis while A publishes far past the cap.
    b.signal(libc::SIGSTOP);
    // B must not have an `XREAD BLOCK` outstanding while A publishes: Redis would answer it
    // with m3 (B's socket takes the reply while B is stopped), and B, resumed, would hand m3
    // on before it learns of the trimming — correct, but then not the case under test, and
    // which one ran depended on where B's follower was when the signal landed. So wait
    // until B is stopped and Redis has timed its last `XREAD` out (BLOCK is 100 ms).
    // Two readings in a row: B's last command was in Redis's socket before the first was
    // sent, so the second runs after Redis has read it.
    assert!(wait_until(PATIENCE, || stopped(b.pid())), "B did not stop");
    let idle = wait_until(PATIENCE, || {
        redis.blocked_clients() == 0 && redis.blocked_clients() == 0
    });
    assert!(idle, "B's XREAD BLOCK still waits in Redis");
    published.extend((3..400).map(|i| publisher.publish("behind", &format!("m{i}"))));
    b.signal(libc::SIGCONT);
    let gap = on_b.next_event(PATIENCE);
    assert_eq!(gap.event.as_deref(), Some("gap"), "{gap:?}");
    let range: serde_json::Value = serde_json::from_str(&gap.data).unwrap();
    let (from, to) = (Id::of(&range["from"]), Id::of(&range["to"]));
    assert_eq!(from, published[2].at(published[2].seq + 1), "{gap:?}");
    let after: Vec<Id> = published.iter().copied().filter(|&id| id > to).collect();
    assert!(
        !after.is_empty() && after.len() < 397,
        "{} after the gap",
        after.len()
    );
    let got: Vec<Option<Id>> = events(&mut on_b, after.len())
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(got, after.iter().map(|&id| Some(id)).collect::<Vec<_>>());
    // Every published id was either delivered or inside the announced gap.
    assert!(published[3..]
        .iter()
        .all(|&id| id > to || (from..=to).contains(&id)));
    let metrics = b.metrics();
    assert_eq!(
        metrics.sum("ringcast_cluster_follow_gaps_total"),
        1,
        "{}",
        metrics.0
    );

    // A resume on a node whose replica is shorter than the trimmed stream is replayed from
    // Redis: trimming is announced too (Redis does not count it as deleted).
    let c = node(&redis, &["--history", "4"]);
    let mut on_c = c.subscribe("behind", Some(published[0]));
    let gap = on_c.next_event(PATIENCE);
    assert_eq!(gap.event.as_deref(), Some("gap"), "{gap:?}");
    let range: serde_json::Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(
        Id::of(&range["from"]),
        published[0].at(published[0].seq + 1),
        "{gap:?}"
    );
    let to = Id::of(&range["to"]);
    let held: Vec<Option<Id>> = published
        .iter()
        .filter(|&&id| id > to)
        .map(|&id| Some(id))
        .collect();
    let got: Vec<Option<Id>> = events(&mut on_c, held.len())
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(got, held);
}
