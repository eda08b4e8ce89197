//! Unit tests of the authorization callback: requests built, answers read, the breaker
//! and the pool's bounds, against a local HTTP server.

use super::*;
use ringcast_core::metrics::Format;

#[test]
fn urls_table() {
    let ok = |host: &str, port, path: &str| {
        Ok(AuthUrl {
            host: host.into(),
            port,
            path: path.into(),
        })
    };
    let cases: &[(&str, Result<AuthUrl, ()>)] = &[
        ("http://auth", ok("auth", 80, "/")),
        (
            "http://127.0.0.1:9000/check",
            ok("127.0.0.1", 9000, "/check"),
        ),
        ("http://[::1]:81/a?b=c", ok("::1", 81, "/a?b=c")),
        ("https://auth/", Err(())),
        ("auth:80", Err(())),
        ("http://:80/", Err(())),
        ("http://auth:x/", Err(())),
        ("http://user@auth/", Err(())),
        ("http://auth/a b", Err(())),
        ("http://auth:65536/", Err(())),
        ("http://[::1/", Err(())),
        ("http://auth?x=1", ok("auth", 80, "/?x=1")),
        ("HTTP://Auth:8080", ok("Auth", 8080, "/")),
        ("/check", Err(())),
        ("", Err(())),
    ];
    for (url, want) in cases {
        assert_eq!(&AuthUrl::parse(url).map_err(|_| ()), want, "{url}");
    }
    assert_eq!(
        AuthUrl::parse("http://[::1]:81/").unwrap().host_header(),
        "[::1]:81"
    );
    assert_eq!(AuthUrl::parse("http://a/").unwrap().host_header(), "a");
}

fn pool(fail_open: bool, workers: usize, queue_max: usize) -> AuthPool {
    let config = AuthConfig {
        // Nothing listens on port 1: every call fails fast.
        url: AuthUrl::parse("http://127.0.0.1:1/").unwrap(),
        timeout: Duration::from_secs(1),
        fail_open,
        breaker: BreakerConfig {
            calls_min: 2,
            ..BreakerConfig::default()
        },
    };
    let waker = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap();
    AuthPool::start(config, vec![OwnedFd::from(waker)], workers, queue_max).unwrap()
}

fn ticket(slot: u32) -> Ticket {
    Ticket {
        conn: crate::conn::key::ConnKey { slot, serial: 1 },
        room: "r".into(),
        last_event_id: None,
    }
}

fn wait_decision(shard: &mut AuthShard) -> (Ticket, Decision) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(done) = shard.poll_decision(Instant::now()) {
            return done;
        }
        assert!(Instant::now() < deadline, "no decision");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn queue_full_refuses_without_a_permit() {
    // Another shard holds the single queue place.
    let pool = pool(false, 1, 1);
    let mut shard = pool.shard(0);
    let now = Instant::now();
    assert!(pool.reserve());
    let Begin::Decided(t, decision) = shard.begin(now, ticket(2), None, Vec::new()) else {
        panic!("second call must not queue")
    };
    assert_eq!(t.conn.slot, 2);
    assert_eq!(
        decision,
        Decision::Refuse {
            status: 503,
            reason: "auth queue full",
            retry_after_seconds: Some(1)
        }
    );
    assert_eq!(shard.results[QUEUE_FULL], 1);
    assert_eq!(shard.in_flight(), 0);
    pool.release();
    assert!(matches!(
        shard.begin(now, ticket(3), None, Vec::new()),
        Begin::Waiting
    ));
}

#[test]
fn failures_open_the_breaker_then_refuse_fast_or_fail_open() {
    for fail_open in [false, true] {
        let pool = pool(fail_open, 1, 8);
        let mut shard = pool.shard(0);
        for slot in 0..2 {
            assert!(matches!(
                shard.begin(Instant::now(), ticket(slot), None, Vec::new()),
                Begin::Waiting
            ));
            let (_, decision) = wait_decision(&mut shard);
            let want_admit = fail_open;
            assert_eq!(decision == Decision::Admit, want_admit, "{decision:?}");
        }
        assert_eq!(shard.state(Instant::now()), BreakerState::Open);
        let Begin::Decided(_, decision) = shard.begin(Instant::now(), ticket(9), None, Vec::new())
        else {
            panic!("an open breaker decides at once")
        };
        if fail_open {
            assert_eq!(decision, Decision::Admit);
        } else {
            let Decision::Refuse {
                status,
                retry_after_seconds,
                ..
            } = decision
            else {
                panic!()
            };
            assert_eq!((status, retry_after_seconds), (503, Some(5)));
            let response = String::from_utf8(decision.response().unwrap().to_vec()).unwrap();
            assert!(response.starts_with("HTTP/1.1 503 "), "{response}");
            assert!(response.contains("\r\nRetry-After: 5\r\n"), "{response}");
        }
        assert_eq!(shard.results[BREAKER_OPEN], 1);
        assert_eq!(shard.results[FAILED], 2);
        shard.publish_figures(Instant::now());
        let mut out = Exposition::new(Format::Prometheus);
        expose(&mut out, &pool);
        let text = out.finish();
        assert!(text.contains("ringcast_breaker_state{upstream=\"auth\",shard=\"0\"} 1\n"));
        assert!(text.contains(
            "ringcast_breaker_transitions_total{upstream=\"auth\",shard=\"0\",to=\"open\"} 1\n"
        ));
    }
}
