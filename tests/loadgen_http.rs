//! ringload http against a local keep-alive server: counts, status codes, open-loop rate.

mod loadgen_support;

use loadgen_support::{json, ringload, FanoutServer, Options};

#[test]
fn closed_loop_counts_requests_and_status_codes() {
    let server = FanoutServer::start(Options::default());
    let url = format!("http://{}/hello", server.addr);
    let output = ringload(&["http", &url, "-c", "4", "-t", "2", "-d", "500ms", "--json"]);
    assert_eq!(output.status.code(), Some(0));
    let report = json(&output);
    let requests = report["requests"].as_u64().unwrap();
    assert!(requests > 20, "{report}");
    assert_eq!(report["status_codes"]["200"].as_u64(), Some(requests));
    // The server may have answered a few requests whose answers arrived after the end.
    let served = server.requests();
    assert!(
        served >= requests && served <= requests + 4,
        "served {served}, counted {requests}"
    );
    assert_eq!(report["errors"]["connect"], 0);
    let bytes = report["bytes_read"].as_u64().unwrap();
    assert!(
        bytes >= requests * 50 && bytes <= (requests + 4) * 50,
        "bytes {bytes}"
    );
    assert!(report["latency"]["p99_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn not_found_is_counted_by_status() {
    let server = FanoutServer::start(Options::default());
    let url = format!("http://{}/missing", server.addr);
    let output = ringload(&["http", &url, "-c", "2", "-d", "300ms", "--json"]);
    let report = json(&output);
    let requests = report["requests"].as_u64().unwrap();
    assert!(requests > 0);
    assert_eq!(report["status_codes"]["404"].as_u64(), Some(requests));
    assert!(report["status_codes"].get("200").is_none());
}

#[test]
fn chunked_responses_complete() {
    let server = FanoutServer::start(Options::default());
    let url = format!("http://{}/chunked", server.addr);
    let output = ringload(&["http", &url, "-c", "1", "-d", "300ms", "--json"]);
    let report = json(&output);
    assert!(report["requests"].as_u64().unwrap() > 10, "{report}");
    assert_eq!(report["errors"]["timeout"], 0);
}

#[test]
fn open_loop_rate_is_honoured_and_hdr_written() {
    let server = FanoutServer::start(Options::default());
    let url = format!("http://{}/hello", server.addr);
    let dir = std::env::temp_dir().join(format!("ringload-hdr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hdr = dir.join("latency.hdr");
    let output = ringload(&[
        "http",
        &url,
        "-c",
        "4",
        "-R",
        "200",
        "-d",
        "1s",
        "--json",
        "--hdr-out",
        hdr.to_str().unwrap(),
    ]);
    let report = json(&output);
    let requests = report["requests"].as_u64().unwrap();
    assert!(
        (170..=205).contains(&requests),
        "requests {requests} at -R 200 for 1s"
    );
    assert_eq!(report["rate_target"], 200.0);
    let text = std::fs::read_to_string(&hdr).unwrap();
    assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
    assert!(text.contains("#[Max     ="));
    let _ = std::fs::remove_dir_all(&dir);
}
