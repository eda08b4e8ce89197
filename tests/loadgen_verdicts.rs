//! ringload fanout against purpose-built servers: a correct one must be judged clean, and
//! each injected fault must be reported exactly (count, verdict, exit code).

mod loadgen_support;

use loadgen_support::{json, ringload, FanoutServer, Fault, Options};
use serde_json::Value;

/// Runs a short fanout against `server` with `extra` flags; returns (exit code, report).
fn fanout(server: &FanoutServer, subscribers: u32, rooms: u32, extra: &[&str]) -> (i32, Value) {
    let sub_url = server.sub_url();
    let pub_url = server.pub_url();
    let subscribers = subscribers.to_string();
    let rooms = rooms.to_string();
    let mut args = vec![
        "fanout",
        "--sub-url",
        &sub_url,
        "--pub-url",
        &pub_url,
        "-s",
        &subscribers,
        "-r",
        &rooms,
        "--rate",
        "100",
        "--grace",
        "300ms",
        "-t",
        "2",
        "--json",
    ];
    args.extend_from_slice(extra);
    if !extra.contains(&"-d") {
        args.extend_from_slice(&["-d", "500ms"]);
    }
    let output = ringload(&args);
    let report = json(&output);
    (output.status.code().unwrap_or(-1), report)
}

fn checks(report: &Value) -> (u64, u64, u64, u64, u64) {
    let c = &report["checks"];
    let get = |key: &str| c[key].as_u64().unwrap_or(u64::MAX);
    (
        get("lost"),
        get("duplicates"),
        get("reordered"),
        get("wrong_room"),
        get("disconnects"),
    )
}

fn reasons(report: &Value) -> String {
    report["verdict"]["reasons"].to_string()
}

#[test]
fn correct_server_is_clean() {
    let server = FanoutServer::start(Options::default());
    let (code, report) = fanout(&server, 6, 3, &[]);
    assert_eq!(report["verdict"]["clean"], true, "{}", reasons(&report));
    assert_eq!(code, 0);
    assert_eq!(checks(&report), (0, 0, 0, 0, 0));
    assert_eq!(report["published"]["ok"], 50);
    // 50 messages over 3 rooms (17, 17, 16), 2 subscribers per room.
    assert_eq!(report["expected"], 100);
    assert_eq!(report["delivered"], 100);
    assert_eq!(report["subscribers_connected"], 6);
    assert!(report["latency_from_schedule"]["count"].as_u64() == Some(100));
    assert!(report["cpu_s"].as_f64().is_some());
    assert_eq!(server.publishes(), 50);
}

#[test]
fn dropped_message_is_lost() {
    let server = FanoutServer::start(Options {
        fault: Fault::Drop(7),
        ..Options::default()
    });
    let (code, report) = fanout(&server, 1, 1, &[]);
    assert_eq!(checks(&report), (1, 0, 0, 0, 0));
    assert_eq!(report["verdict"]["clean"], false);
    assert!(reasons(&report).contains("1 lost"), "{}", reasons(&report));
    assert_eq!(code, 1);
}

#[test]
fn duplicated_message_is_a_duplicate() {
    let server = FanoutServer::start(Options {
        fault: Fault::Duplicate(7),
        ..Options::default()
    });
    let (code, report) = fanout(&server, 2, 1, &[]);
    assert_eq!(checks(&report), (0, 2, 0, 0, 0));
    assert_eq!(report["verdict"]["clean"], false);
    assert_eq!(code, 1);
}

#[test]
fn swapped_messages_are_reordered_not_lost() {
    let server = FanoutServer::start(Options {
        fault: Fault::Swap(7),
        ..Options::default()
    });
    let (code, report) = fanout(&server, 1, 1, &[]);
    assert_eq!(checks(&report), (0, 0, 1, 0, 0));
    assert_eq!(report["delivered"], 50);
    assert_eq!(code, 1);
}

#[test]
fn message_in_the_wrong_room_is_caught() {
    let server = FanoutServer::start(Options {
        fault: Fault::WrongRoom(7),
        ..Options::default()
    });
    let (code, report) = fanout(&server, 2, 2, &[]);
    assert_eq!(checks(&report), (0, 0, 0, 1, 0));
    assert!(
        reasons(&report).contains("wrong room"),
        "{}",
        reasons(&report)
    );
    assert_eq!(code, 1);
}

#[test]
fn failed_publish_is_counted_and_not_expected() {
    let server = FanoutServer::start(Options {
        fault: Fault::FailPublish(7),
        ..Options::default()
    });
    let (code, report) = fanout(&server, 1, 1, &[]);
    assert_eq!(report["published"]["failed_status"]["500"], 1);
    assert_eq!(report["expected"], 49);
    assert_eq!(
        checks(&report),
        (0, 0, 0, 0, 0),
        "a failed publish is not a loss"
    );
    assert!(
        reasons(&report).contains("failed publishes"),
        "{}",
        reasons(&report)
    );
    assert_eq!(code, 1);
}

#[test]
fn subscriber_disconnect_is_not_clean() {
    let server = FanoutServer::start(Options {
        fault: Fault::Disconnect(10),
        ..Options::default()
    });
    let (code, report) = fanout(&server, 3, 1, &[]);
    assert_eq!(report["checks"]["disconnects"], 3);
    assert_eq!(code, 1);
}

/// nchan's shape: chunked SSE stream, `event:` lines, heartbeat comments, events split
/// across writes, 202 answers with a chunked body.
#[test]
fn nchan_style_server_is_clean() {
    let server = FanoutServer::start(Options {
        nchan_style: true,
        split_writes: true,
        ..Options::default()
    });
    let (code, report) = fanout(&server, 4, 2, &["--size", "300"]);
    assert_eq!(report["verdict"]["clean"], true, "{}", reasons(&report));
    assert_eq!(code, 0);
    assert_eq!(report["delivered"], 100);
    assert!(report["checks"]["heartbeats"].as_u64().unwrap() >= 4);
    assert_eq!(report["checks"]["foreign"], 0);
}

/// A 500 ms stall of one publish answer holds back the following publishes: latency from
/// the schedule must show it (coordinated omission not hidden), the stamp-based latency
/// (taken at the actual send) must not.
#[test]
fn stalled_publish_shows_in_schedule_latency_only() {
    let server = FanoutServer::start(Options {
        fault: Fault::StallPublish(10, 500),
        ..Options::default()
    });
    let (code, report) = fanout(&server, 2, 1, &["-d", "1s"]);
    let schedule = report["latency_from_schedule"]["p99_ms"].as_f64().unwrap();
    let stamp = report["latency_from_stamp"]["p99_ms"].as_f64().unwrap();
    assert!(schedule >= 350.0, "schedule p99 {schedule} ms");
    assert!(stamp < 100.0, "stamp p99 {stamp} ms");
    assert_eq!(checks(&report), (0, 0, 0, 0, 0));
    assert!(
        reasons(&report).contains("p99 from schedule"),
        "{}",
        reasons(&report)
    );
    assert_eq!(code, 1);
    // With a generous limit the same run is clean.
    let server = FanoutServer::start(Options {
        fault: Fault::StallPublish(10, 500),
        ..Options::default()
    });
    let (code, report) = fanout(&server, 2, 1, &["-d", "1s", "--max-p99", "2s"]);
    assert_eq!(report["verdict"]["clean"], true, "{}", reasons(&report));
    assert_eq!(code, 0);
}

#[test]
fn idle_mode_holds_subscribers() {
    let server = FanoutServer::start(Options::default());
    let sub_url = server.sub_url();
    let output = ringload(&[
        "fanout",
        "--sub-url",
        &sub_url,
        "--idle",
        "--hold",
        "300ms",
        "-s",
        "40",
        "-r",
        "4",
        "--json",
        "--src-ips",
        "3",
    ]);
    let report = json(&output);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(report["mode"], "idle");
    assert_eq!(report["subscribers_connected"], 40);
    assert!(String::from_utf8_lossy(&output.stderr).contains("all 40 subscribers connected"));
}

/// A server that takes 10 ms per publish is clean at low rates and falls behind at high
/// ones; the sweep must bracket that and report a clean rate in between.
#[test]
fn sweep_finds_the_highest_clean_rate() {
    let server = FanoutServer::start(Options {
        publish_delay_ms: 10,
        ..Options::default()
    });
    let sub_url = server.sub_url();
    let pub_url = server.pub_url();
    let output = ringload(&[
        "fanout",
        "--sub-url",
        &sub_url,
        "--pub-url",
        &pub_url,
        "-s",
        "2",
        "-r",
        "1",
        "--rate",
        "25",
        "-d",
        "400ms",
        "--grace",
        "200ms",
        "--sweep",
        "--sweep-steps",
        "2",
        "--max-p99",
        "100ms",
        "--json",
    ]);
    let report = json(&output);
    assert_eq!(output.status.code(), Some(0), "{report}");
    let best = report["best_rate"].as_f64().unwrap();
    assert!((25.0..200.0).contains(&best), "best {best}");
    let steps = report["steps"].as_array().unwrap();
    assert!(steps.iter().any(|step| step["clean"] == false));
    assert!(steps.len() >= 3);
}

/// `--pub-pipeline`: while one publish answer is held back 60 ms, the publishes due
/// meanwhile go out on the same connection without waiting (the server finds them already
/// read when it answers), and the run stays clean and in order. Without the flag the
/// publisher waits for each answer, so the server never sees a pipelined request.
#[test]
fn pipelined_publishes_reach_the_server_in_order() {
    let stalled = Options {
        stall: Some((10, 60)),
        ..Options::default()
    };
    let server = FanoutServer::start(stalled);
    let (code, report) = fanout(&server, 2, 1, &["--pub-pipeline", "8"]);
    assert_eq!(report["verdict"]["clean"], true, "{}", reasons(&report));
    assert_eq!(code, 0);
    assert_eq!(checks(&report), (0, 0, 0, 0, 0));
    assert_eq!(report["published"]["ok"], 50);
    assert_eq!(report["delivered"], 100);
    assert!(
        server.pipelined_publishes() >= 2,
        "pipelined {}",
        server.pipelined_publishes()
    );

    let server = FanoutServer::start(stalled);
    let (code, report) = fanout(&server, 2, 1, &[]);
    assert_eq!(report["verdict"]["clean"], true, "{}", reasons(&report));
    assert_eq!(code, 0);
    assert_eq!(server.pipelined_publishes(), 0);
}

/// A 500 among pipelined publishes fails exactly that publish: the answers behind it on
/// the same connection still count as delivered, and the verdict is as without pipelining.
#[test]
fn failed_publish_under_pipelining_fails_only_itself() {
    let server = FanoutServer::start(Options {
        fault: Fault::FailPublish(12),
        stall: Some((10, 60)),
        ..Options::default()
    });
    let (code, report) = fanout(&server, 1, 1, &["--pub-pipeline", "8"]);
    assert!(server.pipelined_publishes() >= 2);
    assert_eq!(report["published"]["failed_status"]["500"], 1);
    assert_eq!(report["published"]["ok"], 49);
    assert_eq!(report["expected"], 49);
    assert_eq!(report["delivered"], 49);
    assert_eq!(
        checks(&report),
        (0, 0, 0, 0, 0),
        "a failed publish is not a loss"
    );
    assert!(
        reasons(&report).contains("failed publishes"),
        "{}",
        reasons(&report)
    );
    assert_eq!(code, 1);
}

/// `fanout` over WebSocket (`--proto ws`, subscribe URL the server's `/rooms/{room}/ws`).
fn fanout_ws(server: &FanoutServer, subscribers: u32, rooms: u32, extra: &[&str]) -> (i32, Value) {
    let sub_url = server.ws_url();
    let pub_url = server.pub_url();
    let subscribers = subscribers.to_string();
    let rooms = rooms.to_string();
    let mut args = vec![
        "fanout",
        "--proto",
        "ws",
        "--sub-url",
        &sub_url,
        "-s",
        &subscribers,
        "-r",
        &rooms,
        "--rate",
        "100",
        "--grace",
        "300ms",
        "-t",
        "2",
        "-d",
        "500ms",
        "--json",
    ];
    if !extra.contains(&"--publish-over") {
        args.extend_from_slice(&["--pub-url", &pub_url]);
    }
    args.extend_from_slice(extra);
    let output = ringload(&args);
    let report = json(&output);
    (output.status.code().unwrap_or(-1), report)
}

/// Every message arrives as a WebSocket text frame and is checked like an SSE event; the
/// server's frames are split mid-frame, its ids are numbers, and its ping is answered.
#[test]
fn websocket_subscribers_are_checked_like_sse() {
    for (split_writes, ws_number_ids) in [(false, false), (true, true)] {
        let server = FanoutServer::start(Options {
            split_writes,
            ws_number_ids,
            ws_ping: true,
            ..Options::default()
        });
        let (code, report) = fanout_ws(&server, 6, 3, &[]);
        assert_eq!(report["verdict"]["clean"], true, "{}", reasons(&report));
        assert_eq!(code, 0);
        assert_eq!(report["proto"], "ws");
        assert_eq!(report["publish_over"], "http");
        assert_eq!(checks(&report), (0, 0, 0, 0, 0));
        assert_eq!(report["expected"], 100);
        assert_eq!(report["delivered"], 100);
        assert_eq!(report["checks"]["foreign"], 0);
        assert_eq!(report["checks"]["heartbeats"], 6, "one ping per subscriber");
        assert_eq!(server.pongs(), 6, "every ping answered by a masked pong");
    }
}

/// The faults the SSE tests inject are caught over WebSocket as well (same subscribers,
/// rooms and expected counts as the SSE tests above).
#[test]
fn websocket_faults_are_caught() {
    let table = [
        (Fault::Drop(7), 1, 1, (1, 0, 0, 0, 0)),
        (Fault::Duplicate(7), 2, 1, (0, 2, 0, 0, 0)),
        (Fault::Swap(7), 1, 1, (0, 0, 1, 0, 0)),
        (Fault::WrongRoom(7), 2, 2, (0, 0, 0, 1, 0)),
        (Fault::Disconnect(10), 3, 1, (u64::MAX, 0, 0, 0, 3)),
    ];
    for (fault, subscribers, rooms, want) in table {
        let server = FanoutServer::start(Options {
            fault,
            ..Options::default()
        });
        let (code, report) = fanout_ws(&server, subscribers, rooms, &[]);
        let mut got = checks(&report);
        if want.0 == u64::MAX {
            got.0 = u64::MAX; // what a disconnect loses depends on timing
        }
        assert_eq!(got, want, "{fault:?}: {}", reasons(&report));
        assert_eq!(report["verdict"]["clean"], false, "{fault:?}");
        assert_eq!(code, 1, "{fault:?}");
    }
}

/// `--publish-over ws`: publishes go on the subscribers' own connections as
/// `{"type":"publish",…,"ref":N}`, acks are matched by ref, and a publish answered with an
/// error is a failed publish, not a lost message.
#[test]
fn publishing_over_websocket_with_acks() {
    let server = FanoutServer::start(Options::default());
    let (code, report) = fanout_ws(&server, 6, 3, &["--publish-over", "ws"]);
    assert_eq!(report["verdict"]["clean"], true, "{}", reasons(&report));
    assert_eq!(code, 0);
    assert_eq!(report["publish_over"], "ws");
    assert_eq!(report["published"]["scheduled"], 50);
    assert_eq!(report["published"]["ok"], 50);
    assert_eq!(server.ws_publishes(), 50, "all over WebSocket");
    assert_eq!(server.publishes(), 50);
    assert_eq!(report["expected"], 100);
    assert_eq!(report["delivered"], 100);
    assert_eq!(report["publish_response_time"]["count"], 50);

    let server = FanoutServer::start(Options {
        fault: Fault::FailPublish(7),
        ..Options::default()
    });
    let (code, report) = fanout_ws(&server, 4, 2, &["--publish-over", "ws"]);
    assert_eq!(checks(&report), (0, 0, 0, 0, 0), "{}", reasons(&report));
    assert_eq!(report["published"]["failed_status"]["500"], 1);
    assert_eq!(report["published"]["ok"], 49);
    assert_eq!(report["expected"], 98);
    assert_eq!(report["delivered"], 98);
    assert_eq!(code, 1, "a failed publish is not clean");
}
