//! Bad flags and unreachable targets: exit code 2 and a message naming the problem.

mod loadgen_support;

use loadgen_support::{closed_port, ringload, FanoutServer, Options};

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_duration_names_the_flag() {
    let output = ringload(&["http", "http://127.0.0.1:9/", "-d", "soon"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--duration"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bad_url_and_template_name_the_flag() {
    let output = ringload(&["http", "ftp://x/"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("http://"), "{}", stderr(&output));

    let output = ringload(&[
        "fanout",
        "--sub-url",
        "http://127.0.0.1:9/rooms/{rom}/events",
        "--pub-url",
        "http://127.0.0.1:9/rooms/{room}/messages",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert!(
        text.contains("--sub-url") && text.contains("{rom}"),
        "{text}"
    );
}

#[test]
fn pub_conns_beyond_rooms_is_rejected() {
    let output = ringload(&[
        "fanout",
        "--sub-url",
        "http://127.0.0.1:9/e/{room}",
        "--pub-url",
        "http://127.0.0.1:9/p/{room}",
        "-r",
        "2",
        "--pub-conns",
        "5",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--pub-conns"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn unreachable_http_target_exits_2() {
    let addr = closed_port();
    let output = ringload(&["http", &format!("http://{addr}/"), "-d", "1s"]);
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert!(
        text.contains("cannot connect") && text.contains(&addr.to_string()),
        "{text}"
    );
}

#[test]
fn unreachable_fanout_target_names_the_flag() {
    let addr = closed_port();
    let output = ringload(&[
        "fanout",
        "--sub-url",
        &format!("http://{addr}/rooms/{{room}}/events"),
        "--pub-url",
        &format!("http://{addr}/rooms/{{room}}/messages"),
        "-d",
        "1s",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--sub-url"), "{}", stderr(&output));
}

#[test]
fn refused_subscription_exits_2_with_the_status() {
    let server = FanoutServer::start(Options::default());
    // Wrong path: the server answers 404 to the subscribe request.
    let output = ringload(&[
        "fanout",
        "--sub-url",
        &format!("http://{}/nope/{{room}}", server.addr),
        "--pub-url",
        &server.pub_url(),
        "-s",
        "3",
        "-d",
        "1s",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("404"), "{}", stderr(&output));
}

#[test]
fn bad_pub_pipeline_names_the_flag() {
    let base = [
        "fanout",
        "--sub-url",
        "http://127.0.0.1:9/e/{room}",
        "--pub-url",
        "http://127.0.0.1:9/p/{room}",
        "--pub-pipeline",
    ];
    for value in ["0", "65", "lots"] {
        let mut args = base.to_vec();
        args.push(value);
        let output = ringload(&args);
        assert_eq!(output.status.code(), Some(2), "--pub-pipeline {value}");
        assert!(
            stderr(&output).contains("--pub-pipeline"),
            "{}",
            stderr(&output)
        );
    }
    // The HTTP/2 publisher has no pipelining (its lanes are streams).
    let mut args = base.to_vec();
    args.extend_from_slice(&["4", "--proto", "h2"]);
    let output = ringload(&args);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--pub-pipeline"),
        "{}",
        stderr(&output)
    );
}

/// `--proto ws` and `--publish-over` misuse: exit 2 with a message naming the flag.
#[test]
fn websocket_flag_errors_name_the_flag() {
    let sub = "http://127.0.0.1:9/rooms/{room}/ws";
    let pub_url = "http://127.0.0.1:9/rooms/{room}/messages";
    let table: &[(&[&str], &str)] = &[
        (
            &["http", "http://127.0.0.1:9/", "--proto", "ws"],
            "--proto ws",
        ),
        (
            &[
                "fanout",
                "--sub-url",
                sub,
                "--pub-url",
                pub_url,
                "--proto",
                "wss",
            ],
            "--proto",
        ),
        (
            &[
                "fanout",
                "--proto",
                "ws",
                "--sub-url",
                "https://127.0.0.1:9/rooms/{room}/ws",
                "--pub-url",
                pub_url,
            ],
            "--proto ws needs a plain http:// --sub-url",
        ),
        (
            &["fanout", "--sub-url", sub, "--publish-over", "ws"],
            "--publish-over ws needs --proto ws",
        ),
        (
            &[
                "fanout",
                "--sub-url",
                sub,
                "--publish-over",
                "carrier-pigeon",
            ],
            "--publish-over",
        ),
        (&["fanout", "--proto", "ws", "--sub-url", sub], "--pub-url"),
        (
            &[
                "fanout",
                "--proto",
                "ws",
                "--sub-url",
                sub,
                "--publish-over",
                "http",
            ],
            "--pub-url",
        ),
    ];
    for (args, needle) in table {
        let output = ringload(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&output).contains(needle),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

/// A WebSocket subscribe refused by the server (404 instead of 101) exits 2 with the status.
#[test]
fn refused_websocket_subscription_exits_2_with_the_status() {
    let server = FanoutServer::start(Options::default());
    let output = ringload(&[
        "fanout",
        "--proto",
        "ws",
        "--sub-url",
        &format!("http://{}/nope/{{room}}", server.addr),
        "--pub-url",
        &server.pub_url(),
        "-s",
        "2",
        "-d",
        "1s",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("404"), "{}", stderr(&output));
}
