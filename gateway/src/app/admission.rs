//! Admission control: why a request may be refused (each 503 reason is a label of
//! `ringcast_admission_rejections_total` and the text of the 503; every other refusal a
//! label of `ringcast_refusals_total`), the per-client-IP connection count and the per-IP
//! new-connection rate.
//!
//! The per-IP limit is exact over the process: every shard counts in one table, striped
//! by address hash so shards accepting different clients never touch the same lock. A
//! per-shard table (limit ÷ shards each) would need no lock, but SO_REUSEPORT spreads one
//! client's connections over shards by port hash, so such a client would be refused
//! anywhere between limit ÷ shards and the limit, depending on luck. The table is touched
//! once at accept and once at close (never per request or delivery), and holds at most one
//! entry per open connection.
//!
//! The new-connection rate (`--max-new-connections-per-ip-per-sec`) is a token bucket per
//! client address in a second table shared by every shard, for the same reason (exactness
//! whatever shard the kernel picks), striped the same way and touched once per accept. Its
//! entries outlive connections, so it is bounded ([`RATE_ADDRESSES_MAX`]): a bucket that
//! refilled completely says nothing and is dropped when room is needed, and when none has,
//! the fullest goes. IPv6 clients are keyed by their /64, the block one host usually holds.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Lock stripes of the per-IP table: well above the shard count, so two shards accepting
/// different clients rarely share a stripe.
pub const IP_STRIPES: usize = 64;
/// Client addresses (IPv6: /64 blocks) the new-connection-rate table remembers, over the
/// process: 64 Ki entries of ~48 B, a few MiB at most.
pub const RATE_ADDRESSES_MAX: usize = 64 * 1024;
/// `Retry-After` seconds of a 503 for the new-connection rate: a bucket earns at least one
/// token a second.
pub const RATE_RETRY_AFTER_SECONDS: u64 = 1;

const _: () = assert!(RATE_ADDRESSES_MAX / IP_STRIPES * IP_STRIPES == RATE_ADDRESSES_MAX);

/// Why a request was refused with 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Rejection {
    /// The process holds `--max-connections`.
    ConnectionLimit,
    /// The client's address holds `--max-connections-per-ip`.
    PerIpLimit,
    /// The shard's pending write bytes are past `--max-pending-write-bytes`.
    PendingWriteBytes,
    /// The gateway is stopping.
    Draining,
    /// A cross-shard queue is full.
    ShardQueues,
    /// The shard holds its room limit.
    RoomLimit,
    /// The shard holds its subscriber (or ticker) limit.
    SubscriberLimit,
    /// The subscribe authorization upstream is unavailable (breaker open).
    AuthUnavailable,
    /// The client's address opened more than `--max-new-connections-per-ip-per-sec`.
    NewConnectionRate,
}

impl From<ringcast_core::sequencer::Refusal> for Rejection {
    /// The owner shard's refusal to sequence a publish, by the reason it is counted as.
    fn from(refusal: ringcast_core::sequencer::Refusal) -> Self {
        use ringcast_core::sequencer::Refusal;
        match refusal {
            Refusal::Draining => Rejection::Draining,
            Refusal::OutboxFull => Rejection::ShardQueues,
            Refusal::RoomLimit => Rejection::RoomLimit,
        }
    }
}

/// How many reasons there are.
pub const REJECTIONS: usize = Rejection::NewConnectionRate as usize + 1;

impl Rejection {
    /// Every reason, in label order.
    pub const ALL: [Rejection; REJECTIONS] = [
        Rejection::ConnectionLimit,
        Rejection::PerIpLimit,
        Rejection::PendingWriteBytes,
        Rejection::Draining,
        Rejection::ShardQueues,
        Rejection::RoomLimit,
        Rejection::SubscriberLimit,
        Rejection::AuthUnavailable,
        Rejection::NewConnectionRate,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::ConnectionLimit => "connection_limit",
            Rejection::PerIpLimit => "per_ip_limit",
            Rejection::PendingWriteBytes => "pending_write_bytes",
            Rejection::Draining => "draining",
            Rejection::ShardQueues => "shard_queues_full",
            Rejection::RoomLimit => "room_limit",
            Rejection::SubscriberLimit => "subscriber_limit",
            Rejection::AuthUnavailable => "auth_unavailable",
            Rejection::NewConnectionRate => "new_connection_rate",
        }
    }

    /// The reason sent in the 503 body.
    pub fn text(self) -> &'static str {
        match self {
            Rejection::ConnectionLimit => "connection limit reached",
            Rejection::PerIpLimit => "connection limit per client address reached",
            Rejection::PendingWriteBytes => "shard write backlog over its limit",
            Rejection::Draining => "draining",
            Rejection::ShardQueues => "shard queues full",
            Rejection::RoomLimit => "room limit reached",
            Rejection::SubscriberLimit => "subscriber limit reached",
            Rejection::AuthUnavailable => "authorization upstream unavailable",
            Rejection::NewConnectionRate => "too many new connections from this client address",
        }
    }
}

/// Why a request was refused with a status other than 503 (`ringcast_refusals_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum RefusalReason {
    /// 401: no bearer token where one is needed.
    TokenMissing,
    /// 401: a malformed token, a bad signature, another algorithm, no `exp`, or `nbf` ahead.
    TokenInvalid,
    /// 401: the token's `exp` passed.
    TokenExpired,
    /// 403: a valid token that does not list the room (per line for `POST /publish`).
    RoomForbidden,
    /// 408: the request head did not arrive within `--header-timeout`.
    HeaderTimeout,
    /// 408: the declared body did not arrive within `--body-timeout`.
    BodyTimeout,
    /// 431: the request head is over `--max-header-bytes`.
    HeaderTooLarge,
    /// 431: more header fields than `http1::HEADERS_MAX`.
    TooManyHeaders,
    /// 413: the body is over `--max-message-bytes`.
    BodyTooLarge,
    /// 411: a chunked body.
    LengthRequired,
    /// 400: a malformed request line, header, length, room name or resume id.
    BadRequest,
    /// 404: an unknown path.
    NotFound,
    /// 405: a method the route does not answer to.
    MethodNotAllowed,
    /// 429: an HTTP/2 or HTTP/3 connection already holds `--max-streams-per-conn`
    /// subscriptions (counted by the companion thread).
    StreamsPerConnection,
    /// A TLS connection closed without a status: its ClientHello grew past
    /// `tls_conn::CLIENT_HELLO_BYTES_MAX`.
    TlsClientHelloTooLarge,
    /// A TLS connection closed without a status: its handshake did not complete within
    /// `--header-timeout`.
    TlsHandshakeTimeout,
    /// A TLS connection closed (with an alert when rustls made one): not TLS, a handshake
    /// rustls refused, or a bad record.
    TlsError,
    /// 429: a `subscribe` on a multiplexed WebSocket past its connection's subscribe pace
    /// (`WS_SUBSCRIBE_BURST` at once, `WS_SUBSCRIBES_PER_SEC` sustained).
    WsSubscribeRate,
    /// 429: a new stream on an HTTP/2 or HTTP/3 connection past its stream pace
    /// (companion/bridge.rs: streams the client reset or that hold a subscription, a burst
    /// of twice the connection's streams and `--new-streams-per-conn-per-sec` sustained).
    StreamRate,
    /// 429: a `subscribe` on a multiplexed WebSocket that already follows
    /// `WS_ROOMS_PER_CONN_MAX` rooms (the WebSocket's `streams_per_connection`).
    WsRoomsPerConnection,
    /// 429: a WebSocket `publish` while `WS_PUBLISHES_IN_FLIGHT_MAX` of the connection's
    /// publishes wait for their acks.
    WsPublishesInFlight,
}

/// How many refusal reasons there are.
pub const REFUSAL_REASONS: usize = RefusalReason::WsPublishesInFlight as usize + 1;

impl RefusalReason {
    /// Every reason, in label order.
    pub const ALL: [RefusalReason; REFUSAL_REASONS] = [
        RefusalReason::TokenMissing,
        RefusalReason::TokenInvalid,
        RefusalReason::TokenExpired,
        RefusalReason::RoomForbidden,
        RefusalReason::HeaderTimeout,
        RefusalReason::BodyTimeout,
        RefusalReason::HeaderTooLarge,
        RefusalReason::TooManyHeaders,
        RefusalReason::BodyTooLarge,
        RefusalReason::LengthRequired,
        RefusalReason::BadRequest,
        RefusalReason::NotFound,
        RefusalReason::MethodNotAllowed,
        RefusalReason::StreamsPerConnection,
        RefusalReason::TlsClientHelloTooLarge,
        RefusalReason::TlsHandshakeTimeout,
        RefusalReason::TlsError,
        RefusalReason::WsSubscribeRate,
        RefusalReason::StreamRate,
        RefusalReason::WsRoomsPerConnection,
        RefusalReason::WsPublishesInFlight,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::TokenMissing => "token_missing",
            RefusalReason::TokenInvalid => "token_invalid",
            RefusalReason::TokenExpired => "token_expired",
            RefusalReason::RoomForbidden => "room_forbidden",
            RefusalReason::HeaderTimeout => "header_timeout",
            RefusalReason::BodyTimeout => "body_timeout",
            RefusalReason::HeaderTooLarge => "header_too_large",
            RefusalReason::TooManyHeaders => "too_many_headers",
            RefusalReason::BodyTooLarge => "body_too_large",
            RefusalReason::LengthRequired => "length_required",
            RefusalReason::BadRequest => "bad_request",
            RefusalReason::NotFound => "not_found",
            RefusalReason::MethodNotAllowed => "method_not_allowed",
            RefusalReason::StreamsPerConnection => "streams_per_connection",
            RefusalReason::TlsClientHelloTooLarge => "tls_client_hello_too_large",
            RefusalReason::TlsHandshakeTimeout => "tls_handshake_timeout",
            RefusalReason::TlsError => "tls_error",
            RefusalReason::WsSubscribeRate => "ws_subscribe_rate",
            RefusalReason::StreamRate => "stream_rate",
            RefusalReason::WsRoomsPerConnection => "ws_rooms_per_connection",
            RefusalReason::WsPublishesInFlight => "ws_publishes_in_flight",
        }
    }

    /// The reason of a token refusal.
    pub fn of_token(error: crate::upstream::jwt::TokenError) -> Self {
        use crate::upstream::jwt::TokenError;
        match error {
            TokenError::Missing => RefusalReason::TokenMissing,
            TokenError::Invalid(_) => RefusalReason::TokenInvalid,
            TokenError::Expired => RefusalReason::TokenExpired,
            TokenError::Forbidden => RefusalReason::RoomForbidden,
        }
    }

    /// The reason of a refusal `http1::parse` made, from its status (and, for 431, its text).
    pub fn of_parse(refusal: &crate::http::h1::Refusal) -> Self {
        match refusal.status {
            431 if refusal.reason.starts_with("too many") => RefusalReason::TooManyHeaders,
            431 => RefusalReason::HeaderTooLarge,
            413 => RefusalReason::BodyTooLarge,
            411 => RefusalReason::LengthRequired,
            404 => RefusalReason::NotFound,
            405 => RefusalReason::MethodNotAllowed,
            _ => RefusalReason::BadRequest,
        }
    }
}

/// Open connections per client address, over every shard.
#[derive(Debug)]
pub struct PerIpConnections {
    hasher: RandomState,
    stripes: Vec<Mutex<HashMap<IpAddr, u32>>>,
}

impl Default for PerIpConnections {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            stripes: (0..IP_STRIPES)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }
}

impl PerIpConnections {
    fn stripe(&self, ip: &IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        let index = self.hasher.hash_one(ip) as usize % IP_STRIPES;
        // A panic while holding a stripe leaves a count, not a broken map: keep going.
        self.stripes[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one more connection from `ip` unless it already holds `limit` (0: no limit);
    /// says whether it was admitted. Each admission must be matched by [`Self::release`].
    pub fn try_acquire(&self, ip: IpAddr, limit: usize) -> bool {
        let mut stripe = self.stripe(&ip);
        let count = stripe.entry(ip).or_insert(0);
        if limit != 0 && *count as usize >= limit {
            if *count == 0 {
                stripe.remove(&ip);
            }
            return false;
        }
        *count += 1;
        true
    }

    /// Forgets one connection from `ip`; the entry goes with the last one.
    pub fn release(&self, ip: IpAddr) {
        let mut stripe = self.stripe(&ip);
        match stripe.get_mut(&ip) {
            Some(count) if *count > 1 => *count -= 1,
            Some(_) => {
                stripe.remove(&ip);
            }
            None => debug_assert!(false, "released an address that holds no connection"),
        }
    }

    /// Connections counted for `ip`.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.stripe(&ip).get(&ip).map_or(0, |count| *count as usize)
    }

    /// Addresses held (entries in the table).
    pub fn addresses(&self) -> usize {
        self.stripes
            .iter()
            .map(|stripe| stripe.lock().map_or(0, |map| map.len()))
            .sum()
    }
}

/// One address's token bucket: `tokens` as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Tokens at `now`, refilled at `rate` per second up to `rate`.
    fn refilled(&self, now: Instant, rate: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate).min(rate)
    }
}

/// New connections per client address per second, over every shard: a token bucket of
/// `rate` tokens refilling at `rate` a second (so a burst of `rate` after a quiet second).
#[derive(Debug)]
pub struct PerIpRate {
    hasher: RandomState,
    stripes: Vec<Mutex<HashMap<IpAddr, Bucket>>>,
    stripe_max: usize,
}

impl Default for PerIpRate {
    fn default() -> Self {
        Self::with_capacity(RATE_ADDRESSES_MAX)
    }
}

/// The key of an address in the rate table: IPv4 as is, IPv6 by its /64.
fn rate_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

impl PerIpRate {
    /// A table remembering at most `addresses` addresses (rounded up to a stripe each).
    pub fn with_capacity(addresses: usize) -> Self {
        Self {
            hasher: RandomState::new(),
            stripes: (0..IP_STRIPES)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            stripe_max: addresses.div_ceil(IP_STRIPES).max(1),
        }
    }

    /// Takes one token for a new connection from `ip` at `now` unless its bucket is empty;
    /// `rate` 0 admits everything and remembers nothing.
    pub fn try_take(&self, ip: IpAddr, now: Instant, rate: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let rate = f64::from(rate);
        let key = rate_key(ip);
        let index = self.hasher.hash_one(key) as usize % IP_STRIPES;
        let mut stripe = self.stripes[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(bucket) = stripe.get_mut(&key) {
            let tokens = bucket.refilled(now, rate);
            bucket.at = now;
            if tokens < 1.0 {
                bucket.tokens = tokens;
                return false;
            }
            bucket.tokens = tokens - 1.0;
            return true;
        }
        if stripe.len() >= self.stripe_max {
            // Full buckets carry no information: drop them. O(stripe), only when full.
            stripe.retain(|_, bucket| bucket.refilled(now, rate) < rate);
            if stripe.len() >= self.stripe_max {
                let fullest = stripe
                    .iter()
                    .max_by(|a, b| a.1.refilled(now, rate).total_cmp(&b.1.refilled(now, rate)))
                    .map(|(ip, _)| *ip);
                if let Some(fullest) = fullest {
                    stripe.remove(&fullest);
                }
            }
        }
        stripe.insert(
            key,
            Bucket {
                tokens: rate - 1.0,
                at: now,
            },
        );
        true
    }

    /// Addresses remembered.
    pub fn addresses(&self) -> usize {
        self.stripes
            .iter()
            .map(|stripe| stripe.lock().map_or(0, |map| map.len()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rate_bucket_refuses_the_burst_beyond_it_and_refills() {
        let table = PerIpRate::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for n in 0..5 {
            assert!(table.try_take(a, t0, 5), "connection {n} of the burst");
        }
        assert!(!table.try_take(a, t0, 5), "sixth in the same instant");
        assert!(
            table.try_take(b, t0, 5),
            "another address has its own bucket"
        );
        assert!(!table.try_take(a, t0 + Duration::from_millis(100), 5));
        assert!(
            table.try_take(a, t0 + Duration::from_millis(300), 5),
            "one token per 200 ms"
        );
        assert!(!table.try_take(a, t0 + Duration::from_millis(300), 5));
        assert!(table.try_take(a, t0, 0), "rate 0 is no limit");
        // One IPv6 host rotating through its /64 shares one bucket.
        let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
        assert!(table.try_take(v6("2001:db8::1"), t0, 1));
        assert!(!table.try_take(v6("2001:db8::2"), t0, 1));
        assert!(table.try_take(v6("2001:db8:0:1::1"), t0, 1));
    }

    #[test]
    fn rate_table_is_bounded_and_forgets_idle_addresses_first() {
        let table = PerIpRate::with_capacity(IP_STRIPES); // one entry per stripe
        let t0 = Instant::now();
        for n in 0..1000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            assert!(table.try_take(ip, t0, 2));
        }
        assert!(table.addresses() <= IP_STRIPES, "{}", table.addresses());
        // An address that is busy now keeps its empty bucket while idle ones are evicted.
        let busy: IpAddr = "192.0.2.1".parse().unwrap();
        let t1 = t0 + Duration::from_secs(5);
        assert!(table.try_take(busy, t1, 2));
        assert!(table.try_take(busy, t1, 2));
        assert!(!table.try_take(busy, t1, 2));
        assert!(table.addresses() <= IP_STRIPES);
    }

    #[test]
    fn limit_is_per_address_and_entries_go_with_the_last_connection() {
        let table = PerIpConnections::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        assert!(table.try_acquire(a, 2));
        assert!(table.try_acquire(a, 2));
        assert!(!table.try_acquire(a, 2), "third from one address");
        assert!(table.try_acquire(b, 2), "another address is not affected");
        assert_eq!((table.count(a), table.count(b)), (2, 1));
        // Lowered live: existing connections stay, new ones are refused.
        assert!(!table.try_acquire(a, 1));
        table.release(a);
        assert!(!table.try_acquire(a, 1));
        table.release(a);
        table.release(b);
        assert_eq!(table.addresses(), 0, "no entry outlives its connections");
        // 0 is no limit, but connections are still counted (so a limit set by a reload
        // sees them).
        for _ in 0..100 {
            assert!(table.try_acquire(a, 0));
        }
        assert_eq!(table.count(a), 100);
        assert!(!table.try_acquire(a, 100));
        assert_eq!(table.addresses(), 1);
    }

    #[test]
    fn refused_first_connection_leaves_no_entry() {
        let table = PerIpConnections::default();
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        // A limit of 0 means none, so use a table already at a limit of 1 from elsewhere.
        assert!(table.try_acquire(a, 1));
        assert!(!table.try_acquire(a, 1));
        table.release(a);
        assert_eq!(table.addresses(), 0);
    }

    #[test]
    fn labels_are_distinct_and_in_order() {
        for (index, reason) in Rejection::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index);
            assert!(Rejection::ALL[..index]
                .iter()
                .all(|other| other.label() != reason.label()));
        }
        for (index, reason) in RefusalReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index);
            assert!(RefusalReason::ALL[..index]
                .iter()
                .all(|other| other.label() != reason.label()));
        }
    }
}
